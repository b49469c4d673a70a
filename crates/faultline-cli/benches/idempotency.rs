//! Idempotency keys on the reference API, in process: `POST /v1/chatbots` with a fresh key
//! each time against the same POST without a key, and a replay against a plain
//! `GET /v1/chatbots/{id}`. Compare the figures of one run (the machine is shared);
//! `bench/idempotency_ratios.sh` runs it and prints the ratios.
//!
//! `FAULTLINE_BENCH_IDEMPOTENCY` picks the record store: `sqlite` (default: the records in the
//! reference API's own SQLite file, completed inside the insert's transaction), `memory`, or
//! `postgres` (a throw-away database on the server in `FAULTLINE_TEST_POSTGRES_URL`).
//!
//! The file runs with `PRAGMA synchronous = NORMAL` (no fsync per commit, WAL's usual setting)
//! unless `FAULTLINE_BENCH_SYNC=full`: on a shared virtual disk an fsync takes from 0.1 to
//! several milliseconds, which would swamp the cost being measured. For the same reason the
//! PostgreSQL sessions run with `synchronous_commit = off` (commits are flushed by the WAL
//! writer a moment later; a crash loses at most the last ones, never consistency) unless
//! `FAULTLINE_BENCH_SYNC=full`.
#![allow(missing_docs)] // criterion_group! generates an undocumented public function
#![allow(clippy::expect_used, clippy::unwrap_used)] // a broken fixture should stop the benchmark

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use criterion::{Criterion, criterion_group, criterion_main};
use faultline::Catalog;
use faultline_axum::auth::{Authenticator, KeyManager, MemoryKeyStore, NewKey};
use faultline_axum::idempotency::MemoryIdempotencyStore;
use faultline_cli::reference::idempotency::IdempotencyOptions;
use faultline_cli::reference::store::Store;
use faultline_cli::reference::{SCOPES, Settings, build_with, key_format};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn catalog() -> Catalog {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    Catalog::from_toml_str(&std::fs::read_to_string(path).expect("catalog")).expect("valid")
}

async fn call(app: &Router, request: Request<Body>, expected: u16) -> axum::body::Bytes {
    let response = app.clone().oneshot(request).await.expect("an answer");
    assert_eq!(response.status().as_u16(), expected);
    response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes()
}

fn post(bearer: &str, key: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/v1/chatbots")
        .header("authorization", bearer)
        .header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request
        .body(Body::from(r#"{"name":"Benchmark bot"}"#))
        .unwrap()
}

fn idempotency(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = std::env::temp_dir().join(format!("faultline-bench-idem-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = Store::open(&dir.join("bench.db")).expect("a database");
    let sync = std::env::var("FAULTLINE_BENCH_SYNC").unwrap_or_else(|_| "normal".into());
    store
        .pool()
        .expect("the store is on SQLite")
        .write_blocking(move |c| c.pragma_update(None, "synchronous", &sync))
        .expect("the synchronous pragma");
    let keys_store = Arc::new(MemoryKeyStore::new());
    let keys = Arc::new(KeyManager::new(
        Arc::new(Authenticator::new(key_format(), keys_store.clone())),
        keys_store,
    ));
    let bearer = runtime.block_on(async {
        let org = keys.ensure_org("bench").await.unwrap().id;
        let (_, key) = keys
            .create_key(&org, NewKey::new("bench", SCOPES))
            .await
            .unwrap();
        format!("Bearer {}", key.expose())
    });
    let engine = std::env::var("FAULTLINE_BENCH_IDEMPOTENCY").unwrap_or_else(|_| "sqlite".into());
    let mut options = IdempotencyOptions::from_catalog(&catalog());
    // `postgres`: records in a throw-away database on FAULTLINE_TEST_POSTGRES_URL's server.
    let mut postgres = None;
    match engine.as_str() {
        "sqlite" => {}
        "memory" => options.store = Some(Arc::new(MemoryIdempotencyStore::new())),
        "postgres" => {
            let db = faultline_postgres::testing::TestDatabase::migrated()
                .expect("FAULTLINE_TEST_POSTGRES_URL names the server");
            let mut pg_options = db.options();
            if std::env::var("FAULTLINE_BENCH_SYNC").as_deref() != Ok("full") {
                pg_options.config.options("-c synchronous_commit=off");
            }
            let pool = faultline_postgres::PgPool::new(&pg_options).expect("a pool");
            options.store = Some(Arc::new(faultline_postgres::PgIdempotencyStore::new(pool)));
            postgres = Some(db);
        }
        other => {
            panic!("unknown FAULTLINE_BENCH_IDEMPOTENCY `{other}`: sqlite, memory or postgres")
        }
    }
    let (app, _) = build_with(
        Settings {
            catalog: catalog(),
            profile: None,
            store,
            keys,
            body_limit: 64 * 1024,
            timeout: Duration::from_secs(30),
        },
        &options,
    )
    .expect("the app");

    // One chatbot to read, and one key to replay.
    let (id, _) = runtime.block_on(async {
        let created = call(&app, post(&bearer, Some("replayed")), 201).await;
        let json: serde_json::Value = serde_json::from_slice(&created).unwrap();
        (json["id"].as_str().unwrap().to_owned(), created)
    });
    let fresh = AtomicU64::new(0);
    let keyed = || {
        let key = format!("fresh-{}", fresh.fetch_add(1, Ordering::Relaxed));
        post(&bearer, Some(&key))
    };
    let get = || {
        Request::get(format!("/v1/chatbots/{id}"))
            .header("authorization", &bearer)
            .body(Body::empty())
            .unwrap()
    };
    // Each pair is measured interleaved: every iteration sends one request of each kind and
    // times only its own, so both see the same database size and the same load from other
    // processes on the machine.
    let mut group = c.benchmark_group(format!("idempotency_{engine}"));
    let pair = |timed_first: bool,
                first: &dyn Fn() -> Request<Body>,
                first_status: u16,
                second: &dyn Fn() -> Request<Body>,
                second_status: u16,
                iters: u64| {
        let mut spent = Duration::ZERO;
        for _ in 0..iters {
            let start = Instant::now();
            runtime.block_on(call(&app, first(), first_status));
            let between = Instant::now();
            runtime.block_on(call(&app, second(), second_status));
            spent += if timed_first {
                between - start
            } else {
                between.elapsed()
            };
        }
        spent
    };
    let plain = || post(&bearer, None);
    let replayed = || post(&bearer, Some("replayed"));
    group.bench_function("post_without_key", |b| {
        b.iter_custom(|iters| pair(true, &plain, 201, &keyed, 201, iters));
    });
    group.bench_function("post_fresh_key", |b| {
        b.iter_custom(|iters| pair(false, &plain, 201, &keyed, 201, iters));
    });
    group.bench_function("get_by_id", |b| {
        b.iter_custom(|iters| pair(true, &get, 200, &replayed, 201, iters));
    });
    group.bench_function("post_replay", |b| {
        b.iter_custom(|iters| pair(false, &get, 200, &replayed, 201, iters));
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
    drop(postgres);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = idempotency
}
criterion_main!(benches);
