//! Bare statuses from handlers and tower layers become catalog errors; hand-built error JSON
//! is reported (or refused in strict mode).
#![allow(clippy::unwrap_used)] // test helpers panic on purpose when a fixture is broken

mod common;
use common::logs::Logs;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::http::response::Parts;
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use faultline::{Catalog, Situation};
use faultline_axum::{Contract, DefaultStatusMapper, Faultline, RequestId};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::oneshot;
use tower::{ServiceBuilder, ServiceExt};
use tracing::Level;

const CHATBOTS: &str = include_str!("../../../examples/catalogs/chatbots.toml");

fn contract() -> Contract {
    Contract::new(Catalog::from_toml_str(CHATBOTS).unwrap()).unwrap()
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

fn bare(status: u16) -> axum::routing::MethodRouter {
    get(move || async move { StatusCode::from_u16(status).unwrap() })
}

#[tokio::test]
async fn bare_statuses_from_handlers_become_their_bound_codes() {
    let mut router = Router::new();
    let cases = [
        (401, "missing_api_key", None),
        (403, "forbidden", None),
        (409, "conflict", None),
        (429, "rate_limited", Some("1")),
        (503, "service_unavailable", Some("1")),
        (504, "request_timeout", None),
        (408, "request_timeout", None),
        (431, "request_headers_too_large", None),
        (400, "invalid_payload", None),
        (500, "internal_error", None),
    ];
    for (status, _, _) in cases {
        router = router.route(&format!("/s/{status}"), bare(status));
    }
    let app = Faultline::new(contract()).install(router);
    let logs = Logs::default();
    let _guard = logs.capture();
    for (status, code, retry_after) in cases {
        let (got, headers, body) = get_from(&app, &format!("/s/{status}")).await;
        let catalog_status = contract().catalog().get(code).unwrap().status;
        assert_eq!(got.as_u16(), catalog_status, "{status}");
        assert_eq!(body["error"], code, "{status}");
        assert_eq!(
            headers
                .get(header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap()),
            retry_after,
            "{status}"
        );
        assert_eq!(
            body["request_id"],
            headers["x-request-id"].to_str().unwrap()
        );
    }
    assert!(
        logs.at(Level::WARN).is_empty(),
        "{:?}",
        logs.at(Level::WARN)
    );
}

#[tokio::test]
async fn a_retry_after_from_the_bare_response_is_kept() {
    let app = Faultline::new(contract()).install(
        Router::new()
            .route(
                "/limited",
                get(|| async { (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "7")]) }),
            )
            .route(
                "/down",
                get(|| async {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::RETRY_AFTER, "30")],
                        "down for maintenance",
                    )
                }),
            ),
    );
    let (status, headers, body) = get_from(&app, "/limited").await;
    assert_eq!(
        (status.as_u16(), &body["error"]),
        (429, &"rate_limited".into())
    );
    assert_eq!(headers[header::RETRY_AFTER], "7");
    let (status, headers, body) = get_from(&app, "/down").await;
    assert_eq!(
        (status.as_u16(), &body["error"]),
        (503, &"service_unavailable".into())
    );
    assert_eq!(headers[header::RETRY_AFTER], "30");
}

#[tokio::test]
async fn a_load_shed_refusal_from_a_tower_layer_becomes_service_unavailable() {
    let (entered_tx, entered_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let slot = Arc::new(Mutex::new(Some((entered_tx, release_rx))));
    let handler = move || {
        let slot = Arc::clone(&slot);
        async move {
            let taken = slot.lock().unwrap().take();
            if let Some((entered, release)) = taken {
                entered.send(()).unwrap();
                release.await.unwrap();
            }
            "done"
        }
    };
    // One request at a time; a second one is shed at once, and the app answers a bare 503.
    let limited = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            StatusCode::SERVICE_UNAVAILABLE
        }))
        .load_shed()
        .concurrency_limit(1);
    // Eager, as `axum::serve` makes it: a lazy router would build the limit anew per request.
    let app = Faultline::new(contract())
        .install(Router::new().route("/busy", get(handler).route_layer(limited)))
        .with_state(());
    let first = tokio::spawn({
        let app = app.clone();
        async move { get_from(&app, "/busy").await }
    });
    entered_rx.await.unwrap();
    let (status, headers, body) = get_from(&app, "/busy").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "service_unavailable");
    assert_eq!(headers[header::RETRY_AFTER], "1");
    release_tx.send(()).unwrap();
    let response = first.await.unwrap();
    assert_eq!(response.0, StatusCode::OK);
}

#[tokio::test]
async fn an_unmapped_status_is_the_internal_error_with_exactly_one_warning() {
    let app = Faultline::new(contract()).install(Router::new().route("/teapot", bare(418)));
    let logs = Logs::default();
    let _guard = logs.capture();
    let (status, _, body) = get_from(&app, "/teapot").await;
    assert_eq!(
        (status.as_u16(), &body["error"]),
        (500, &"internal_error".into())
    );
    let warnings = logs.at(Level::WARN);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("status=418"), "{warnings:?}");
    assert!(warnings[0].contains("route=\"/teapot\""), "{warnings:?}");
}

#[tokio::test]
async fn an_app_mapper_decides_what_a_status_stands_for() {
    let mapper = |status: StatusCode, _: &Parts| match status {
        StatusCode::PAYMENT_REQUIRED => Some(Situation::QuotaExceeded),
        StatusCode::CONFLICT => None,
        _ => DefaultStatusMapper::map(status),
    };
    let app = Faultline::new(contract()).status_mapper(mapper).install(
        Router::new()
            .route("/pay", bare(402))
            .route("/conflict", bare(409))
            .route("/missing", bare(401)),
    );
    let (status, headers, body) = get_from(&app, "/pay").await;
    assert_eq!(
        (status.as_u16(), &body["error"]),
        (429, &"quota_exceeded".into())
    );
    assert_eq!(headers[header::RETRY_AFTER], "1");
    let (_, _, body) = get_from(&app, "/conflict").await;
    assert_eq!(body["error"], "internal_error");
    let (_, _, body) = get_from(&app, "/missing").await;
    assert_eq!(body["error"], "missing_api_key");
}

#[tokio::test]
async fn a_bare_403_falls_back_to_the_scope_refusal_when_forbidden_is_unbound() {
    let source = CHATBOTS.replace("forbidden = \"forbidden\"\n", "");
    let catalog = Catalog::from_toml_str(&source).unwrap();
    assert!(catalog.bound(Situation::Forbidden).is_none());
    let app = Faultline::new(Contract::new(catalog).unwrap())
        .install(Router::new().route("/no", bare(403)));
    let (status, _, body) = get_from(&app, "/no").await;
    assert_eq!(
        (status.as_u16(), &body["error"]),
        (403, &"insufficient_scope".into())
    );
}

fn hand_built() -> axum::routing::MethodRouter {
    get(|| async {
        (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"oops":"made by hand"}"#,
        )
    })
}

#[tokio::test]
async fn hand_built_error_json_passes_with_one_warning_per_route() {
    let app = Faultline::new(contract()).install(
        Router::new()
            .route("/items/{id}", hand_built())
            .route("/other", hand_built()),
    );
    let logs = Logs::default();
    let _guard = logs.capture();
    for path in ["/items/1", "/items/2", "/items/3"] {
        let (status, headers, body) = get_from(&app, path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["oops"], "made by hand");
        assert!(headers.contains_key("x-request-id"));
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
    let warnings = logs.at(Level::WARN);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("route=\"/items/{id}\""),
        "{warnings:?}"
    );
    get_from(&app, "/other").await;
    assert_eq!(logs.at(Level::WARN).len(), 2);
}

#[tokio::test]
async fn strict_mode_refuses_hand_built_error_json() {
    for app in [
        Faultline::new(contract()).strict(true),
        Faultline::new(contract().strict(true)),
    ] {
        let app = app.install(Router::new().route("/oops", hand_built()));
        let (status, _, body) = get_from(&app, "/oops").await;
        assert_eq!(
            (status.as_u16(), &body["error"]),
            (500, &"internal_error".into())
        );
    }
}

#[tokio::test]
async fn a_response_from_the_renderer_is_never_taken_for_hand_built_json() {
    let rendering = Arc::new(contract());
    let app = Faultline::new(contract())
        .strict(true)
        .install(Router::new().route(
            "/rendered",
            get(move || {
                let rendering = Arc::clone(&rendering);
                async move {
                    let id = RequestId::generate("req_");
                    let error = rendering.bound(Situation::Conflict);
                    rendering.render(&error, &id, "/rendered").into_response()
                }
            }),
        ));
    let logs = Logs::default();
    let _guard = logs.capture();
    let (status, _, body) = get_from(&app, "/rendered").await;
    assert_eq!((status.as_u16(), &body["error"]), (409, &"conflict".into()));
    assert!(logs.at(Level::WARN).is_empty());
}

#[tokio::test]
async fn the_routes_remembered_for_reports_are_bounded() {
    let max = faultline_axum::layer::MAX_REPORTED_ROUTES;
    let mut router = Router::new();
    for i in 0..=max {
        router = router.route(&format!("/r{i}"), hand_built());
    }
    let app = Faultline::new(contract()).install(router);
    let logs = Logs::default();
    let _guard = logs.capture();
    for i in 0..=max {
        get_from(&app, &format!("/r{i}")).await;
    }
    assert_eq!(logs.at(Level::WARN).len(), max);
}
