//! Three `faultline serve` processes (A, B, C) on one PostgreSQL database and one Redis,
//! requests spread across them: one rate limit, one quota (in PostgreSQL, kept across
//! restarts), one exactly-once idempotency, one cursor secret, and a revocation through A
//! refused by B and C within a second (measured).
//!
//! Needs `FAULTLINE_TEST_POSTGRES_URL` and Redis (`FAULTLINE_REDIS_URL`, default
//! `redis://127.0.0.1:6379`); without them each test prints a `skipped:` line and passes
//! (unless `FAULTLINE_REQUIRE_REDIS` is set).
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

#[path = "common/servers.rs"]
mod servers;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::json;
use servers::{Cluster, ClusterOptions, create_key, delete_redis_prefix, http, redis_available};

/// # One per-org limit for every instance
/// One cluster at a time: three `serve` processes with their pools are dozens of PostgreSQL
/// connections, and four clusters at once can pass the server's connection limit ("too many
/// clients"), which would fail a test for a reason it is not about.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_org_limit_admits_exactly_its_quota_across_three_instances() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    if !redis_available("a_per_org_limit").await {
        return;
    }
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    // Two keys of one free organisation: 10 requests a minute for the organisation.
    let keys = [
        create_key(&cluster, "acme", None),
        create_key(&cluster, "acme", None),
    ];
    cluster.launch(&ClusterOptions {
        redis_url: Some(servers::redis_url()),
        ..ClusterOptions::default()
    });
    let addrs = cluster.addrs();
    let mut statuses = Vec::new();
    // One at a time (the free tier allows 2 in flight), round robin over servers and keys.
    for i in 0..30 {
        let bearer = format!("Bearer {}", keys[i % 2]);
        let answer = http(
            addrs[i % 3],
            "GET",
            "/v1/chatbots",
            &[("Authorization", &bearer)],
            None,
        )
        .await
        .unwrap();
        if answer.status == 429 {
            assert!(answer.headers.contains_key("retry-after"), "{answer:?}");
        }
        statuses.push(answer.status);
    }
    let prefix = cluster.prefix.clone();
    drop(cluster);
    delete_redis_prefix(&prefix).await;
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((ok, limited), (10, 20), "{statuses:?}");
    // Every server admitted some: the quota is theirs together.
    for server in 0..3 {
        assert!(
            statuses.iter().skip(server).step_by(3).any(|&s| s == 200),
            "server {server} admitted nothing: {statuses:?}"
        );
    }
}

/// # Exactly once across instances, and cursors that travel
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_create_once_under_200_concurrent_posts_and_share_cursors() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    let key = create_key(&cluster, "acme", None);
    cluster.launch(&ClusterOptions::default());
    let addrs = cluster.addrs();
    let bearer = format!("Bearer {key}");

    // 200 POSTs with one Idempotency-Key at once, spread over the three; each retries while
    // the first is in progress, until it gets the 201 (the original or its replay).
    let body = json!({"name": "Exactly once"});
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (addr, bearer, body) = (addrs[i % 3], bearer.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..200 {
                let answer = http(
                    addr,
                    "POST",
                    "/v1/chatbots",
                    &[
                        ("Authorization", &bearer),
                        ("Idempotency-Key", "same-key-for-all-200"),
                    ],
                    Some(&body),
                )
                .await
                .unwrap();
                match answer.status {
                    201 => return answer.body["id"].as_str().unwrap().to_owned(),
                    409 | 503 => {
                        assert!(answer.headers.contains_key("retry-after"), "{answer:?}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    _ => panic!("unexpected answer: {answer:?}"),
                }
            }
            panic!("never got the 201");
        }));
    }
    let mut ids = HashSet::new();
    for task in tasks {
        ids.insert(task.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "every POST got the same chatbot: {ids:?}");
    let listed = http(
        addrs[0],
        "GET",
        "/v1/chatbots?limit=100",
        &[("Authorization", &bearer)],
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        listed.body["data"].as_array().unwrap().len(),
        1,
        "{listed:?}"
    );

    // Four more, then pages of two, each page from the next server: a cursor signed by one
    // opens on the others.
    for i in 0..4 {
        let created = http(
            addrs[i % 3],
            "POST",
            "/v1/chatbots",
            &[("Authorization", &bearer)],
            Some(&json!({"name": format!("Bot {i}")})),
        )
        .await
        .unwrap();
        assert_eq!(created.status, 201, "{created:?}");
    }
    let (mut seen, mut path, mut page_no) = (Vec::new(), "/v1/chatbots?limit=2".to_owned(), 0);
    loop {
        let page = http(
            addrs[page_no % 3],
            "GET",
            &path,
            &[("Authorization", &bearer)],
            None,
        )
        .await
        .unwrap();
        assert_eq!(page.status, 200, "page {page_no}: {page:?}");
        for bot in page.body["data"].as_array().unwrap() {
            seen.push(bot["id"].as_str().unwrap().to_owned());
        }
        page_no += 1;
        match page.body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/chatbots?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(page_no, 3, "five chatbots in pages of two");
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 5, "{seen:?}");
}

/// # A revocation through one instance is refused by every other within a second
///
/// A key revoked through the HTTP API of A is refused by B and C, which both had it cached
/// (for 10 s), within one second; a key paused through B, the same on A and C. The delays
/// are measured and printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_through_a_is_refused_by_b_and_c_within_a_second() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    let (_, admin) = servers::create_key_with_id(&cluster, "acme", "all");
    let (revoked_id, revoked) = servers::create_key_with_id(&cluster, "acme", "chatbots:read");
    let (paused_id, paused) = servers::create_key_with_id(&cluster, "acme", "chatbots:read");
    cluster.launch(&ClusterOptions::default());
    let addrs = cluster.addrs();
    let names = ["A", "B", "C"];
    let mut lines = Vec::new();
    for (through, action, id, key, code) in [
        (0, "revoke", &revoked_id, &revoked, "api_key_revoked"),
        (1, "pause", &paused_id, &paused, "api_key_paused"),
    ] {
        let delays = change_and_measure(&addrs, through, action, id, key, &admin, code).await;
        let mut line = format!("{action} through {}:", names[through]);
        for (server, delay) in &delays {
            line.push_str(&format!(" refused by {} after {delay:?};", names[*server]));
        }
        line.push('\n');
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        lines.push((line, delays));
    }
    for (line, delays) in lines {
        for (_, delay) in delays {
            assert!(delay < Duration::from_secs(1), "{line}");
        }
    }
}

/// Caches `key` on every server, applies `action` to it through server `through`, and polls
/// every other server at once until it refuses with `code`: `(server, delay since the change
/// was sent)` for each.
async fn change_and_measure(
    addrs: &[std::net::SocketAddr],
    through: usize,
    action: &str,
    id: &str,
    key: &str,
    admin: &str,
    code: &'static str,
) -> Vec<(usize, Duration)> {
    let bearer = format!("Bearer {key}");
    for &addr in addrs {
        let answer = http(
            addr,
            "GET",
            "/v1/chatbots",
            &[("Authorization", &bearer)],
            None,
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    let start = Instant::now();
    let changed = http(
        addrs[through],
        "POST",
        &format!("/v1/api_keys/{id}/{action}"),
        &[("Authorization", &format!("Bearer {admin}"))],
        None,
    )
    .await
    .unwrap();
    assert_eq!(changed.status, 200, "{changed:?}");
    let polls: Vec<_> = (0..addrs.len())
        .filter(|&i| i != through)
        .map(|server| {
            let (addr, bearer) = (addrs[server], bearer.clone());
            tokio::spawn(async move {
                loop {
                    let answer = http(
                        addr,
                        "GET",
                        "/v1/chatbots",
                        &[("Authorization", &bearer)],
                        None,
                    )
                    .await
                    .unwrap();
                    if answer.status != 200 {
                        assert_eq!(answer.code(), Some(code), "{answer:?}");
                        return (server, start.elapsed());
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(3),
                        "still accepted after 3 s"
                    );
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    let mut delays = Vec::new();
    for poll in polls {
        delays.push(poll.await.unwrap());
    }
    delays
}

/// The built-in catalog with the enterprise tier's monthly quota lowered to `quota`.
fn catalog_with_monthly_quota(cluster: &Cluster, quota: u64) -> std::path::PathBuf {
    let source = include_str!("../../../examples/catalogs/chatbots.toml");
    let original = "limit = { free = 5000, pro = 250000, enterprise = 10000000 }";
    assert!(
        source.contains(original),
        "the catalog's monthly quota moved"
    );
    let changed = source.replace(
        original,
        &format!("limit = {{ free = 5000, pro = 250000, enterprise = {quota} }}"),
    );
    let path = cluster.keys_db().with_file_name("catalog.toml");
    std::fs::write(&path, changed).unwrap();
    path
}

/// # A per-org quota in PostgreSQL: exact across three instances, kept across restarts
///
/// The monthly quota lives in PostgreSQL (Redis only holds the rates and leases): 30
/// concurrent requests spread over three instances get exactly 12 answers 200 and 18 the
/// catalog's `quota_exceeded`; after every process restarts (and the Redis buckets are gone),
/// the spent quota still refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_org_quota_is_exact_across_three_instances_and_survives_restarts() {
    let _serial = ONE_CLUSTER_AT_A_TIME.lock().await;
    if !redis_available("a_per_org_quota").await {
        return;
    }
    let Some(mut cluster) = Cluster::new() else {
        return;
    };
    let keys = [
        create_key(&cluster, "acme", Some("enterprise")),
        create_key(&cluster, "acme", None),
    ];
    let catalog = catalog_with_monthly_quota(&cluster, 12);
    let options = ClusterOptions {
        redis_url: Some(servers::redis_url()),
        extra: vec![
            "--catalog".into(),
            catalog.display().to_string(),
            "--limits-on-failure".into(),
            "closed".into(),
        ],
        ..ClusterOptions::default()
    };
    cluster.launch(&options);
    let addrs = cluster.addrs();
    // Warm-up by another organisation, so that each process has its PostgreSQL connections
    // open: a cold process opening them all at once may miss the limit layer's deadline
    // (answered 503 with `Retry-After` here, as `--limits-on-failure closed` says).
    let other = create_key(&cluster, "globex", Some("enterprise"));
    warm_up(&addrs, &other).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let (addr, bearer) = (addrs[i % 3], format!("Bearer {}", keys[i % 2]));
        tasks.push(tokio::spawn(async move {
            let answer = http(
                addr,
                "GET",
                "/v1/chatbots",
                &[("Authorization", &bearer)],
                None,
            )
            .await
            .unwrap();
            (i % 3, answer)
        }));
    }
    let mut ok = [0usize; 3];
    let mut refused = 0;
    for task in tasks {
        let (server, answer) = task.await.unwrap();
        match answer.status {
            200 => ok[server] += 1,
            429 => {
                assert!(
                    answer.body.to_string().contains("quota_exceeded"),
                    "{answer:?}"
                );
                assert!(answer.headers.contains_key("retry-after"), "{answer:?}");
                refused += 1;
            }
            _ => panic!("unexpected answer: {answer:?}"),
        }
    }
    assert_eq!(
        (ok.iter().sum::<usize>(), refused),
        (12, 18),
        "admitted per server: {ok:?}"
    );

    // Every process stops, the Redis buckets go; the quota stays spent.
    cluster.servers.clear();
    delete_redis_prefix(&cluster.prefix).await;
    cluster.launch(&options);
    warm_up(&cluster.addrs(), &other).await;
    for (i, addr) in cluster.addrs().into_iter().enumerate() {
        let answer = http(
            addr,
            "GET",
            "/v1/chatbots",
            &[("Authorization", &format!("Bearer {}", keys[i % 2]))],
            None,
        )
        .await
        .unwrap();
        assert_eq!(answer.status, 429, "{answer:?}");
        assert!(
            answer.body.to_string().contains("quota_exceeded"),
            "{answer:?}"
        );
    }
    let prefix = cluster.prefix.clone();
    drop(cluster);
    delete_redis_prefix(&prefix).await;
}

/// Ten concurrent requests with `key` on each server, twice; any answer will do.
async fn warm_up(addrs: &[std::net::SocketAddr], key: &str) {
    for _ in 0..2 {
        let mut tasks = Vec::new();
        for i in 0..30 {
            let (addr, bearer) = (addrs[i % addrs.len()], format!("Bearer {key}"));
            tasks.push(tokio::spawn(async move {
                http(
                    addr,
                    "GET",
                    "/v1/chatbots",
                    &[("Authorization", &bearer)],
                    None,
                )
                .await
                .map(|a| a.status)
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}
