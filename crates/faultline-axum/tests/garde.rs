//! `ValidJson`: garde's rules report in the same details as the schema's.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose when a fixture is broken
#![cfg(feature = "garde")]

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::post;
use faultline_axum::{Contract, Faultline, ValidJson};
use http_body_util::BodyExt;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;

#[derive(Debug, Deserialize, JsonSchema, garde::Validate)]
struct Signup {
    #[schemars(length(max = 50))]
    #[garde(custom(not_blank))]
    name: String,
    #[garde(email)]
    email: String,
    #[garde(inner(length(min = 1)))]
    tags: Vec<String>,
}

fn not_blank(value: &str, _context: &()) -> garde::Result {
    if value.trim().is_empty() {
        Err(garde::Error::new("Must not be blank."))
    } else {
        Ok(())
    }
}

/// Rules schemars does not read, so that only garde finds these problems.
#[derive(Debug, Deserialize, JsonSchema, garde::Validate)]
struct Names {
    #[garde(inner(custom(not_blank)))]
    names: Vec<String>,
}

async fn post_json(body: Value) -> (u16, Value) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    let catalog =
        faultline::Catalog::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let router = Router::new().route(
        "/signup",
        post(|ValidJson(signup): ValidJson<Signup>| async move { signup.name }),
    );
    let app = Faultline::new(Contract::new(catalog).unwrap()).install(router);
    let response = app
        .oneshot(
            Request::post("/signup")
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn garde_rules_that_schemars_reads_are_checked_with_the_types() {
    // schemars turns `#[garde(email)]` and `#[garde(length)]` into schema keywords, so those
    // rules are reported in one pass with the type errors: every problem of the body at once.
    let (status, body) = post_json(json!({"name": 5, "email": "nope", "tags": ["ok", ""]})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_payload");
    let fields = body["details"]["fieldErrors"].as_object().unwrap();
    assert_eq!(fields["email"], json!(["Invalid email"]));
    assert_eq!(
        fields["tags.1"],
        json!(["String must contain at least 1 character(s)"])
    );
    assert_eq!(fields["name"], json!(["Expected string, received number"]));
    assert_eq!(fields.len(), 3);
}

#[tokio::test]
async fn custom_garde_rules_report_in_the_same_details() {
    let (status, body) =
        post_json(json!({"name": "   ", "email": "ada@example.com", "tags": ["ok"]})).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["details"],
        json!({"formErrors": [], "fieldErrors": {"name": ["Must not be blank."]}})
    );
}

#[tokio::test]
async fn a_valid_body_passes_both_stages() {
    let (status, _) =
        post_json(json!({"name": "Ada", "email": "ada@example.com", "tags": ["x"]})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn garde_problems_past_the_cap_are_counted() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    let catalog =
        faultline::Catalog::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let router = Router::new().route(
        "/names",
        post(|ValidJson(_): ValidJson<Names>| async { "ok" }),
    );
    let app = Faultline::new(Contract::new(catalog).unwrap()).install(router);
    let body = json!({"names": vec![" "; 150]});
    let response = app
        .oneshot(
            Request::post("/names")
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    let details = &answer["details"];
    assert_eq!(details["fieldErrors"].as_object().unwrap().len(), 100);
    assert_eq!(
        details["fieldErrors"]["names.99"],
        json!(["Must not be blank."])
    );
    assert_eq!(
        details["formErrors"],
        json!(["…and 50 more problems were not listed."])
    );
}
