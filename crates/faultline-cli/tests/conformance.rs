//! The conformance battery against the reference API, in every envelope profile, plus the
//! reference API's own behaviour (worked example, state machine, cursors, categories).
#![allow(clippy::unwrap_used)] // test helpers panic on purpose when a fixture is broken

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use faultline::{Catalog, Profile};
use std::sync::Arc;

use faultline_axum::auth::{Authenticator, KeyManager, MemoryKeyStore, NewKey};
use faultline_cli::reference::{SCOPES, Settings, app, build_parts, key_format, store::Store};
use faultline_conformance::{Answer, CaseBody, Fixture, chatbot_cases, check};
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

/// The reference app with one organisation and a key holding every scope.
struct Api {
    app: Router,
    auth: Arc<KeyManager>,
    org: String,
    key: String,
}

impl Api {
    /// Creates another key of the same organisation with `scopes`.
    async fn key_with(&self, scopes: &[&str]) -> String {
        let new = NewKey::new("test", scopes.iter().copied());
        let (_, key) = self.auth.create_key(&self.org, new).await.unwrap();
        key.expose().to_owned()
    }
}

async fn reference(profile: Option<Profile>) -> Api {
    reference_with_metrics(profile).await.0
}

/// [`reference`], and the counters it serves at `/metrics`.
async fn reference_with_metrics(profile: Option<Profile>) -> (Api, Arc<faultline_axum::Metrics>) {
    let store = Arc::new(MemoryKeyStore::new());
    let verifier = Arc::new(Authenticator::new(key_format(), store.clone()));
    let auth = Arc::new(KeyManager::new(verifier, store));
    let org = auth.ensure_org("acme").await.unwrap().id;
    let built = build_parts(Settings {
        catalog: catalog(),
        profile,
        store: Store::in_memory().unwrap(),
        keys: Arc::clone(&auth),
        body_limit: BODY_LIMIT,
        timeout: std::time::Duration::from_secs(5),
    })
    .unwrap();
    let mut api = Api {
        app: built.router,
        auth,
        org,
        key: String::new(),
    };
    api.key = api.key_with(&SCOPES).await;
    (api, built.metrics)
}

/// Sends a request with the fixture's key, unless the headers carry their own credentials.
async fn send(
    api: &Api,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: CaseBody,
) -> Answer {
    let bearer = format!("Bearer {}", api.key);
    let mut all = headers.to_vec();
    if !headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("authorization"))
    {
        all.push(("authorization", bearer.as_bytes()));
    }
    send_raw(&api.app, method, path, &all, body).await
}

/// Sends exactly the headers given.
async fn send_raw(
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

async fn json_request(app: &Api, method: &str, path: &str, body: Value) -> Answer {
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

/// # Metrics count each error exactly as often as it was answered
#[tokio::test]
async fn after_the_battery_metrics_count_every_code_as_answered() {
    let catalog = catalog();
    for profile in [Profile::Flat, Profile::Google] {
        let (app, metrics) = reference_with_metrics(Some(profile)).await;
        let created = json_request(&app, "POST", "/v1/chatbots", json!({"name": "Helper"})).await;
        assert_eq!(created.status, 201);
        let fixture = Fixture {
            chatbot: json_of(&created)["id"].as_str().unwrap().to_owned(),
            max_body: BODY_LIMIT,
            key: app.key.clone(),
            unknown_key: key_format().generate().expose().to_owned(),
            read_only_key: app.key_with(&["chatbots:read"]).await,
        };
        let mut answered = std::collections::BTreeMap::<String, u64>::new();
        for case in &chatbot_cases(&catalog, &fixture) {
            let headers: Vec<(&str, &[u8])> = case
                .headers
                .iter()
                .map(|(n, v)| (*n, v.as_slice()))
                .collect();
            let answer = send_raw(
                &app.app,
                case.method,
                &case.path,
                &headers,
                case.body.clone(),
            )
            .await;
            if answer.status >= 400 {
                let (_, envelope) = faultline::parse_any(&answer.body).unwrap();
                *answered.entry(envelope.code.clone()).or_default() += 1;
            }
        }
        assert!(answered.len() >= 10, "{answered:?}");
        for spec in catalog.errors() {
            let expected = answered.get(&spec.code).copied().unwrap_or(0);
            assert_eq!(
                metrics.errors_answered(&spec.code),
                expected,
                "[{profile}] {}",
                spec.code
            );
        }
    }
}

#[tokio::test]
async fn battery_passes_in_every_profile() {
    let catalog = catalog();
    for profile in Profile::ALL {
        let app = reference(Some(profile)).await;
        let created = json_request(&app, "POST", "/v1/chatbots", json!({"name": "Helper"})).await;
        assert_eq!(created.status, 201);
        let fixture = Fixture {
            chatbot: json_of(&created)["id"].as_str().unwrap().to_owned(),
            max_body: BODY_LIMIT,
            key: app.key.clone(),
            unknown_key: key_format().generate().expose().to_owned(),
            read_only_key: app.key_with(&["chatbots:read"]).await,
        };
        let cases = chatbot_cases(&catalog, &fixture);
        assert!(cases.len() >= 70, "only {} cases", cases.len());
        let mut failures = Vec::new();
        for case in &cases {
            let headers: Vec<(&str, &[u8])> = case
                .headers
                .iter()
                .map(|(n, v)| (*n, v.as_slice()))
                .collect();
            let answer = send_raw(
                &app.app,
                case.method,
                &case.path,
                &headers,
                case.body.clone(),
            )
            .await;
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
    let app = reference(None).await;
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
    let app = reference(Some(Profile::Problem)).await;
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
    let app = reference(None).await;
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
    let app = reference(None).await;
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
    let app = reference(None).await;
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
    let app = reference(None).await;
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

/// The body without its request id, and the headers without the request id and date.
fn without_request_id(answer: &Answer) -> (u16, Option<String>, Value) {
    let mut body = json_of(answer);
    body.as_object_mut().unwrap().remove("request_id");
    (answer.status, answer.content_type.clone(), body)
}

#[tokio::test]
async fn another_orgs_chatbot_is_indistinguishable_from_a_random_id() {
    let app = reference(None).await;
    // A second organisation with a chatbot of its own.
    let other_org = app.auth.ensure_org("globex").await.unwrap().id;
    let new = NewKey::new("globex", ["chatbots:read", "chatbots:write"]);
    let (_, other_key) = app.auth.create_key(&other_org, new).await.unwrap();
    let bearer = format!("Bearer {}", other_key.expose());
    let created = send(
        &app,
        "POST",
        "/v1/chatbots",
        &[
            ("authorization", bearer.as_bytes()),
            ("content-type", b"application/json"),
        ],
        CaseBody::Bytes(br#"{"name":"Theirs"}"#.to_vec()),
    )
    .await;
    assert_eq!(created.status, 201);
    let foreign = json_of(&created)["id"].as_str().unwrap().to_owned();
    let random = uuid::Uuid::new_v4();

    for method in ["GET", "DELETE"] {
        let a = send(
            &app,
            method,
            &format!("/v1/chatbots/{foreign}"),
            &[],
            CaseBody::Empty,
        )
        .await;
        let b = send(
            &app,
            method,
            &format!("/v1/chatbots/{random}"),
            &[],
            CaseBody::Empty,
        )
        .await;
        assert_eq!(
            a.status, 404,
            "{method}: never 403 for another org's resource"
        );
        assert_eq!(without_request_id(&a), without_request_id(&b), "{method}");
        assert_eq!(a.allow, b.allow);
        assert_ne!(a.request_id, b.request_id);
    }
    let patch = |id: String| {
        let app = &app;
        async move {
            send(
                app,
                "PATCH",
                &format!("/v1/chatbots/{id}"),
                &[("content-type", b"application/json")],
                CaseBody::Bytes(br#"{"name":"Mine now"}"#.to_vec()),
            )
            .await
        }
    };
    assert_eq!(
        without_request_id(&patch(foreign.clone()).await),
        without_request_id(&patch(random.to_string()).await)
    );
    // The owner still sees it, unchanged.
    let own = send(
        &app,
        "GET",
        &format!("/v1/chatbots/{foreign}"),
        &[("authorization", bearer.as_bytes())],
        CaseBody::Empty,
    )
    .await;
    assert_eq!(json_of(&own)["name"], "Theirs");
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = reference(None).await;
    let lower = format!("bearer {}", app.key);
    let answer = send(
        &app,
        "GET",
        "/v1/chatbots",
        &[("authorization", lower.as_bytes())],
        CaseBody::Empty,
    )
    .await;
    assert_eq!(
        answer.status, 200,
        "RFC 9110: auth schemes are case-insensitive"
    );
}

#[tokio::test]
async fn key_lifecycle_through_the_api() {
    let app = reference(None).await;
    let created = json_request(
        &app,
        "POST",
        "/v1/api_keys",
        json!({"name": "ci", "scopes": ["chatbots:read"], "webhook_url": "https://hooks.example.com/ci"}),
    )
    .await;
    assert_eq!(created.status, 201);
    let created = json_of(&created);
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(created["display_prefix"].as_str().unwrap()));
    assert!(created["created_at"].as_str().unwrap().ends_with("+00:00"));

    // The key is shown once: listings never carry it.
    let listed = send(&app, "GET", "/v1/api_keys", &[], CaseBody::Empty).await;
    assert!(!String::from_utf8_lossy(&listed.body).contains(&key));
    assert_eq!(json_of(&listed)["data"].as_array().unwrap().len(), 2);

    let bearer = format!("Bearer {key}");
    let as_key = |path: &'static str| {
        let (app, bearer) = (&app, bearer.clone());
        async move {
            let answer = send(
                app,
                "GET",
                path,
                &[("authorization", bearer.as_bytes())],
                CaseBody::Empty,
            )
            .await;
            let code = serde_json::from_slice::<Value>(&answer.body)
                .ok()
                .and_then(|b| b["error"].as_str().map(str::to_owned));
            (answer.status, code)
        }
    };
    assert_eq!(as_key("/v1/chatbots").await, (200, None));
    let post = |action: &str| {
        let (app, path) = (&app, format!("/v1/api_keys/{id}/{action}"));
        async move { send(app, "POST", &path, &[], CaseBody::Empty).await }
    };

    // Each change holds at once, although the key was just verified and cached.
    assert_eq!(post("pause").await.status, 200);
    assert_eq!(
        as_key("/v1/chatbots").await,
        (403, Some("api_key_paused".into()))
    );
    assert_eq!(post("resume").await.status, 200);
    assert_eq!(as_key("/v1/chatbots").await, (200, None));
    assert_eq!(post("revoke").await.status, 200);
    assert_eq!(
        as_key("/v1/chatbots").await,
        (401, Some("api_key_revoked".into()))
    );

    let resumed = post("resume").await;
    assert_eq!(resumed.status, 409);
    let body = json_of(&resumed);
    assert_eq!(body["details"]["current"], "revoked");
    assert_eq!(body["details"]["requested"], "active");
}

#[tokio::test]
async fn the_key_cap_answers_429_with_the_max() {
    let app = reference(None).await;
    // The fixture's own key is the first of ten.
    for i in 1..10 {
        let answer = json_request(
            &app,
            "POST",
            "/v1/api_keys",
            json!({"name": format!("k{i}"), "scopes": ["chatbots:read"]}),
        )
        .await;
        assert_eq!(answer.status, 201, "key {i}");
    }
    let refused = json_request(
        &app,
        "POST",
        "/v1/api_keys",
        json!({"name": "one too many", "scopes": ["chatbots:read"]}),
    )
    .await;
    assert_eq!(refused.status, 429);
    let body = json_of(&refused);
    assert_eq!(body["error"], "api_key_limit_reached");
    assert_eq!(body["details"], json!({"max": 10}));
}

#[tokio::test]
async fn expired_keys_and_inactive_orgs_are_refused() {
    let clock = faultline::clock::ManualClock::at(1_900_000_000);
    let store = Arc::new(MemoryKeyStore::new());
    let verifier = Arc::new(
        Authenticator::new(key_format(), store.clone()).with_clock(Arc::new(clock.clone())),
    );
    let auth = Arc::new(KeyManager::new(verifier, store));
    let org = auth.ensure_org("acme").await.unwrap().id;
    let app = app(Settings {
        catalog: catalog(),
        profile: None,
        store: Store::in_memory().unwrap(),
        keys: Arc::clone(&auth),
        body_limit: BODY_LIMIT,
        timeout: std::time::Duration::from_secs(5),
    })
    .unwrap();
    let new =
        NewKey::new("short-lived", ["chatbots:read"]).with_expiry(Some(clock_now(&clock) + 60));
    let (_, key) = auth.create_key(&org, new).await.unwrap();
    let api = Api {
        app,
        auth: Arc::clone(&auth),
        org: org.clone(),
        key: key.expose().to_owned(),
    };
    let code = |answer: Answer| (answer.status, json_of(&answer)["error"].clone());
    assert_eq!(
        send(&api, "GET", "/v1/chatbots", &[], CaseBody::Empty)
            .await
            .status,
        200
    );
    clock.advance_secs(60);
    assert_eq!(
        code(send(&api, "GET", "/v1/chatbots", &[], CaseBody::Empty).await),
        (401, json!("api_key_expired"))
    );

    let (_, fresh) = auth
        .create_key(&org, NewKey::new("n", ["chatbots:read"]))
        .await
        .unwrap();
    let bearer = format!("Bearer {}", fresh.expose());
    let headers: [(&str, &[u8]); 1] = [("authorization", bearer.as_bytes())];
    assert_eq!(
        send(&api, "GET", "/v1/chatbots", &headers, CaseBody::Empty)
            .await
            .status,
        200
    );
    assert!(auth.set_org_active(&org, false).await.unwrap());
    assert_eq!(
        code(send(&api, "GET", "/v1/chatbots", &headers, CaseBody::Empty).await),
        (403, json!("org_inactive"))
    );
    assert!(auth.set_org_active(&org, true).await.unwrap());
    assert_eq!(
        send(&api, "GET", "/v1/chatbots", &headers, CaseBody::Empty)
            .await
            .status,
        200
    );
}

fn clock_now(clock: &faultline::clock::ManualClock) -> i64 {
    faultline::clock::Clock::now(clock)
}
