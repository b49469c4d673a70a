//! The conformance battery against the reference API, in every envelope profile, plus the
#![allow(clippy::unwrap_used)] // test helpers panic on purpose when a fixture is broken
//! reference API's own behaviour (worked example, state machine, cursors, categories).

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use faultline::{Catalog, Profile};
use faultline_cli::conformance::{Answer, CaseBody, chatbot_cases, check};
use faultline_cli::reference::{Settings, app, store::Store};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const BODY_LIMIT: usize = 64 * 1024;

fn catalog() -> Catalog {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    Catalog::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn reference(profile: Option<Profile>) -> Router {
    app(Settings {
        catalog: catalog(),
        profile,
        store: Store::in_memory().unwrap(),
        body_limit: BODY_LIMIT,
        timeout: std::time::Duration::from_secs(5),
    })
    .unwrap()
}

async fn send(
    app: &Router,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: CaseBody,
) -> Answer {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = match body {
        CaseBody::Empty => Body::empty(),
        CaseBody::Bytes(bytes) => {
            builder = builder.header("content-length", bytes.len());
            Body::from(bytes)
        }
        CaseBody::Chunked(bytes) => {
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
                bytes.chunks(8 * 1024).map(|c| Ok(c.to_vec())).collect();
            Body::from_stream(futures_util::stream::iter(chunks))
        }
    };
    let response = app
        .clone()
        .oneshot(builder.body(body).unwrap())
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (status, content_type, request_id, allow) = (
        response.status().as_u16(),
        header("content-type"),
        header("x-request-id"),
        header("allow"),
    );
    let body = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Answer {
        status,
        content_type,
        request_id,
        allow,
        body,
    }
}

async fn json_request(app: &Router, method: &str, path: &str, body: Value) -> Answer {
    send(
        app,
        method,
        path,
        &[("content-type", b"application/json")],
        CaseBody::Bytes(body.to_string().into_bytes()),
    )
    .await
}

fn json_of(answer: &Answer) -> Value {
    serde_json::from_slice(&answer.body).unwrap()
}

#[tokio::test]
async fn battery_passes_in_every_profile() {
    let catalog = catalog();
    for profile in Profile::ALL {
        let app = reference(Some(profile));
        let created = json_request(&app, "POST", "/v1/chatbots", json!({"name": "Helper"})).await;
        assert_eq!(created.status, 201);
        let chatbot = json_of(&created)["id"].as_str().unwrap().to_owned();
        let cases = chatbot_cases(&catalog, &chatbot, BODY_LIMIT);
        assert!(cases.len() >= 40, "only {} cases", cases.len());
        let mut failures = Vec::new();
        for case in &cases {
            let headers: Vec<(&str, &[u8])> = case
                .headers
                .iter()
                .map(|(n, v)| (*n, v.as_slice()))
                .collect();
            let answer = send(&app, case.method, &case.path, &headers, case.body.clone()).await;
            for problem in check(&catalog, profile, case, &answer) {
                failures.push(format!("[{profile}] {}: {problem}", case.name));
            }
        }
        assert!(
            failures.is_empty(),
            "{} violation(s):\n{}",
            failures.len(),
            failures.join("\n")
        );
        let health = send(&app, "GET", "/health", &[], CaseBody::Empty).await;
        assert_eq!(health.status, 200, "the server keeps answering");
    }
}

#[tokio::test]
async fn worked_example_of_seed_003() {
    let app = reference(None);
    let answer = json_request(&app, "POST", "/v1/chatbots", json!({"status": "live"})).await;
    assert_eq!(answer.status, 400);
    let id = answer.request_id.clone().unwrap();
    assert!(id.starts_with("req_") && id.len() >= 24);
    assert_eq!(
        json_of(&answer),
        json!({
            "error": "invalid_payload",
            "message": "Request body failed validation.",
            "request_id": id,
            "details": {
                "formErrors": [],
                "fieldErrors": {
                    "name": ["Required"],
                    "status": ["Invalid enum value. Expected 'draft' | 'active' | 'paused' | 'archived', got 'live'."]
                }
            }
        })
    );
}

#[tokio::test]
async fn problem_profile_serves_problem_json() {
    let app = reference(Some(Profile::Problem));
    let answer = send(&app, "GET", "/v1/nope", &[], CaseBody::Empty).await;
    assert_eq!(
        answer.content_type.as_deref(),
        Some("application/problem+json")
    );
    let body = json_of(&answer);
    assert_eq!(body["status"], 404);
    assert_eq!(body["code"], "not_found");
    assert_eq!(body["instance"], "/v1/nope");
    assert_eq!(
        body["type"],
        "https://docs.example.com/chatbots/errors#not_found"
    );
}

#[tokio::test]
async fn success_responses_carry_the_request_id_and_a_safe_client_id_is_kept() {
    let app = reference(None);
    let answer = send(
        &app,
        "GET",
        "/v1/chatbots",
        &[("x-request-id", b"client-abc.1_2")],
        CaseBody::Empty,
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.request_id.as_deref(), Some("client-abc.1_2"));
}

#[tokio::test]
async fn lifecycle_state_machine_and_gone() {
    let app = reference(None);
    let created = json_of(
        &json_request(
            &app,
            "POST",
            "/v1/chatbots",
            json!({"name": "Bot", "status": "active"}),
        )
        .await,
    );
    let path = format!("/v1/chatbots/{}", created["id"].as_str().unwrap());
    assert!(created["created_at"].as_str().unwrap().ends_with("+00:00"));

    let archived = json_request(&app, "PATCH", &path, json!({"status": "archived"})).await;
    assert_eq!(archived.status, 200);
    let illegal = json_request(&app, "PATCH", &path, json!({"status": "active"})).await;
    assert_eq!(illegal.status, 409);
    let body = json_of(&illegal);
    assert_eq!(body["error"], "conflict");
    assert_eq!(body["details"]["current"], "archived");
    assert_eq!(body["details"]["requested"], "active");

    assert_eq!(
        send(&app, "DELETE", &path, &[], CaseBody::Empty)
            .await
            .status,
        204
    );
    let gone = send(&app, "GET", &path, &[], CaseBody::Empty).await;
    assert_eq!(
        (gone.status, json_of(&gone)["error"].clone()),
        (410, json!("gone"))
    );
}

#[tokio::test]
async fn cursors_page_through_and_reject_tampering() {
    let app = reference(None);
    for i in 0..5 {
        json_request(
            &app,
            "POST",
            "/v1/chatbots",
            json!({"name": format!("bot {i}")}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/chatbots?limit=2".to_owned();
    loop {
        let page = json_of(&send(&app, "GET", &path, &[], CaseBody::Empty).await);
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                let mut tampered = cursor.to_owned();
                tampered.replace_range(0..1, if cursor.starts_with('A') { "B" } else { "A" });
                let bad = send(
                    &app,
                    "GET",
                    &format!("/v1/chatbots?cursor={tampered}"),
                    &[],
                    CaseBody::Empty,
                )
                .await;
                assert_eq!(
                    (bad.status, json_of(&bad)["error"].clone()),
                    (400, json!("invalid_cursor"))
                );
                path = format!("/v1/chatbots?limit=2&cursor={cursor}");
            }
            None => break,
        }
    }
    // Rows created in the same millisecond are ordered by id: every row once, none twice.
    seen.sort();
    assert_eq!(seen, (0..5).map(|i| format!("bot {i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn category_with_children_needs_cascade() {
    let app = reference(None);
    let parent =
        json_of(&json_request(&app, "POST", "/v1/categories", json!({"name": "Parent"})).await);
    let parent_id = parent["id"].as_str().unwrap();
    let child = json_request(
        &app,
        "POST",
        "/v1/categories",
        json!({"name": "Child", "parent_id": parent_id}),
    )
    .await;
    assert_eq!(child.status, 201);
    let refused = send(
        &app,
        "DELETE",
        &format!("/v1/categories/{parent_id}"),
        &[],
        CaseBody::Empty,
    )
    .await;
    assert_eq!(
        (refused.status, json_of(&refused)["error"].clone()),
        (409, json!("category_not_empty"))
    );
    let cascaded = send(
        &app,
        "DELETE",
        &format!("/v1/categories/{parent_id}?cascade=true"),
        &[],
        CaseBody::Empty,
    )
    .await;
    assert_eq!(cascaded.status, 204);
    let child_id = json_of(&child)["id"].as_str().unwrap().to_owned();
    let after = send(
        &app,
        "GET",
        &format!("/v1/categories/{child_id}"),
        &[],
        CaseBody::Empty,
    )
    .await;
    assert_eq!(after.status, StatusCode::NOT_FOUND.as_u16());
}
