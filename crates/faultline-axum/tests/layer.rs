//! Panics, timeouts and unexpected errors become catalog errors that reveal nothing.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose when a fixture is broken

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use faultline::Catalog;
use faultline_axum::{Contract, Error, Faultline};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

fn app() -> Router {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    let catalog = Catalog::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let router = Router::new()
        .route("/panic", get(panicking))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        )
        .route(
            "/fail",
            get(|| async {
                Err::<(), _>(Error::internal(std::io::Error::other(
                    "connect to postgres://admin:hunter2@db failed",
                )))
            }),
        )
        .route(
            "/teapot",
            get(|| async { axum::http::StatusCode::IM_A_TEAPOT }),
        );
    Faultline::new(Contract::new(catalog).unwrap())
        .timeout(Duration::from_millis(100))
        .install(router)
}

async fn panicking() -> &'static str {
    panic!("secret at /root/src/db.rs:12 in thread 'main'")
}

async fn get_json(app: Router, path: &str) -> (u16, Value, String) {
    let response = app
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap(), id)
}

#[tokio::test]
async fn a_panic_is_an_internal_error_that_says_nothing_of_the_panic() {
    let (status, body, id) = get_json(app(), "/panic").await;
    assert_eq!(status, 500);
    assert_eq!(body["error"], "internal_error");
    assert_eq!(body["request_id"], id.as_str());
    let text = body.to_string();
    for leak in ["secret", "/root", ".rs", "thread"] {
        assert!(!text.contains(leak), "{text}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_handler_gets_the_timeout_code() {
    let (status, body, _) = get_json(app(), "/slow").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (504, Some("request_timeout"))
    );
}

#[tokio::test]
async fn an_unexpected_error_keeps_its_cause_out_of_the_body() {
    let (status, body, _) = get_json(app(), "/fail").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (500, Some("internal_error"))
    );
    assert!(!body.to_string().contains("hunter2"));
}

#[tokio::test]
async fn a_bare_status_from_a_handler_is_mapped_into_the_catalog() {
    let (status, body, _) = get_json(app(), "/teapot").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (500, Some("internal_error"))
    );
}

#[test]
fn a_catalog_without_required_bindings_is_refused() {
    let catalog = Catalog::from_toml_str(
        r#"[api]
name = "X"
profile = "flat"
code_style = "snake_case"

[bindings]
internal = "internal_error"

[[errors]]
code = "internal_error"
status = 500
category = "Server"
title = "Internal"
message = "Something failed."
when = "Always."
recovery = "Retry."
retry = "backoff"
"#,
    )
    .unwrap();
    let missing = Contract::new(catalog).unwrap_err();
    assert_eq!(missing.0.len(), 9);
    assert!(missing.to_string().contains("route_not_found"));
}
