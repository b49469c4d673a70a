//! The schema check through a router: what schemars emits is checked, and a schema with a rule
//! the checker cannot honour is refused at start-up and fails closed at request time.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose when a fixture is broken
#![allow(dead_code)] // the request types are only read through their schemas

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::{get, post};
use faultline_axum::{Contract, Faultline, Json, Query, ensure_supported};
use http_body_util::BodyExt;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "kind")]
enum Internal {
    A { x: u8 },
    B,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
enum Untagged {
    A(u8),
    B(String),
}

#[derive(Debug, Deserialize, JsonSchema)]
enum External {
    A,
    B(u8),
    C { y: i64 },
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(tag = "t", content = "c")]
enum Adjacent {
    A(u8),
    B,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct Inner {
    z: f32,
}

/// Most of what schemars emits for common field types and attributes.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Everything {
    /// A documented optional id.
    id: Option<uuid::Uuid>,
    #[schemars(range(min = 1, max = 100))]
    limit: Option<u32>,
    counts: HashMap<String, u8>,
    tags: HashSet<String>,
    pair: (u8, String),
    non_zero: std::num::NonZeroI32,
    internal: Internal,
    untagged: Untagged,
    external: External,
    adjacent: Adjacent,
    inner: Option<Inner>,
    by_number: BTreeMap<u32, bool>,
    #[schemars(length(min = 1), inner(length(max = 3)))]
    codes: Vec<String>,
    #[serde(default)]
    small: i16,
    anything: Value,
    letter: char,
    #[schemars(url)]
    link: String,
    #[schemars(email)]
    email: String,
    #[schemars(regex(pattern = r"^[A-Z]{3}$"))]
    currency: String,
    rgb: [u8; 3],
    boxed: Box<Inner>,
    address: std::net::IpAddr,
    ratio: f64,
}

fn valid_everything() -> Value {
    json!({
        "id": "67e55044-10b1-426f-9247-bb680e5fe0c8",
        "limit": 100,
        "counts": {"a": 1, "b": 255},
        "tags": ["x", "y"],
        "pair": [1, "one"],
        "non_zero": -3,
        "internal": {"kind": "A", "x": 1},
        "untagged": "text",
        "external": {"C": {"y": -1}},
        "adjacent": {"t": "A", "c": 2},
        "inner": null,
        "by_number": {"12": true},
        "codes": ["abc"],
        "anything": {"free": [1, "form"]},
        "letter": "é",
        "link": "https://example.com/a",
        "email": "ada@example.com",
        "currency": "EUR",
        "rgb": [0, 128, 255],
        "boxed": {"z": 1.5},
        "address": "2001:db8::1",
        "ratio": 0.25
    })
}

/// A pattern with look-ahead, which the regex crate does not support.
#[derive(Debug, Deserialize, JsonSchema)]
struct Lookahead {
    #[schemars(regex(pattern = r"^(?!admin).*$"))]
    name: String,
}

/// The same type for a query string.
#[derive(Debug, Deserialize, JsonSchema)]
struct LookaheadQuery {
    #[schemars(regex(pattern = r"^(?!admin).*$"))]
    name: Option<String>,
}

fn app(handled: Arc<AtomicUsize>) -> Router {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    let catalog =
        faultline::Catalog::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (json_count, query_count) = (Arc::clone(&handled), handled);
    let router = Router::new()
        .route(
            "/everything",
            post(|Json(_): Json<Everything>| async { "ok" }),
        )
        .route(
            "/lookahead",
            post(move |Json(_): Json<Lookahead>| async move {
                json_count.fetch_add(1, Ordering::SeqCst);
                "ok"
            }),
        )
        .route(
            "/lookahead",
            get(move |Query(_): Query<LookaheadQuery>| async move {
                query_count.fetch_add(1, Ordering::SeqCst);
                "ok"
            }),
        );
    Faultline::new(Contract::new(catalog).unwrap()).install(router)
}

async fn send(app: Router, request: Request<Body>) -> (u16, Value) {
    let response = app.oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn post_json(app: Router, path: &str, body: &Value) -> (u16, Value) {
    let request = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    send(app, request).await
}

#[test]
fn what_schemars_emits_for_common_types_is_supported() {
    assert_eq!(ensure_supported::<Everything>(), Ok(()));
}

#[test]
fn a_pattern_the_regex_crate_cannot_compile_is_reported_at_start_up() {
    let refused = ensure_supported::<Lookahead>().unwrap_err();
    assert_eq!(refused.keyword(), "pattern");
    assert_eq!(refused.pointer(), "/properties/name/pattern");
    assert!(refused.to_string().contains("/properties/name/pattern"));
}

#[tokio::test]
async fn a_valid_body_of_every_common_shape_is_accepted() {
    let (status, body) = post_json(app(Arc::default()), "/everything", &valid_everything()).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn rules_beyond_types_are_checked() {
    // One wrong value per rule; each is reported under its own field.
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "limit",
            json!(101),
            "Number must be less than or equal to 100",
        ),
        (
            "counts",
            json!({"a": 256}),
            "Number must be less than or equal to 255",
        ),
        (
            "tags",
            json!(["x", "x"]),
            "Array items must be unique: item 1 repeats item 0",
        ),
        (
            "pair",
            json!([1]),
            "Array must contain at least 2 element(s)",
        ),
        ("non_zero", json!(0), "This value is not allowed"),
        (
            "internal",
            json!({"kind": "C"}),
            "Invalid literal value, expected 'A'",
        ),
        (
            "adjacent",
            json!({"t": "A", "c": 256}),
            "Number must be less than or equal to 255",
        ),
        (
            "by_number",
            json!({"x": true}),
            "Unrecognized key(s) in object: 'x'",
        ),
        (
            "codes",
            json!(["abcd"]),
            "String must contain at most 3 character(s)",
        ),
        (
            "small",
            json!(40000),
            "Number must be less than or equal to 32767",
        ),
        (
            "letter",
            json!("ab"),
            "String must contain at most 1 character(s)",
        ),
        ("link", json!("https://exa mple.com"), "Invalid url"),
        ("email", json!("ada@localhost"), "Invalid email"),
        (
            "currency",
            json!("euro"),
            "Invalid string: must match pattern",
        ),
        ("address", json!("300.1.1.1"), "Invalid ip"),
    ];
    for (field, wrong, message) in cases {
        let mut body = valid_everything();
        body[field] = wrong;
        let (status, answer) = post_json(app(Arc::default()), "/everything", &body).await;
        assert_eq!(status, 400, "{field}: {answer}");
        let fields = answer["details"]["fieldErrors"].as_object().unwrap();
        let reported: Vec<&String> = fields.keys().collect();
        assert!(
            fields.iter().any(|(name, messages)| name.starts_with(field)
                && messages.as_array().unwrap().contains(&json!(message))),
            "{field}: expected {message:?}, got {answer} ({reported:?})"
        );
    }
}

/// Counts the error-level events logged while it is the default subscriber.
struct ErrorCounter(Arc<AtomicUsize>);

impl tracing::Subscriber for ErrorCounter {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::ERROR {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test]
async fn an_unsupported_schema_fails_closed_and_is_logged_once() {
    let errors = Arc::new(AtomicUsize::new(0));
    let _guard = tracing::subscriber::set_default(ErrorCounter(Arc::clone(&errors)));
    let handled = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let (status, answer) = post_json(
            app(Arc::clone(&handled)),
            "/lookahead",
            &json!({"name": "admin"}),
        )
        .await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (500, Some("internal_error"))
        );
        let text = answer.to_string();
        for leak in ["Lookahead", "pattern", "regex", "schema"] {
            assert!(!text.contains(leak), "{text}");
        }
    }
    for _ in 0..2 {
        let request = Request::get("/lookahead?name=admin")
            .body(Body::empty())
            .unwrap();
        let (status, answer) = send(app(Arc::clone(&handled)), request).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (500, Some("internal_error"))
        );
    }
    assert_eq!(
        handled.load(Ordering::SeqCst),
        0,
        "a handler saw an unchecked input"
    );
    // One line for the body type, one for the query type, however many requests.
    assert_eq!(errors.load(Ordering::SeqCst), 2);
}
