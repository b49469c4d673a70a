//! The idempotency layer on the in-memory store: one execution per key, byte-identical
//! replays, conflicts, waits, releases on every kind of failure, and background pruning.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose when a fixture is broken
#![cfg(all(feature = "idempotency", feature = "auth"))]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use faultline::Catalog;
use faultline::clock::{Clock, ManualClock};
use faultline_axum::auth::Principal;
use faultline_axum::idempotency::{
    IdempotencyClaim, IdempotencyLayer, IdempotencyStore, MemoryIdempotencyStore,
};
use faultline_axum::store::StoreFuture;
use faultline_axum::{Contract, Error, Faultline, StoreError};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::Notify;
use tower::ServiceExt;

/// What the handlers count and wait on.
#[derive(Clone, Default)]
struct Probe {
    runs: Arc<AtomicUsize>,
    entered: Arc<Notify>,
    proceed: Arc<Notify>,
}

impl Probe {
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

fn contract() -> Contract {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    Contract::new(Catalog::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap()).unwrap()
}

/// Creates a thing: counts the run, echoes the body with a fresh number.
async fn create(State(probe): State<Probe>, body: Bytes) -> Response {
    let n = probe.runs.fetch_add(1, Ordering::SeqCst) + 1;
    let json = format!(
        r#"{{"run":{n},"body":{}}}"#,
        serde_json::to_string(&String::from_utf8_lossy(&body)).unwrap()
    );
    (
        StatusCode::CREATED,
        [
            ("content-type", "application/json"),
            ("location", "/v1/things/th_1"),
            ("x-not-kept", "dropped"),
        ],
        json,
    )
        .into_response()
}

/// Fails with a 500 on its first run, then creates.
async fn flaky(State(probe): State<Probe>, body: Bytes) -> Result<Response, Error> {
    if probe.runs.load(Ordering::SeqCst) == 0 {
        probe.runs.fetch_add(1, Ordering::SeqCst);
        return Err(Error::internal(std::io::Error::other("disk full")));
    }
    Ok(create(State(probe), body).await)
}

/// Panics on its first run, then creates.
async fn panicky(State(probe): State<Probe>, body: Bytes) -> Response {
    if probe.runs.fetch_add(1, Ordering::SeqCst) == 0 {
        panic!("first run");
    }
    probe.runs.fetch_sub(1, Ordering::SeqCst);
    create(State(probe), body).await
}

/// Waits to be told to proceed (after saying it entered), then creates.
async fn gated(State(probe): State<Probe>, body: Bytes) -> Response {
    probe.entered.notify_one();
    probe.proceed.notified().await;
    create(State(probe), body).await
}

/// Sleeps a minute on its first run (past the deadline), then creates.
async fn slow_once(State(probe): State<Probe>, body: Bytes) -> Response {
    if probe.runs.fetch_add(1, Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    probe.runs.fetch_sub(1, Ordering::SeqCst);
    create(State(probe), body).await
}

/// Answers a 404 from the catalog, counting the run.
async fn missing(State(probe): State<Probe>) -> Error {
    probe.runs.fetch_add(1, Ordering::SeqCst);
    Error::bound(faultline::Situation::ResourceNotFound)
}

/// Completes the record itself (as a handler does inside its transaction), with a body the
/// layer would not have produced.
async fn self_completing(
    State((probe, store)): State<(Probe, Arc<MemoryIdempotencyStore>)>,
    claim: Option<IdempotencyClaim>,
) -> Response {
    probe.runs.fetch_add(1, Ordering::SeqCst);
    let claim = claim.expect("a keyed request has a claim");
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("x-not-kept", "dropped".parse().unwrap());
    let record = claim.response(StatusCode::ACCEPTED, &headers, r#"{"by":"handler"}"#);
    assert_eq!(record.headers.len(), 1, "only kept headers are recorded");
    assert!(
        store
            .complete(
                claim.token(),
                &record,
                claim.now_millis(),
                claim.retention()
            )
            .await
            .unwrap()
    );
    claim.completed();
    record.into_response()
}

/// Turns an `x-org` header into a principal of that organisation, as auth would.
async fn fake_auth(mut request: Request<Body>, next: Next) -> Response {
    if let Some(org) = request.headers().get("x-org").and_then(|v| v.to_str().ok()) {
        let principal = Principal::new(org, "key_1", Vec::new());
        request.extensions_mut().insert(principal);
    }
    next.run(request).await
}

struct App {
    router: Router,
    probe: Probe,
    store: Arc<MemoryIdempotencyStore>,
    clock: ManualClock,
}

fn app() -> App {
    app_with(|layer| layer)
}

fn app_with(configure: impl Fn(IdempotencyLayer) -> IdempotencyLayer) -> App {
    let probe = Probe::default();
    let store = Arc::new(MemoryIdempotencyStore::new());
    let clock = ManualClock::at(1_900_000_000);
    let faultline = Faultline::new(contract()).timeout(Duration::from_secs(5));
    let layer = configure(
        IdempotencyLayer::new(store.clone(), Arc::clone(faultline.contract()))
            .clock(Arc::new(clock.clone())),
    );
    let required = layer.clone().require_key(true);
    let keyed = Router::new()
        .route("/v1/things", post(create).patch(create).put(create))
        .route("/v1/flaky", post(flaky))
        .route("/v1/panicky", post(panicky))
        .route("/v1/gated", post(gated))
        .route("/v1/slow", post(slow_once))
        .route("/v1/missing", post(missing))
        .route_layer(layer.clone())
        .route("/v1/required", post(create).route_layer(required))
        .with_state(probe.clone());
    let own = Router::new()
        .route("/v1/own", post(self_completing))
        .route_layer(layer)
        .with_state((probe.clone(), store.clone()));
    let router = keyed.merge(own).route_layer(middleware::from_fn(fake_auth));
    App {
        router: faultline.install(router),
        probe,
        store,
        clock,
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

fn request(method: Method, path: &str, key: Option<&[u8]>, org: &str, body: &str) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .header("x-org", org);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.body(Body::from(body.to_owned())).unwrap()
}

async fn send(router: &Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn post_key(router: &Router, path: &str, key: &str, org: &str, body: &str) -> Answer {
    send(
        router,
        request(Method::POST, path, Some(key.as_bytes()), org, body),
    )
    .await
}

/// Lets tasks spawned by the layer (a release after a drop) run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_replay_is_the_first_answer_byte_for_byte_under_a_new_request_id() {
    let app = app();
    let first = post_key(&app.router, "/v1/things", "k-1", "org_a", r#"{"n":1}"#).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.header("idempotent-replayed"), None);
    let second = post_key(&app.router, "/v1/things", "k-1", "org_a", r#"{"n":1}"#).await;
    assert_eq!(app.probe.runs(), 1, "the handler ran once");
    assert_eq!(second.status, 201);
    assert_eq!(second.body, first.body, "byte for byte");
    assert_eq!(second.header("location"), Some("/v1/things/th_1"));
    assert_eq!(second.header("content-type"), Some("application/json"));
    assert_eq!(
        second.header("x-not-kept"),
        None,
        "only chosen headers are kept"
    );
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.header("x-content-type-options"), Some("nosniff"));
    let (a, b) = (first.header("x-request-id"), second.header("x-request-id"));
    assert!(a.is_some() && b.is_some());
    assert_ne!(a, b, "the replay has its own request id");
    // The quoted form of the same key is the same key.
    let quoted = post_key(&app.router, "/v1/things", "\"k-1\"", "org_a", r#"{"n":1}"#).await;
    assert_eq!((quoted.status, quoted.body), (201, first.body));
    assert_eq!(app.probe.runs(), 1);
}

#[tokio::test]
async fn the_same_key_for_another_request_is_a_conflict_that_says_what_differs() {
    let app = app();
    let first = post_key(&app.router, "/v1/things", "k", "org_a", r#"{"n":1}"#).await;
    assert_eq!(first.status, 201);
    let cases = [
        (Method::POST, "/v1/things", r#"{"n":2}"#, "body"),
        (Method::PATCH, "/v1/things", r#"{"n":1}"#, "request"),
        (
            Method::POST,
            "/v1/things?dry_run=1",
            r#"{"n":1}"#,
            "request",
        ),
        (Method::PATCH, "/v1/things", r#"{"n":2}"#, "both"),
    ];
    for (method, path, body, differs) in cases {
        let answer = send(
            &app.router,
            request(method, path, Some(b"k"), "org_a", body),
        )
        .await;
        assert_eq!(answer.status, 409, "{differs}");
        let json = answer.json();
        assert_eq!(json["error"], "idempotency_conflict", "{json}");
        assert_eq!(json["details"]["differs"], differs, "{json}");
        let text = String::from_utf8_lossy(&answer.body);
        assert!(!text.contains("run"), "never the stored body: {text}");
    }
    assert_eq!(app.probe.runs(), 1);
}

#[tokio::test]
async fn another_org_with_the_same_key_is_independent() {
    let app = app();
    let a = post_key(&app.router, "/v1/things", "shared", "org_a", "{}").await;
    let b = post_key(
        &app.router,
        "/v1/things",
        "shared",
        "org_b",
        r#"{"other":1}"#,
    )
    .await;
    assert_eq!((a.status, b.status), (201, 201));
    assert_eq!(app.probe.runs(), 2);
    assert_ne!(a.body, b.body);
    let again = post_key(
        &app.router,
        "/v1/things",
        "shared",
        "org_b",
        r#"{"other":1}"#,
    )
    .await;
    assert_eq!(again.body, b.body);
    assert_eq!(app.probe.runs(), 2);
}

#[tokio::test]
async fn malformed_keys_are_invalid_with_a_reason() {
    let app = app();
    let long = "k".repeat(256);
    let malformed: [&[u8]; 6] = [
        b"",
        long.as_bytes(),
        b"a\tb",
        "cl\u{e9}".as_bytes(),
        b"\"unbalanced",
        b"two words",
    ];
    for key in malformed {
        let answer = send(
            &app.router,
            request(Method::POST, "/v1/things", Some(key), "org_a", "{}"),
        )
        .await;
        assert_eq!(answer.status, 400, "{:?}", String::from_utf8_lossy(key));
        let json = answer.json();
        assert_eq!(json["error"], "invalid_idempotency_key", "{json}");
        assert!(
            json["details"]["reason"].as_str().unwrap().len() > 5,
            "{json}"
        );
    }
    // Two headers are refused too.
    let mut twice = request(Method::POST, "/v1/things", Some(b"a"), "org_a", "{}");
    twice
        .headers_mut()
        .append("idempotency-key", "b".parse().unwrap());
    let answer = send(&app.router, twice).await;
    assert_eq!(answer.status, 400);
    assert_eq!(app.probe.runs(), 0, "no malformed key reaches the handler");
    // The longest key is fine.
    let longest = "k".repeat(255);
    let ok = post_key(&app.router, "/v1/things", &longest, "org_a", "{}").await;
    assert_eq!(ok.status, 201);
}

#[tokio::test]
async fn keys_are_optional_unless_required_and_only_for_the_chosen_methods() {
    let app = app();
    for _ in 0..2 {
        let answer = send(
            &app.router,
            request(Method::POST, "/v1/things", None, "org_a", "{}"),
        )
        .await;
        assert_eq!(answer.status, 201);
    }
    assert_eq!(app.probe.runs(), 2, "without a key, every request runs");
    let missing = send(
        &app.router,
        request(Method::POST, "/v1/required", None, "org_a", "{}"),
    )
    .await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json()["error"], "invalid_idempotency_key");
    // PUT is not among the default methods: the key is ignored.
    for _ in 0..2 {
        let put = send(
            &app.router,
            request(Method::PUT, "/v1/things", Some(b"p"), "org_a", "{}"),
        )
        .await;
        assert_eq!(put.status, 201);
    }
    assert_eq!(app.probe.runs(), 4);
    // A layer told to honour PUT does.
    let app = app_with(|layer| layer.methods([Method::PUT]));
    for _ in 0..2 {
        let put = send(
            &app.router,
            request(Method::PUT, "/v1/things", Some(b"p"), "org_a", "{}"),
        )
        .await;
        assert_eq!(put.status, 201);
    }
    assert_eq!(app.probe.runs(), 1);
}

#[tokio::test]
async fn a_request_still_running_makes_the_duplicate_wait() {
    let app = app();
    let router = app.router.clone();
    let first =
        tokio::spawn(async move { post_key(&router, "/v1/gated", "g", "org_a", "{}").await });
    app.probe.entered.notified().await;
    app.clock.advance_secs(15);
    let duplicate = post_key(&app.router, "/v1/gated", "g", "org_a", "{}").await;
    assert_eq!(duplicate.status, 409);
    assert_eq!(duplicate.json()["error"], "idempotency_in_progress");
    assert_eq!(
        duplicate.header("retry-after"),
        Some("45"),
        "the lease's remaining time"
    );
    app.probe.proceed.notify_one();
    let first = first.await.unwrap();
    assert_eq!(first.status, 201);
    let replay = post_key(&app.router, "/v1/gated", "g", "org_a", "{}").await;
    assert_eq!(replay.body, first.body);
    assert_eq!(app.probe.runs(), 1);
}

#[tokio::test]
async fn a_500_releases_the_key_and_the_retry_runs() {
    let app = app();
    let failed = post_key(&app.router, "/v1/flaky", "f", "org_a", "{}").await;
    assert_eq!(failed.status, 500);
    assert_eq!(failed.json()["error"], "internal_error");
    let retried = post_key(&app.router, "/v1/flaky", "f", "org_a", "{}").await;
    assert_eq!(retried.status, 201);
    assert_eq!(retried.json()["run"], 2, "the handler ran again");
    let replay = post_key(&app.router, "/v1/flaky", "f", "org_a", "{}").await;
    assert_eq!(replay.body, retried.body);
}

#[tokio::test]
async fn a_panic_releases_the_key_and_the_retry_runs() {
    let app = app();
    let failed = post_key(&app.router, "/v1/panicky", "p", "org_a", "{}").await;
    assert_eq!(failed.status, 500);
    settle().await;
    let retried = post_key(&app.router, "/v1/panicky", "p", "org_a", "{}").await;
    assert_eq!(retried.status, 201, "{:?}", retried.json());
}

#[tokio::test(start_paused = true)]
async fn a_timeout_releases_the_key_and_the_retry_runs() {
    let app = app();
    let timed_out = post_key(&app.router, "/v1/slow", "t", "org_a", "{}").await;
    assert_eq!(timed_out.json()["error"], "request_timeout");
    settle().await;
    let retried = post_key(&app.router, "/v1/slow", "t", "org_a", "{}").await;
    assert_eq!(retried.status, 201, "{:?}", retried.json());
}

#[tokio::test]
async fn a_dropped_connection_releases_the_key_and_the_retry_runs() {
    let app = app();
    let router = app.router.clone();
    let first =
        tokio::spawn(async move { post_key(&router, "/v1/gated", "d", "org_a", "{}").await });
    app.probe.entered.notified().await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    settle().await;
    let router = app.router.clone();
    let mut retry =
        tokio::spawn(async move { post_key(&router, "/v1/gated", "d", "org_a", "{}").await });
    tokio::select! {
        () = app.probe.entered.notified() => app.probe.proceed.notify_one(),
        answer = &mut retry => panic!("the retry did not run: {answer:?}"),
    }
    assert_eq!(retry.await.unwrap().status, 201);
}

#[tokio::test]
async fn a_4xx_answer_is_kept_and_replayed() {
    let app = app();
    let first = post_key(&app.router, "/v1/missing", "m", "org_a", "{}").await;
    assert_eq!(first.status, 404);
    let second = post_key(&app.router, "/v1/missing", "m", "org_a", "{}").await;
    assert_eq!(second.status, 404);
    assert_eq!(
        second.body, first.body,
        "the first request id stays in the body"
    );
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.probe.runs(), 1);
}

#[tokio::test]
async fn a_body_over_the_limit_is_payload_too_large() {
    let app = app_with(|layer| layer.body_limit(16));
    let answer = post_key(&app.router, "/v1/things", "big", "org_a", &"x".repeat(17)).await;
    assert_eq!(answer.status, 413);
    let json = answer.json();
    assert_eq!(json["error"], "payload_too_large");
    assert_eq!(json["details"]["max_bytes"], 16);
    assert_eq!(app.probe.runs(), 0);
}

#[tokio::test]
async fn a_handler_that_completes_the_record_itself_is_not_overwritten() {
    let app = app();
    let first = post_key(&app.router, "/v1/own", "o", "org_a", "{}").await;
    assert_eq!(first.status, 202);
    let replay = post_key(&app.router, "/v1/own", "o", "org_a", "{}").await;
    assert_eq!(
        (replay.status, &replay.body[..]),
        (202, &br#"{"by":"handler"}"#[..])
    );
    assert_eq!(replay.header("x-not-kept"), None);
    assert_eq!(app.probe.runs(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_duplicates_run_the_handler_once() {
    let app = app();
    let start = Arc::new(tokio::sync::Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (router, start) = (app.router.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                post_key(&router, "/v1/things", "storm", "org_a", r#"{"n":1}"#).await
            })
        })
        .collect();
    let (mut created, mut waiting) = (Vec::new(), 0);
    for task in tasks {
        let answer = task.await.unwrap();
        match answer.status {
            201 => created.push(answer.body),
            409 => {
                assert_eq!(answer.json()["error"], "idempotency_in_progress");
                waiting += 1;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(app.probe.runs(), 1, "exactly one execution");
    assert_eq!(created.len() + waiting, 200);
    assert!(
        created.windows(2).all(|w| w[0] == w[1]),
        "every 201 is the same answer"
    );
}

#[tokio::test(start_paused = true)]
async fn ended_records_are_pruned_in_the_background() {
    let app = app_with(|layer| layer.retention(Duration::from_secs(3600)));
    for key in ["a", "b", "c"] {
        assert_eq!(
            post_key(&app.router, "/v1/things", key, "org_a", "{}")
                .await
                .status,
            201
        );
    }
    let layer = IdempotencyLayer::new(app.store.clone(), Arc::new(contract()))
        .clock(Arc::new(app.clock.clone()));
    let pruner = layer.spawn_pruning(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(app.store.len(), 3, "nothing ended yet");
    app.clock.advance_secs(3600);
    tokio::time::sleep(Duration::from_secs(10)).await;
    settle().await;
    assert!(app.store.is_empty(), "ended records were pruned");
    pruner.abort();
    // A key whose record ended runs again.
    assert_eq!(
        post_key(&app.router, "/v1/things", "a", "org_a", "{}")
            .await
            .status,
        201
    );
    assert_eq!(app.probe.runs(), 4);
}

/// A store that is always unreachable.
struct Down;

impl IdempotencyStore for Down {
    fn claim<'a>(
        &'a self,
        _: &'a faultline_axum::idempotency::ClaimRequest,
    ) -> StoreFuture<'a, faultline_axum::idempotency::ClaimOutcome> {
        Box::pin(async { Err(StoreError::unavailable(std::io::Error::other("down"))) })
    }
    fn complete<'a>(
        &'a self,
        _: &'a faultline_axum::idempotency::ClaimToken,
        _: &'a faultline_axum::idempotency::StoredResponse,
        _: i64,
        _: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async { Err(StoreError::unavailable(std::io::Error::other("down"))) })
    }
    fn release<'a>(
        &'a self,
        _: &'a faultline_axum::idempotency::ClaimToken,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async { Err(StoreError::unavailable(std::io::Error::other("down"))) })
    }
    fn prune(&self, _: i64, _: usize) -> StoreFuture<'_, u64> {
        Box::pin(async { Err(StoreError::unavailable(std::io::Error::other("down"))) })
    }
}

#[tokio::test]
async fn an_unreachable_store_is_a_503_and_the_handler_does_not_run() {
    let faultline = Faultline::new(contract());
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let router = Router::new()
        .route(
            "/v1/things",
            post(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::CREATED }
            }),
        )
        .route_layer(IdempotencyLayer::new(
            Arc::new(Down),
            Arc::clone(faultline.contract()),
        ));
    let router = faultline.install(router);
    let answer = post_key(&router, "/v1/things", "k", "org_a", "{}").await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.json()["error"], "service_unavailable");
    assert!(answer.header("retry-after").is_some());
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let _ = ManualClock::at(0).now();
}
