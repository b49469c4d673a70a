//! Panics, timeouts and unexpected errors become catalog errors that reveal nothing.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose when a fixture is broken

mod common;
use common::logs::Logs;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use faultline::{Catalog, Situation};
use faultline_axum::{Contract, Error, Faultline};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;
use tracing::Level;

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

/// A failure with a cause of its own, to check that the whole chain is logged.
#[derive(Debug)]
struct QueryFailed(std::io::Error);

impl std::fmt::Display for QueryFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("listing bots failed")
    }
}

impl std::error::Error for QueryFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn contract() -> Contract {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    Contract::new(Catalog::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap()).unwrap()
}

async fn answer(app: Router, path: &str) -> (u16, axum::http::HeaderMap, Value) {
    let response = app
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status.as_u16(), parts.headers, body)
}

#[tokio::test]
async fn the_cause_chain_of_an_internal_error_reaches_the_log_line() {
    let app = Faultline::new(contract()).install(Router::new().route(
        "/bots",
        get(|| async {
            Err::<(), _>(Error::internal(QueryFailed(std::io::Error::other(
                "connection reset",
            ))))
        }),
    ));
    let logs = Logs::default();
    let _guard = logs.capture();
    let (status, _, body) = answer(app, "/bots").await;
    assert_eq!((status, &body["error"]), (500, &"internal_error".into()));
    assert!(!body.to_string().contains("reset"));
    let errors = logs.at(Level::ERROR);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("listing bots failed: connection reset"),
        "{errors:?}"
    );
}

#[tokio::test]
async fn the_source_of_an_api_error_reaches_the_log_line() {
    let raising = Arc::new(contract());
    let app = Faultline::new(contract()).install(Router::new().route(
        "/bots",
        get(move || {
            let raising = Arc::clone(&raising);
            async move {
                let api = raising
                    .bound(Situation::ServiceUnavailable)
                    .with_source(std::io::Error::other("pool exhausted"));
                Err::<(), _>(Error::from(api))
            }
        }),
    ));
    let logs = Logs::default();
    let _guard = logs.capture();
    let (status, headers, body) = answer(app, "/bots").await;
    assert_eq!(
        (status, &body["error"]),
        (503, &"service_unavailable".into())
    );
    assert_eq!(headers["retry-after"], "1");
    let errors = logs.at(Level::ERROR);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("pool exhausted"), "{errors:?}");
    assert!(
        errors[0].contains("code=\"service_unavailable\""),
        "{errors:?}"
    );
}

#[test]
fn error_is_a_std_error_whose_text_names_only_the_code() {
    use std::error::Error as _;
    let internal = Error::internal(QueryFailed(std::io::Error::other("secret=1")));
    assert_eq!(internal.to_string(), "internal error");
    let source = internal.source().unwrap();
    assert_eq!(source.to_string(), "listing bots failed");
    assert_eq!(source.source().unwrap().to_string(), "secret=1");
    assert_eq!(
        Error::bound(Situation::Conflict).to_string(),
        "situation conflict"
    );
    assert!(Error::bound(Situation::Conflict).source().is_none());
    let api = contract().bound(Situation::Conflict);
    let error = Error::from(api.with_source(std::io::Error::other("row locked")));
    assert!(error.to_string().starts_with("conflict (409)"));
    assert_eq!(error.source().unwrap().to_string(), "row locked");
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(error);
    assert!(boxed.source().is_some());
}

#[tokio::test]
async fn details_and_headers_apply_to_every_kind_of_error() {
    let raising = Arc::new(contract());
    let app = Faultline::new(contract()).install(
        Router::new()
            .route(
                "/api",
                get(move || {
                    let raising = Arc::clone(&raising);
                    async move {
                        let api = raising.bound(Situation::Conflict);
                        Err::<(), _>(
                            Error::from(api)
                                .with_details(json!({"resource": "bot"}))
                                .with_header("X-Conflict-With", "bot_1"),
                        )
                    }
                }),
            )
            .route(
                "/internal",
                get(|| async {
                    Err::<(), _>(
                        Error::internal(std::io::Error::other("disk full"))
                            .with_details(json!({"retryable": true}))
                            .with_header("Retry-After", "5"),
                    )
                }),
            )
            .route(
                "/bound",
                get(|| async {
                    Err::<(), _>(
                        Error::bound(Situation::Conflict)
                            .with_header("X-Conflict-With", "a")
                            .with_header("x-conflict-with", "b"),
                    )
                }),
            ),
    );
    let (status, headers, body) = answer(app.clone(), "/api").await;
    assert_eq!((status, &body["error"]), (409, &"conflict".into()));
    assert_eq!(body["details"], json!({"resource": "bot"}));
    assert_eq!(headers["x-conflict-with"], "bot_1");
    let (status, headers, body) = answer(app.clone(), "/internal").await;
    assert_eq!((status, &body["error"]), (500, &"internal_error".into()));
    assert_eq!(body["details"], json!({"retryable": true}));
    assert_eq!(headers["retry-after"], "5");
    assert!(!body.to_string().contains("disk"));
    let (_, headers, _) = answer(app, "/bound").await;
    let values: Vec<_> = headers.get_all("x-conflict-with").iter().collect();
    assert_eq!(values, ["b"]);
}

#[tokio::test]
async fn every_answer_says_nosniff() {
    let app = Faultline::new(contract()).install(
        Router::new()
            .route("/ok", get(|| async { "fine" }))
            .route("/panic", get(panicking))
            .route(
                "/details",
                get(|| async {
                    Err::<(), _>(Error::bound(Situation::Conflict).with_details(json!({"a": 1})))
                }),
            )
            .route(
                "/teapot",
                get(|| async { axum::http::StatusCode::IM_A_TEAPOT }),
            ),
    );
    for path in ["/ok", "/nope", "/details", "/teapot", "/panic"] {
        let (_, headers, _) = answer(app.clone(), path).await;
        let values: Vec<_> = headers.get_all("x-content-type-options").iter().collect();
        assert_eq!(values, ["nosniff"], "{path}");
    }
    let contract = contract();
    let mut headers = axum::http::HeaderMap::new();
    let id = faultline_axum::RequestId::generate("req_");
    contract.render_into(&contract.bound(Situation::Timeout), &id, "/", &mut headers);
    assert_eq!(headers["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn an_oversized_error_body_is_sent_without_its_details() {
    let app = Faultline::new(contract()).install(Router::new().route(
        "/big",
        get(|| async {
            let huge = "x".repeat(faultline_axum::contract::MAX_ERROR_BODY);
            Err::<(), _>(Error::bound(Situation::Conflict).with_details(json!({ "note": huge })))
        }),
    ));
    let logs = Logs::default();
    let _guard = logs.capture();
    let response = app
        .oneshot(Request::get("/big").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert!(bytes.len() <= faultline_axum::contract::MAX_ERROR_BODY);
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(body["error"], "conflict");
    assert_eq!(body["request_id"], id.as_str());
    assert!(body["message"].is_string());
    assert!(body.get("details").is_none_or(Value::is_null), "{body}");
    let warnings = logs.at(Level::WARN);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("too large"), "{warnings:?}");
}

#[tokio::test]
async fn the_one_layer_keeps_every_guarantee_of_the_stack() {
    let app = Faultline::new(contract())
        .body_limit(16)
        .install(Router::new().route("/bots", get(|| async { "[]" })).route(
            "/echo",
            axum::routing::post(|body: String| async move { body }),
        ))
        .with_state(());
    let send = |request: Request<Body>| {
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            (parts.status.as_u16(), parts.headers, body)
        }
    };
    let (status, headers, body) = send(Request::get("/nope").body(Body::empty()).unwrap()).await;
    assert_eq!((status, &body["error"]), (404, &"not_found".into()));
    assert_eq!(
        body["request_id"],
        headers["x-request-id"].to_str().unwrap()
    );
    let (status, headers, body) = send(Request::delete("/bots").body(Body::empty()).unwrap()).await;
    assert_eq!(
        (status, &body["error"]),
        (405, &"method_not_allowed".into())
    );
    assert!(headers["allow"].to_str().unwrap().contains("GET"));
    let (status, _, body) = send(
        Request::post("/echo")
            .header("content-length", "40")
            .body(Body::from("x".repeat(40)))
            .unwrap(),
    )
    .await;
    assert_eq!((status, &body["error"]), (413, &"payload_too_large".into()));
    assert_eq!(body["details"], json!({"size_bytes": 40, "max_bytes": 16}));
    let (status, headers, _) = send(
        Request::get("/bots")
            .header("x-request-id", "client-1")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-request-id"], "client-1");
}

#[tokio::test]
async fn a_panic_while_calling_a_service_is_an_internal_error() {
    type Answer = std::future::Ready<Result<axum::response::Response, std::convert::Infallible>>;
    let exploding =
        tower::service_fn(|_: Request<Body>| -> Answer { panic!("secret in a synchronous call") });
    // Behind a router, axum calls a route's service from within a poll; wrapped directly, the
    // layer's own `call` is where it panics.
    let layer = Faultline::new(contract()).into_layer();
    for response in [
        tower::Layer::layer(&layer, exploding)
            .oneshot(Request::get("/sync").body(Body::empty()).unwrap())
            .await
            .unwrap(),
        Faultline::new(contract())
            .install(Router::new().route_service("/sync", exploding))
            .oneshot(Request::get("/sync").body(Body::empty()).unwrap())
            .await
            .unwrap(),
    ] {
        let id = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(response.status(), 500);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            (&body["error"], &body["request_id"]),
            (&"internal_error".into(), &id.into())
        );
        assert!(!body.to_string().contains("secret"));
    }
}

#[tokio::test(start_paused = true)]
async fn the_deadline_is_the_configured_timeout_on_the_paused_clock() {
    let app = Faultline::new(contract())
        .timeout(Duration::from_millis(100))
        .install(Router::new().route(
            "/sleep/{ms}",
            get(
                |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    "done"
                },
            ),
        ));
    let (status, _, _) = answer(app.clone(), "/sleep/99").await;
    assert_eq!(status, 200);
    let (status, _, body) = answer(app, "/sleep/101").await;
    assert_eq!((status, &body["error"]), (504, &"request_timeout".into()));
}

#[tokio::test]
async fn problem_json_bodies_still_name_the_path_the_layer_keeps_only_for_them() {
    let problem = contract().with_profile(faultline::Profile::Problem);
    assert!(problem.needs_path());
    assert!(!contract().needs_path());
    let app = Faultline::new(problem).install(Router::new().route("/bots", get(|| async { "[]" })));
    let (status, _, body) = answer(app.clone(), "/v1/nope?x=1").await;
    assert_eq!((status, &body["instance"]), (404, &"/v1/nope".into()));
    let (status, _, body) = answer(app, "/bots/7").await;
    assert_eq!((status, &body["code"]), (404, &"not_found".into()));
}

/// A runtime without a time driver: registering a timer on it panics.
fn runtime_without_timers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

fn immediate_and_pending() -> Router {
    Faultline::new(contract()).install(Router::new().route("/now", get(|| async { "[]" })).route(
        "/later",
        get(|| async {
            tokio::task::yield_now().await;
            "[]"
        }),
    ))
}

#[test]
fn an_answer_given_at_once_registers_no_timer() {
    let runtime = runtime_without_timers();
    let app = immediate_and_pending();
    for (path, status) in [("/now", 200), ("/v1/nope", 404), ("/now", 200)] {
        let (got, headers, _) = runtime.block_on(answer(app.clone(), path));
        assert_eq!(got, status, "{path}");
        assert!(headers.contains_key("x-request-id"));
    }
}

#[test]
fn a_handler_still_pending_after_its_first_poll_gets_the_deadline() {
    // The converse, on the same runtime: the pending handler makes the layer start its
    // deadline, which this runtime refuses (with the timer driver, the paused-clock tests
    // show that deadline firing).
    let runtime = runtime_without_timers();
    let app = immediate_and_pending();
    let armed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(answer(app, "/later"))
    }));
    let panic = armed.expect_err("a deadline was started");
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    assert!(message.contains("timers are disabled"), "{message}");
}

#[tokio::test(start_paused = true)]
async fn a_handler_pending_past_the_deadline_gets_the_timeout_code_at_the_deadline() {
    let started = tokio::time::Instant::now();
    let (status, body, _) = get_json(app(), "/slow").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (504, Some("request_timeout"))
    );
    // The paused clock moves only to timers: the answer came at the 100 ms deadline, not at
    // the handler's 60 s.
    assert_eq!(started.elapsed(), Duration::from_millis(100));
}

/// The names and fields of the spans opened while the guard lives.
#[derive(Clone, Default)]
struct Spans(Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Text<'a>(&'a mut String);
        impl tracing::field::Visit for Text<'_> {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write as _;
                write!(self.0, " {}={value:?}", field.name()).unwrap();
            }
        }
        let mut text = format!("{} {}", attrs.metadata().level(), attrs.metadata().name());
        attrs.record(&mut Text(&mut text));
        self.0.lock().unwrap().push(text);
    }
}

#[tokio::test]
async fn the_request_span_is_opened_at_debug_only() {
    use tracing_subscriber::layer::SubscriberExt;
    for (level, opened) in [(Level::DEBUG, true), (Level::INFO, false)] {
        let spans = Spans::default();
        let subscriber = tracing_subscriber::registry()
            .with(spans.clone())
            .with(tracing_subscriber::filter::LevelFilter::from_level(level));
        let _guard = tracing::subscriber::set_default(subscriber);
        let (status, headers, _) = answer(immediate_and_pending(), "/now").await;
        assert_eq!(status, 200);
        let id = headers["x-request-id"].to_str().unwrap();
        let spans = spans.0.lock().unwrap().clone();
        let request: Vec<_> = spans.iter().filter(|s| s.contains(" request ")).collect();
        if opened {
            assert_eq!(request.len(), 1, "{spans:?}");
            assert!(request[0].starts_with("DEBUG request"), "{spans:?}");
            assert!(
                request[0].contains(&format!("request_id={id}")),
                "{spans:?}"
            );
            assert!(request[0].contains("path=/now"), "{spans:?}");
        } else {
            assert!(request.is_empty(), "{spans:?}");
        }
    }
}

#[test]
fn one_anchor_timer_runs_once_a_deadline_was_needed() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let alive = || runtime.metrics().num_alive_tasks();
    let app = immediate_and_pending();
    let (status, _, _) = runtime.block_on(answer(app.clone(), "/now"));
    assert_eq!((status, alive()), (200, 0), "no deadline, no anchor");
    for _ in 0..3 {
        let (status, _, _) = runtime.block_on(answer(app.clone(), "/later"));
        assert_eq!((status, alive()), (200, 1), "one anchor for the layer");
    }
}
