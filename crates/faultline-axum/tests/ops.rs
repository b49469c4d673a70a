//! Operations: metrics count what was answered, `/healthz` and `/readyz` answer in the
//! contract, and a store outage is logged with its request id.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose when a fixture is broken

mod common;
use common::logs::Logs;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use faultline::Catalog;
use faultline_axum::{Contract, Error, Faultline, Health, Metrics, StoreError};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tracing::Level;

const CHATBOTS: &str = include_str!("../../../examples/catalogs/chatbots.toml");

fn catalog() -> Catalog {
    Catalog::from_toml_str(CHATBOTS).unwrap()
}

async fn get_from(app: &Router, path: &str) -> (StatusCode, HeaderMap, Value) {
    let response = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn app_with_metrics(routes: Router) -> (Router, Arc<Metrics>) {
    let catalog = catalog();
    let metrics = Arc::new(Metrics::new(&catalog));
    let contract = Contract::new(catalog)
        .unwrap()
        .with_metrics(Arc::clone(&metrics));
    let metrics_route = Router::new().route("/metrics", get(metrics.handler()));
    let app = Faultline::new(contract).install(routes.merge(metrics_route));
    (app, metrics)
}

#[tokio::test]
async fn metrics_count_every_answer_by_code_and_status() {
    let routes = Router::new()
        .route("/ok", get(|| async { "fine" }))
        .route(
            "/outage",
            get(|| async {
                Err::<(), Error>(StoreError::unavailable(std::io::Error::other("refused")).into())
            }),
        )
        .route(
            "/broken",
            get(|| async {
                Err::<(), Error>(StoreError::new(std::io::Error::other("no such table")).into())
            }),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("boom");
                }
            }),
        );
    let (app, metrics) = app_with_metrics(routes);
    let mut answered = std::collections::HashMap::<String, u64>::new();
    for path in [
        "/ok", "/ok", "/nope", "/nope", "/nope", "/outage", "/broken", "/panic",
    ] {
        let (status, _, body) = get_from(&app, path).await;
        if status.is_client_error() || status.is_server_error() {
            *answered
                .entry(body["error"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert_eq!(answered["not_found"], 3);
    assert_eq!(answered["service_unavailable"], 1);
    assert_eq!(answered["internal_error"], 2);
    for (code, count) in &answered {
        assert_eq!(metrics.errors_answered(code), *count, "{code}");
    }
    assert_eq!(metrics.responses_sent(200), 2);
    assert_eq!(metrics.responses_sent(404), 3);
    assert_eq!(metrics.responses_sent(503), 1);
    assert_eq!(metrics.responses_sent(500), 2);

    let response = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        faultline_axum::metrics::CONTENT_TYPE_TEXT
    );
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains("faultline_errors_total{code=\"not_found\",status=\"404\"} 3\n"));
    assert!(text.contains("faultline_errors_total{code=\"internal_error\",status=\"500\"} 2\n"));
    assert!(text.contains("faultline_store_errors_total{kind=\"unavailable\"} 1\n"));
    assert!(text.contains("faultline_store_errors_total{kind=\"failed\"} 1\n"));
    // Eight requests answered before this one was counted.
    assert!(text.contains("faultline_request_duration_seconds_count 8\n"));
}

#[tokio::test]
async fn a_store_outage_is_logged_with_the_request_id_and_cause_never_sent() {
    let routes = Router::new().route(
        "/outage",
        get(|| async {
            Err::<(), Error>(
                StoreError::unavailable(std::io::Error::other("connection refused: secret-host"))
                    .into(),
            )
        }),
    );
    let (app, _) = app_with_metrics(routes);
    let logs = Logs::default();
    let _guard = logs.capture();
    let (status, headers, body) = get_from(&app, "/outage").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(body["error"], "service_unavailable");
    assert!(!body.to_string().contains("secret-host"));
    let warnings = logs.at(Level::WARN);
    let id = body["request_id"].as_str().unwrap();
    assert!(
        warnings
            .iter()
            .any(|line| line.contains(id) && line.contains("secret-host")),
        "{warnings:?}"
    );
}

fn health_app(health: &Health) -> Router {
    let contract = Contract::new(catalog()).unwrap();
    Faultline::new(contract).install(health.routes())
}

#[tokio::test]
async fn healthz_and_readyz_answer_when_every_check_passes() {
    let health = Health::new()
        .check("database", || async { Ok(()) })
        .check("cache", || async { Ok(()) });
    let app = health_app(&health);
    let (status, _, body) = get_from(&app, "/healthz").await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, serde_json::json!({"status": "ok"}))
    );
    let (status, _, body) = get_from(&app, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        serde_json::json!({"status": "ready", "checks": {"database": "ok", "cache": "ok"}})
    );
}

#[tokio::test]
async fn a_failing_or_slow_check_is_the_catalogs_503_within_the_deadline() {
    let down = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&down);
    let health = Health::new()
        .deadline(Duration::from_millis(200))
        .check("database", move || {
            let down = flag.load(Ordering::Relaxed);
            async move {
                if down {
                    Err(StoreError::new(std::io::Error::other(
                        "password authentication failed",
                    )))
                } else {
                    Ok(())
                }
            }
        })
        .check("slow", || async { Ok(()) });
    let app = health_app(&health);
    assert_eq!(get_from(&app, "/readyz").await.0, StatusCode::OK);

    down.store(true, Ordering::Relaxed);
    let (status, headers, body) = get_from(&app, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "service_unavailable");
    assert!(headers.contains_key("retry-after"));
    assert!(!body.to_string().contains("password"));

    let hanging = Health::new()
        .deadline(Duration::from_millis(100))
        .check("hangs", std::future::pending::<Result<(), StoreError>>);
    let app = health_app(&hanging);
    let started = std::time::Instant::now();
    let (status, _, body) = get_from(&app, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "service_unavailable");
    // Far below the layer's own 30 s deadline: the check's deadline answered.
    assert!(started.elapsed() < Duration::from_secs(5));
    // Liveness does not depend on the checks.
    assert_eq!(get_from(&app, "/healthz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_draining_process_is_not_ready_but_alive() {
    let health = Health::new().check("database", || async { Ok(()) });
    let app = health_app(&health);
    assert_eq!(get_from(&app, "/readyz").await.0, StatusCode::OK);
    health.start_draining();
    let (status, _, body) = get_from(&app, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "service_unavailable");
    assert_eq!(get_from(&app, "/healthz").await.0, StatusCode::OK);
}
