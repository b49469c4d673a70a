//! Key management through the reference API cannot be used to gain power: no key creates or
//! changes a key stronger than itself, no key pauses itself, listings are paged with
//! organisation-bound cursors, and webhooks cannot point inside the network.
#![allow(clippy::unwrap_used)] // test helpers panic on purpose when a fixture is broken

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use faultline::Catalog;
use faultline::clock::{Clock, ManualClock};
use faultline_axum::auth::{Authenticator, KeyManager, MemoryKeyStore, NewKey};
use faultline_cli::reference::keys::iso8601;
use faultline_cli::reference::{SCOPES, Settings, app, key_format, store::Store};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const NOW: i64 = 1_900_000_000;

fn catalog() -> Catalog {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    Catalog::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The reference app on a manual clock, with one organisation.
struct Api {
    app: Router,
    keys: Arc<KeyManager>,
    clock: ManualClock,
    org: String,
}

impl Api {
    async fn new() -> Self {
        let clock = ManualClock::at(NOW);
        let store = Arc::new(MemoryKeyStore::new());
        let auth = Arc::new(
            Authenticator::new(key_format(), store.clone()).with_clock(Arc::new(clock.clone())),
        );
        let keys = Arc::new(KeyManager::new(auth, store).with_max_keys_per_org(50));
        let org = keys.ensure_org("acme").await.unwrap().id;
        let app = app(Settings {
            catalog: catalog(),
            profile: None,
            store: Store::in_memory().unwrap(),
            keys: Arc::clone(&keys),
            body_limit: 64 * 1024,
            timeout: std::time::Duration::from_secs(5),
        })
        .unwrap();
        Api {
            app,
            keys,
            clock,
            org,
        }
    }

    /// A key of `org` with `scopes`, expiring at `expires_at`: (id, raw key).
    async fn key_in(
        &self,
        org: &str,
        scopes: &[&str],
        expires_at: Option<i64>,
    ) -> (String, String) {
        let new = NewKey::new("fixture", scopes.iter().copied()).with_expiry(expires_at);
        let (record, secret) = self.keys.create_key(org, new).await.unwrap();
        (record.id, secret.expose().to_owned())
    }

    async fn key(&self, scopes: &[&str]) -> (String, String) {
        self.key_in(&self.org, scopes, None).await
    }

    async fn call(&self, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {key}"));
        let body = match body {
            Some(json) => {
                request = request.header("content-type", "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        let response = self
            .app
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn create(&self, key: &str, body: Value) -> (u16, Value) {
        self.call(key, "POST", "/v1/api_keys", Some(body)).await
    }
}

#[tokio::test]
async fn a_key_cannot_create_a_key_with_scopes_it_lacks() {
    let api = Api::new().await;
    let (_, writer) = api.key(&["api_keys:write", "chatbots:read"]).await;

    let (status, body) = api
        .create(
            &writer,
            json!({"name": "escalate", "scopes": ["chatbots:read", "chatbots:write", "api_keys:read"]}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"], "insufficient_scope");
    assert_eq!(
        body["details"],
        json!({"required": "api_keys:read chatbots:write"}),
        "every missing scope, space-separated"
    );

    let all: Vec<&str> = SCOPES.to_vec();
    let (status, _) = api
        .create(&writer, json!({"name": "everything", "scopes": all}))
        .await;
    assert_eq!(status, 403);

    let (status, body) = api
        .create(
            &writer,
            json!({"name": "narrower", "scopes": ["chatbots:read"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["scopes"], json!(["chatbots:read"]));
}

#[tokio::test]
async fn an_expiring_key_cannot_create_a_key_that_outlives_it() {
    let api = Api::new().await;
    let expiry = NOW + 3600;
    let (_, short) = api
        .key_in(&api.org, &["api_keys:write", "chatbots:read"], Some(expiry))
        .await;
    let field_errors = |body: &Value| body["details"]["fieldErrors"]["expires_at"][0].clone();

    let (status, body) = api
        .create(
            &short,
            json!({"name": "forever", "scopes": ["chatbots:read"]}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_payload")),
        "{body}"
    );
    let message = field_errors(&body);
    assert!(
        message.as_str().unwrap().contains(&iso8601(expiry)),
        "the message says when the calling key expires: {message}"
    );

    let later = iso8601(expiry + 1);
    let (status, body) = api
        .create(
            &short,
            json!({"name": "later", "scopes": ["chatbots:read"], "expires_at": later}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_payload")),
        "{body}"
    );
    assert!(
        field_errors(&body)
            .as_str()
            .unwrap()
            .contains("no later than")
    );

    for at in [expiry, expiry - 60] {
        let (status, body) = api
            .create(
                &short,
                json!({"name": "ok", "scopes": ["chatbots:read"], "expires_at": iso8601(at)}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["expires_at"], json!(iso8601(at)));
    }
}

#[tokio::test]
async fn a_key_cannot_change_a_key_holding_scopes_it_lacks() {
    let api = Api::new().await;
    let (admin_id, admin) = api.key(&SCOPES).await;
    let (helper_id, helper) = api.key(&["api_keys:write", "chatbots:read"]).await;

    for action in ["pause", "revoke"] {
        let (status, body) = api
            .call(
                &helper,
                "POST",
                &format!("/v1/api_keys/{admin_id}/{action}"),
                None,
            )
            .await;
        assert_eq!(status, 403, "{action}: {body}");
        assert_eq!(body["error"], "insufficient_scope");
        assert_eq!(
            body["details"]["required"],
            "api_keys:read categories:read categories:write chatbots:write"
        );
    }
    assert_eq!(api.call(&admin, "GET", "/v1/chatbots", None).await.0, 200);

    // The stronger key may act on the weaker one.
    let (status, body) = api
        .call(
            &admin,
            "POST",
            &format!("/v1/api_keys/{helper_id}/pause"),
            None,
        )
        .await;
    assert_eq!((status, &body["status"]), (200, &json!("paused")));
}

#[tokio::test]
async fn a_key_cannot_pause_itself_but_may_revoke_itself() {
    let api = Api::new().await;
    let (id, key) = api.key(&["api_keys:write", "chatbots:read"]).await;

    let (status, body) = api
        .call(&key, "POST", &format!("/v1/api_keys/{id}/pause"), None)
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "conflict");
    assert_eq!(body["details"]["current"], "active");
    assert_eq!(body["details"]["requested"], "paused");
    assert!(
        body["details"]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot pause itself"),
        "{body}"
    );
    assert_eq!(
        api.call(&key, "GET", "/v1/chatbots", None).await.0,
        200,
        "the key still works"
    );

    let (status, body) = api
        .call(&key, "POST", &format!("/v1/api_keys/{id}/revoke"), None)
        .await;
    assert_eq!((status, &body["status"]), (200, &json!("revoked")));
    let (status, body) = api.call(&key, "GET", "/v1/chatbots", None).await;
    assert_eq!((status, &body["error"]), (401, &json!("api_key_revoked")));
}

#[tokio::test]
async fn key_listings_are_paged_with_cursors_bound_to_the_organisation() {
    let api = Api::new().await;
    let (first_id, reader) = api.key(&["api_keys:read"]).await;
    let mut ids = vec![first_id];
    for i in 0..24 {
        api.clock.set(NOW + i / 3);
        ids.push(api.key(&["chatbots:read"]).await.0);
    }

    // The default page is 20.
    let (status, page) = api.call(&reader, "GET", "/v1/api_keys", None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["data"].as_array().unwrap().len(), 20);
    assert!(page["next_cursor"].is_string());

    let mut seen = Vec::new();
    let mut path = "/v1/api_keys?limit=7".to_owned();
    // Bounded, so that a listing that ignores the cursor fails instead of looping.
    for _ in 0..10 {
        let (status, page) = api.call(&reader, "GET", &path, None).await;
        assert_eq!(status, 200, "{page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 7);
        seen.extend(data.iter().map(|k| k["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/api_keys?limit=7&cursor={cursor}"),
            None => break,
        }
    }
    let mut expected = ids.clone();
    expected.sort();
    let mut got = seen.clone();
    got.sort();
    assert_eq!(got, expected, "every key once");
    assert_eq!(seen.len(), 25);

    // A cursor of another organisation is refused.
    let other = api.keys.ensure_org("globex").await.unwrap().id;
    let (_, foreign_reader) = api.key_in(&other, &["api_keys:read"], None).await;
    for _ in 0..2 {
        api.key_in(&other, &["chatbots:read"], None).await;
    }
    let (_, foreign_page) = api
        .call(&foreign_reader, "GET", "/v1/api_keys?limit=1", None)
        .await;
    let foreign_cursor = foreign_page["next_cursor"].as_str().unwrap();
    let (status, body) = api
        .call(
            &reader,
            "GET",
            &format!("/v1/api_keys?cursor={foreign_cursor}"),
            None,
        )
        .await;
    assert_eq!((status, &body["error"]), (400, &json!("invalid_cursor")));

    // So is a cursor past its lifetime, and a limit out of range.
    let (_, page) = api.call(&reader, "GET", "/v1/api_keys?limit=1", None).await;
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    api.clock
        .set(api.clock.now() + faultline_cli::reference::cursor::LIFETIME_SECS);
    let (status, body) = api
        .call(
            &reader,
            "GET",
            &format!("/v1/api_keys?cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!((status, &body["error"]), (400, &json!("invalid_cursor")));
    for limit in [0, 101] {
        let (status, body) = api
            .call(&reader, "GET", &format!("/v1/api_keys?limit={limit}"), None)
            .await;
        assert_eq!(
            (status, &body["error"]),
            (400, &json!("invalid_query")),
            "{limit}"
        );
    }
}

#[tokio::test]
async fn webhooks_into_the_network_are_refused_and_public_ones_kept() {
    let api = Api::new().await;
    let (_, admin) = api.key(&SCOPES).await;
    for url in [
        "http://127.0.0.1:9000/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://2130706433/",
    ] {
        let (status, body) = api
            .create(
                &admin,
                json!({"name": "hook", "scopes": ["chatbots:read"], "webhook_url": url}),
            )
            .await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"], "invalid_webhook_url");
        assert!(
            body["details"]["reason"]
                .as_str()
                .unwrap()
                .contains("must not")
        );
    }

    let url = "https://hooks.example.com/keys";
    let (status, created) = api
        .create(
            &admin,
            json!({"name": "hook", "scopes": ["chatbots:read"], "webhook_url": url}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["webhook_url"], url);
    let (_, page) = api.call(&admin, "GET", "/v1/api_keys", None).await;
    let listed = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == created["id"])
        .unwrap();
    assert_eq!(
        listed["webhook_url"], url,
        "kept in the reference API's table"
    );
    let id = created["id"].as_str().unwrap();
    let (_, revoked) = api
        .call(&admin, "POST", &format!("/v1/api_keys/{id}/revoke"), None)
        .await;
    assert_eq!(revoked["webhook_url"], url);
}

#[tokio::test]
async fn a_key_asks_for_at_most_every_known_scope_once() {
    let api = Api::new().await;
    let (_, admin) = api.key(&SCOPES).await;
    let mut scopes: Vec<&str> = SCOPES.to_vec();
    scopes.push("chatbots:read");
    let (status, body) = api
        .create(&admin, json!({"name": "many", "scopes": scopes}))
        .await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_payload")),
        "{body}"
    );
    let problem = body["details"]["fieldErrors"]["scopes"][0]
        .as_str()
        .unwrap();
    assert!(problem.contains("at most 6"), "{problem}");

    let (status, _) = api
        .create(&admin, json!({"name": "all", "scopes": SCOPES}))
        .await;
    assert_eq!(status, 201);
}
