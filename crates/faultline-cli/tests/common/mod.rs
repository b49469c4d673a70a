//! Fixtures shared by the `reference_*` tests: the reference app on a SQLite file (or in
//! memory), keys of two organisations, and a request helper.
#![allow(dead_code, unreachable_pub)] // each test file uses part of it

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use faultline::Catalog;
use faultline_axum::auth::{Authenticator, KeyManager, MemoryKeyStore, NewKey};
use faultline_cli::reference::{SCOPES, Settings, app, key_format, store::Store};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// The chatbots catalog of the examples.
pub fn catalog() -> Catalog {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/catalogs/chatbots.toml"
    );
    Catalog::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("faultline-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn db(&self) -> PathBuf {
        self.0.join("reference.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An answer, reduced to what the tests look at.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Value,
}

impl Reply {
    /// The error code (flat profile), if any.
    pub fn code(&self) -> Option<&str> {
        self.body["error"].as_str()
    }
}

/// The reference app with two organisations, each with a key holding every scope.
#[derive(Clone)]
pub struct Api {
    pub app: Router,
    pub store: Store,
    pub bearer: String,
    pub other_bearer: String,
    /// The id of the first organisation.
    pub org: String,
}

async fn bearer_for(auth: &KeyManager, org: &str) -> (String, String) {
    let org = auth.ensure_org(org).await.unwrap().id;
    let new = NewKey::new("test", SCOPES);
    let (_, key) = auth.create_key(&org, new).await.unwrap();
    (format!("Bearer {}", key.expose()), org)
}

impl Api {
    /// The app on the store, with the given handler deadline.
    pub async fn on(store: Store, timeout: Duration) -> Self {
        let keys = Arc::new(MemoryKeyStore::new());
        let verifier = Arc::new(Authenticator::new(key_format(), keys.clone()));
        let auth = Arc::new(KeyManager::new(verifier, keys));
        let (bearer, org) = bearer_for(&auth, "acme").await;
        let (other_bearer, _) = bearer_for(&auth, "globex").await;
        let app = app(Settings {
            catalog: catalog(),
            profile: None,
            store: store.clone(),
            keys: auth,
            body_limit: 64 * 1024,
            timeout,
        })
        .unwrap();
        Api {
            app,
            store,
            bearer,
            other_bearer,
            org,
        }
    }

    /// The app on a SQLite file.
    pub async fn on_file(db: &Path) -> Self {
        Self::on(Store::open(db).unwrap(), Duration::from_secs(30)).await
    }

    /// The app in memory.
    pub async fn in_memory() -> Self {
        Self::on(Store::in_memory().unwrap(), Duration::from_secs(30)).await
    }

    /// Sends a request as the first organisation.
    pub async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.send_as(&self.bearer, method, path, body).await
    }

    /// Sends a request with the given `Authorization` value.
    pub async fn send_as(
        &self,
        bearer: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let builder = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", bearer);
        let request = match body {
            Some(json) => builder
                .header("content-type", "application/json")
                .body(Body::from(json.to_string()))
                .unwrap(),
            None => builder.body(Body::empty()).unwrap(),
        };
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Reply {
            status,
            retry_after,
            body,
        }
    }
}
