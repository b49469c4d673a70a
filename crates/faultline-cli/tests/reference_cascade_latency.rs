//! A measurement, not a check: how long another organisation's reads take while one
//! organisation deletes a category tree of about 8,000 nodes. It prints p50 and max; it asserts
//! no timing. Run it with
//! `cargo test -p faultline-cli --test reference_cascade_latency -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::print_stdout)] // a measurement prints; fixtures panic

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use faultline::Catalog;
use faultline_axum::auth::{Authenticator, KeyManager, MemoryKeyStore, NewKey};
use faultline_cli::reference::{SCOPES, Settings, app, key_format, store::Store};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn catalog() -> Catalog {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    Catalog::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn key_for(auth: &KeyManager, org: &str) -> (String, String) {
    let org = auth.ensure_org(org).await.unwrap().id;
    let new = NewKey::new("bench", SCOPES);
    let (_, key) = auth.create_key(&org, new).await.unwrap();
    (org, format!("Bearer {}", key.expose()))
}

async fn call(app: &Router, method: &str, path: &str, bearer: &str) -> u16 {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", bearer)
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await.unwrap();
    status
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement; run it explicitly"]
async fn other_org_reads_during_an_8000_node_cascade() {
    let dir = std::env::temp_dir().join(format!("faultline-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("bench.db");
    let keys = Arc::new(MemoryKeyStore::new());
    let verifier = Arc::new(Authenticator::new(key_format(), keys.clone()));
    let auth = Arc::new(KeyManager::new(verifier, keys));
    let (org_a, bearer_a) = key_for(&auth, "deleter").await;
    let (org_b, bearer_b) = key_for(&auth, "reader").await;
    let app = app(Settings {
        catalog: catalog(),
        profile: None,
        store: Store::open(&db).unwrap(),
        keys: auth,
        body_limit: 64 * 1024,
        timeout: Duration::from_secs(60),
    })
    .unwrap();

    // The tree: a root, 40 children, 199 grandchildren each (8,001 nodes), written straight
    // into the file in one transaction; and one category of the other organisation.
    let root = uuid::Uuid::new_v4().to_string();
    let theirs = uuid::Uuid::new_v4().to_string();
    {
        let mut conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let tx = conn.transaction().unwrap();
        let insert = |id: &str, org: &str, parent: Option<&str>| {
            tx.execute(
                "INSERT INTO categories (id, org_id, parent_id, name, created_at) \
                 VALUES (?1, ?2, ?3, 'n', '2026-01-01T00:00:00.000+00:00')",
                rusqlite::params![id, org, parent],
            )
            .unwrap();
        };
        insert(&root, &org_a, None);
        insert(&theirs, &org_b, None);
        for _ in 0..40 {
            let child = uuid::Uuid::new_v4().to_string();
            insert(&child, &org_a, Some(&root));
            for _ in 0..199 {
                insert(&uuid::Uuid::new_v4().to_string(), &org_a, Some(&child));
            }
        }
        tx.commit().unwrap();
    }

    // Each reader pauses between requests (BENCH_PAUSE_MS, default 1 ms), so that the readers
    // model traffic rather than take every core from the delete.
    let pause = Duration::from_millis(
        std::env::var("BENCH_PAUSE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1),
    );
    let readers_count: usize = std::env::var("BENCH_READERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..readers_count {
        let (app, bearer, done) = (app.clone(), bearer_b.clone(), Arc::clone(&done));
        let path = format!("/v1/categories/{theirs}");
        readers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let started = Instant::now();
                assert_eq!(call(&app, "GET", &path, &bearer).await, 200);
                latencies.push((started, started.elapsed()));
                tokio::time::sleep(pause).await;
            }
            latencies
        }));
    }
    // Let the readers warm up, then delete the tree.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cascade_started = Instant::now();
    let status = call(
        &app,
        "DELETE",
        &format!("/v1/categories/{root}?cascade=true"),
        &bearer_a,
    )
    .await;
    let cascade = cascade_started.elapsed();
    let cascade_ended = Instant::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    done.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for reader in readers {
        all.extend(reader.await.unwrap());
    }
    if all.is_empty() {
        println!("cascade of 8,001 nodes: status {status} in {cascade:?}, no readers");
        return;
    }
    // The requests that were in flight at some point of the delete.
    let mut during: Vec<Duration> = all
        .iter()
        .filter(|(at, took)| *at + *took >= cascade_started && *at <= cascade_ended)
        .map(|(_, took)| *took)
        .collect();
    let mut latencies: Vec<Duration> = all.iter().map(|(_, took)| *took).collect();
    latencies.sort();
    during.sort();
    println!("cascade of 8,001 nodes: status {status} in {cascade:?}");
    for (label, sample) in [("during the delete", &during), ("whole run", &latencies)] {
        if sample.is_empty() {
            continue;
        }
        println!(
            "  other-org GETs, {label}: {} requests, p50 {:?}, p99 {:?}, max {:?}",
            sample.len(),
            percentile(sample, 0.5),
            percentile(sample, 0.99),
            sample[sample.len() - 1],
        );
    }
    assert_eq!(status, 204);
    let _ = std::fs::remove_dir_all(&dir);
}
