//! The limit layer (`faultline_axum::limit::LimitLayer`) on the Redis store, through a proxy:
//! the catalog's limits while Redis is there, the configured answer within the deadline when it
//! is cut or stalled (503 with `Retry-After` when failing closed, the handler when failing
//! open), and limits again once it is back, without restarting anything.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose when a fixture is broken

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, request::Parts};
use axum::routing::get;
use faultline_axum::limit::{Caller, FailureMode, LimitLayer, LimitStore};
use faultline_axum::{Contract, Faultline};
use faultline_redis::{PoolOptions, RedisLimitStore, RedisPool};
use faultline_testkit::TcpProxy;
use tower::ServiceExt;

const DEADLINE: Duration = Duration::from_millis(300);
const SLACK: Duration = Duration::from_millis(700);

fn catalog() -> faultline::Catalog {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    faultline::Catalog::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every request comes from organisation `acme`'s key `key_1`, on the catalog's default tier.
fn acme(_: &Parts) -> Option<Caller> {
    Some(Caller::new("acme", "key_1"))
}

fn app(store: Arc<dyn LimitStore>, failure: FailureMode) -> Router {
    let layer = LimitLayer::with_subject(&catalog(), store, acme)
        .on_failure(failure)
        .deadline(DEADLINE);
    let router = Router::new()
        .route(
            "/ok",
            get(|| async { axum::Json(serde_json::json!({"ok": true})) }),
        )
        .route_layer(layer);
    Faultline::new(Contract::new(catalog()).unwrap()).install(router)
}

/// The status, `Retry-After` and whether `RateLimit` was sent, and how long it took.
async fn get_ok(app: &Router) -> (u16, Option<String>, bool, Duration) {
    let started = Instant::now();
    let response = app
        .clone()
        .oneshot(Request::get("/ok").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let took = started.elapsed();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let limited = response.headers().contains_key("ratelimit");
    (response.status().as_u16(), retry, limited, took)
}

async fn run(cut: bool, failure: FailureMode) {
    let Some(direct) = common::redis_or_skip("layer on Redis").await else {
        return;
    };
    let prefix = common::unique_prefix("layer");
    let proxy = TcpProxy::start(common::redis_addr()).await.unwrap();
    let pool = RedisPool::new(
        &format!("redis://{}", proxy.addr()),
        PoolOptions::default()
            .with_connections(2)
            .with_deadline(DEADLINE)
            .with_connect_timeout(DEADLINE),
    )
    .unwrap();
    let store = Arc::new(RedisLimitStore::new(Arc::new(pool)).with_prefix(&prefix));
    let app = app(store, failure);

    // Redis there: the free tier's 10 a minute, then 429 with Retry-After and the headers.
    for i in 0..10 {
        let (status, _, limited, _) = get_ok(&app).await;
        assert_eq!((status, limited), (200, true), "request {i}");
    }
    let (status, retry, limited, _) = get_ok(&app).await;
    assert_eq!((status, limited), (429, true));
    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);

    if cut {
        proxy.cut();
    } else {
        proxy.stall().unwrap();
    }
    for _ in 0..4 {
        let (status, retry, _, took) = get_ok(&app).await;
        assert!(took < DEADLINE + SLACK, "answered after {took:?}");
        match failure {
            FailureMode::Closed => {
                assert_eq!(status, 503, "failing closed");
                assert!(retry.is_some(), "a 503 tells when to retry");
            }
            _ => assert_eq!(status, 200, "failing open: the handler answers"),
        }
    }

    proxy.restore().unwrap();
    // Back without a restart: the limit Redis kept (spent) still refuses.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get_ok(&app).await.0);
    }
    assert_eq!(statuses, [429, 429, 429]);
    common::clean(&direct, &prefix).await;
}

#[tokio::test]
async fn redis_cut_fails_closed_with_503_within_the_deadline() {
    run(true, FailureMode::Closed).await;
}

#[tokio::test]
async fn redis_stalled_fails_closed_with_503_within_the_deadline() {
    run(false, FailureMode::Closed).await;
}

#[tokio::test]
async fn redis_cut_fails_open_within_the_deadline() {
    run(true, FailureMode::Open).await;
}

#[tokio::test]
async fn redis_stalled_fails_open_within_the_deadline() {
    run(false, FailureMode::Open).await;
}
