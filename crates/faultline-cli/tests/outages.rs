//! Outages end to end: two `faultline serve` processes reach PostgreSQL and Redis through
//! `TcpProxy`s that the test cuts, stalls and restores while requests keep coming.
//!
//! # An outage is answered by the contract, and leaves nothing half-written
//!
//! Every answer is a success or the catalog's 503 `service_unavailable` with `Retry-After`;
//! the 99th percentile of latency stays under the configured deadlines plus a margin; after
//! each restore the API answers again with no restart; and in the database every completed
//! idempotency record of a chatbot POST has its chatbot and every chatbot its record.
//!
//! Needs `FAULTLINE_TEST_POSTGRES_URL` and Redis, like `multi_instance.rs`.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

#[path = "common/servers.rs"]
mod servers;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use faultline_postgres::PgPool;
use faultline_testkit::TcpProxy;
use serde_json::json;
use servers::{Cluster, ClusterOptions, create_key, delete_redis_prefix, http, redis_available};
use tokio::sync::Mutex;

/// The PostgreSQL deadline given to `serve` (`--database-timeout-ms`).
const DATABASE_DEADLINE: Duration = Duration::from_millis(500);

/// One answer seen by the load.
#[derive(Debug, Clone)]
struct Seen {
    phase: &'static str,
    status: u16,
    code: Option<String>,
    retry_after: bool,
    took: Duration,
}

async fn worker(
    addrs: Vec<SocketAddr>,
    bearer: String,
    worker: usize,
    phase: Arc<Mutex<&'static str>>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    counter: Arc<AtomicU64>,
) {
    let mut last_id: Option<String> = None;
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let addr = addrs[(worker + i) % addrs.len()];
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let key = format!("outage-{worker}-{n}");
        let t = Instant::now();
        let answer = if i.is_multiple_of(2) || last_id.is_none() {
            http(
                addr,
                "POST",
                "/v1/chatbots",
                &[("Authorization", &bearer), ("Idempotency-Key", &key)],
                Some(&json!({"name": format!("Load {n}")})),
            )
            .await
        } else {
            let path = format!("/v1/chatbots/{}", last_id.as_deref().unwrap_or_default());
            http(addr, "GET", &path, &[("Authorization", &bearer)], None).await
        };
        let took = t.elapsed();
        let answer = answer.unwrap_or_else(|e| panic!("no answer from {addr}: {e:?}"));
        if answer.status == 201 {
            last_id = answer.body["id"].as_str().map(str::to_owned);
        }
        seen.lock().await.push(Seen {
            phase: *phase.lock().await,
            status: answer.status,
            code: answer.code().map(str::to_owned),
            retry_after: answer.headers.contains_key("retry-after"),
            took,
        });
        i += 1;
        // A steady pace, well under the enterprise tier's limits.
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_cut_and_stalled_engines_with_503s_and_recovers_without_restart() {
    if !redis_available("outages").await {
        return;
    }
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    let pg_proxy = TcpProxy::start(cluster.db.server_addr()).await.unwrap();
    let redis_target: SocketAddr = servers::redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let redis_proxy = TcpProxy::start(redis_target).await.unwrap();
    // Four organisations on the enterprise tier, one worker each.
    let keys: Vec<String> = (0..4)
        .map(|i| create_key(&cluster, &format!("org{i}"), Some("enterprise")))
        .collect();
    cluster.launch(&ClusterOptions {
        servers: 2,
        redis_url: Some(format!("redis://{}", redis_proxy.addr())),
        postgres_via: Some(pg_proxy.addr()),
        database_timeout_ms: u64::try_from(DATABASE_DEADLINE.as_millis()).unwrap(),
        extra: Vec::new(),
    });
    let addrs = cluster.addrs();
    let phase = Arc::new(Mutex::new("warm-up"));
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let counter = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(w, key)| {
            tokio::spawn(worker(
                addrs.clone(),
                format!("Bearer {key}"),
                w,
                Arc::clone(&phase),
                Arc::clone(&stop),
                Arc::clone(&seen),
                Arc::clone(&counter),
            ))
        })
        .collect();

    let hold = Duration::from_millis(1500);
    let set = |name: &'static str| {
        let phase = Arc::clone(&phase);
        async move { *phase.lock().await = name }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let steps: [(&'static str, &'static str); 8] = [
        ("postgres cut", "cut pg"),
        ("postgres restored", "restore pg"),
        ("postgres stalled", "stall pg"),
        ("postgres restored again", "restore pg"),
        ("redis cut", "cut redis"),
        ("redis restored", "restore redis"),
        ("redis stalled", "stall redis"),
        ("redis restored again", "restore redis"),
    ];
    for (name, action) in steps {
        match action {
            "cut pg" => pg_proxy.cut(),
            "stall pg" => pg_proxy.stall().unwrap(),
            "restore pg" => pg_proxy.restore().unwrap(),
            "cut redis" => redis_proxy.cut(),
            "stall redis" => redis_proxy.stall().unwrap(),
            _ => redis_proxy.restore().unwrap(),
        }
        set(name).await;
        tokio::time::sleep(hold).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let seen = seen.lock().await.clone();

    // Every answer: a success, or the catalog's 503 with Retry-After.
    for s in &seen {
        let success = (200..300).contains(&s.status);
        let unavailable =
            s.status == 503 && s.code.as_deref() == Some("service_unavailable") && s.retry_after;
        assert!(success || unavailable, "{s:?}");
    }
    // Each PostgreSQL outage was felt (a Redis outage is not: the limit layer fails open by
    // default, admitting requests without limits within Redis's deadline); each restore
    // recovered.
    for outage in ["postgres cut", "postgres stalled"] {
        assert!(
            seen.iter().any(|s| s.phase == outage && s.status == 503),
            "no 503 during {outage}"
        );
    }
    for restored in [
        "postgres restored",
        "postgres restored again",
        "redis restored",
        "redis restored again",
    ] {
        let phase: Vec<&Seen> = seen.iter().filter(|s| s.phase == restored).collect();
        let tail = &phase[phase.len().saturating_sub(4)..];
        assert!(
            !tail.is_empty() && tail.iter().all(|s| (200..300).contains(&s.status)),
            "not recovered by the end of {restored}: {tail:?}"
        );
    }
    // Latency: p99 under the deadlines plus a margin; nothing hangs.
    let mut took: Vec<Duration> = seen.iter().map(|s| s.took).collect();
    took.sort();
    let p99 = took[(took.len() * 99 / 100).min(took.len() - 1)];
    let max = *took.last().unwrap();
    let budget = DATABASE_DEADLINE + Duration::from_millis(500);
    let line = format!(
        "outages: {} answers, {} x 503, p99 {p99:?}, max {max:?}, budget {budget:?}\n",
        seen.len(),
        seen.iter().filter(|s| s.status == 503).count()
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    assert!(p99 <= budget, "p99 {p99:?} over {budget:?}");
    assert!(max <= Duration::from_secs(10), "an answer took {max:?}");

    // Nothing half-written: completed chatbot records and chatbots match one to one.
    let pool = PgPool::new(&cluster.db.options()).unwrap();
    let mut conn = pool.get().await.unwrap();
    let chatbots: HashSet<String> = conn
        .query("SELECT id FROM chatbots", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let recorded: HashSet<String> = conn
        .query(
            "SELECT body FROM idempotency_records WHERE status = 201",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let body: Vec<u8> = r.get(0);
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            json["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(!chatbots.is_empty());
    assert_eq!(
        chatbots, recorded,
        "a chatbot without its record or the reverse"
    );
    let created = seen.iter().filter(|s| s.status == 201).count();
    assert!(
        created <= chatbots.len(),
        "{created} answered 201, {} rows",
        chatbots.len()
    );
    drop(conn);
    let prefix = cluster.prefix.clone();
    drop(cluster);
    delete_redis_prefix(&prefix).await;
}
