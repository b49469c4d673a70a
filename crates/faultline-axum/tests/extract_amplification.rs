//! A body full of wrong items gets a short answer, built in little memory.
//!
//! This binary counts every allocation (its own global allocator), so it holds one test only:
//! a second test running beside it would blur the peak.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose when a fixture is broken

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::post;
use faultline_axum::{Contract, Faultline, Json};
use http_body_util::BodyExt;
use peak_alloc::PeakAlloc;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;
use tower::ServiceExt;

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

#[derive(Debug, Deserialize, JsonSchema)]
struct Tags {
    #[allow(dead_code)] // only its schema matters here
    tags: Vec<String>,
}

/// A router serving the chatbots catalog, its validation details in the field-violations
/// shape when `violations` is set (field errors otherwise).
fn app(violations: bool) -> Router {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    let mut text = std::fs::read_to_string(path).unwrap();
    if violations {
        text = text.replace(
            r#"details = "field_errors""#,
            r#"details = "field_violations""#,
        );
    }
    let catalog = faultline::Catalog::from_toml_str(&text).unwrap();
    let router = Router::new().route("/tags", post(|Json(_): Json<Tags>| async { "ok" }));
    Faultline::new(Contract::new(catalog).unwrap()).install(router)
}

/// `{"tags":[0,0,…]}` just under the default 1 MiB limit: every item is a wrong type.
fn wrong_items_body() -> (String, usize) {
    let limit = 1024 * 1024;
    let items = (limit - r#"{"tags":[]}"#.len()) / 2;
    let mut body = String::with_capacity(limit);
    body.push_str(r#"{"tags":["#);
    for i in 0..items {
        if i > 0 {
            body.push(',');
        }
        body.push('0');
    }
    body.push_str("]}");
    assert!(body.len() <= limit);
    (body, items)
}

/// Sends the body; the answer's bytes and the peak of memory held above the baseline while
/// the request was handled and answered.
async fn send(violations: bool, body: String) -> (u16, Vec<u8>, usize) {
    let request = Request::post("/tags")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let app = app(violations);
    let baseline = ALLOCATOR.current_usage();
    ALLOCATOR.reset_peak_usage();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let peak = ALLOCATOR.peak_usage().saturating_sub(baseline);
    (status, bytes.to_vec(), peak)
}

/// The peak of memory that parsing the body into a `serde_json::Value` takes by itself: the
/// floor for an extractor that checks a parsed value.
fn parse_peak(body: &str) -> usize {
    let bytes = body.as_bytes().to_vec();
    let baseline = ALLOCATOR.current_usage();
    ALLOCATOR.reset_peak_usage();
    let value: Value = serde_json::from_slice(&bytes).unwrap();
    let peak = ALLOCATOR.peak_usage().saturating_sub(baseline);
    drop(value);
    peak
}

#[tokio::test]
async fn a_megabyte_of_wrong_items_gets_a_small_answer_built_in_little_memory() {
    for violations in [false, true] {
        let (body, items) = wrong_items_body();
        let floor = parse_peak(&body);
        let (status, answer, peak) = send(violations, body).await;
        let text = String::from_utf8_lossy(&answer);
        eprintln!(
            "violations {violations}: {items} wrong items, answer {} bytes, peak {peak} bytes \
             (parsing alone {floor} bytes)",
            answer.len(),
        );
        assert_eq!(status, 400, "{text:.400}");
        assert!(answer.len() < 32 * 1024, "answer of {} bytes", answer.len());
        // Parsing (one `serde_json::Value` per item, in a vector that doubles as it grows)
        // takes about 50 MB at its peak; before the cap the problems and their rendering
        // took 230 MB to 380 MB more. Now the check, the details and the answer add at most
        // a few megabytes (the body copied once by the reader) on top of the parse.
        assert!(
            peak < floor + 4 * 1024 * 1024,
            "peak of {peak} bytes, parsing alone {floor} bytes"
        );
        let json: Value = serde_json::from_slice(&answer).unwrap();
        let listed = 100;
        assert_eq!(items, 524_282);
        let rest = "…and 524,182 more problems were not listed.";
        let details = &json["details"];
        if !violations {
            assert_eq!(details["fieldErrors"].as_object().unwrap().len(), listed);
            assert_eq!(details["formErrors"], serde_json::json!([rest]));
        } else {
            let violations = details["fields"].as_array().unwrap();
            assert_eq!(violations.len(), listed + 1);
            assert_eq!(violations[listed]["pointer"], "");
            assert_eq!(violations[listed]["message"], rest);
            assert_eq!(violations[0]["pointer"], "/tags/0");
        }
    }
}
