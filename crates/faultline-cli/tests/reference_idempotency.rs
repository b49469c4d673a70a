//! Idempotency keys on the reference API, on a SQLite file: one chatbot per key under a storm
//! of duplicates, byte-identical replays, conflicts, independent organisations, malformed
//! keys, retries after failures, the shared transaction, a lease lost mid-handler, expiry.
#![allow(clippy::unwrap_used)] // fixtures panic on purpose when broken

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request};
use faultline::clock::ManualClock;
use faultline::idempotency::Settings as IdempotencySettings;
use faultline_axum::auth::{Authenticator, KeyManager, MemoryKeyStore, NewKey};
use faultline_cli::reference::idempotency::IdempotencyOptions;
use faultline_cli::reference::store::Store;
use faultline_cli::reference::{SCOPES, Settings, build_with, key_format};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use common::{TempDir, catalog};

struct Api {
    app: Router,
    store: Store,
    acme: String,
    globex: String,
    clock: ManualClock,
    _dir: TempDir,
}

async fn bearer(keys: &KeyManager, org: &str) -> String {
    let org = keys.ensure_org(org).await.unwrap().id;
    let (_, key) = keys
        .create_key(&org, NewKey::new("test", SCOPES))
        .await
        .unwrap();
    format!("Bearer {}", key.expose())
}

async fn api(hold: Duration) -> Api {
    api_with(hold, IdempotencySettings::default()).await
}

async fn api_with(hold: Duration, settings: IdempotencySettings) -> Api {
    api_on(hold, settings, None).await
}

async fn api_on(
    hold: Duration,
    settings: IdempotencySettings,
    records: Option<Arc<dyn faultline_axum::idempotency::IdempotencyStore>>,
) -> Api {
    let dir = TempDir::new();
    let store = Store::open(&dir.db()).unwrap();
    let memory = Arc::new(MemoryKeyStore::new());
    let keys = Arc::new(KeyManager::new(
        Arc::new(Authenticator::new(key_format(), memory.clone())),
        memory,
    ));
    let (acme, globex) = (bearer(&keys, "acme").await, bearer(&keys, "globex").await);
    let clock = ManualClock::at(1_900_000_000);
    let mut options = IdempotencyOptions::from_settings(settings);
    options.clock = Arc::new(clock.clone());
    options.hold = hold;
    options.store = records;
    let (app, _) = build_with(
        Settings {
            catalog: catalog(),
            profile: None,
            store: store.clone(),
            keys,
            body_limit: 64 * 1024,
            timeout: Duration::from_secs(30),
        },
        &options,
    )
    .unwrap();
    Api {
        app,
        store,
        acme,
        globex,
        clock,
        _dir: dir,
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

async fn post(app: &Router, bearer: &str, path: &str, key: Option<&[u8]>, body: Value) -> Answer {
    let mut request = Request::post(path)
        .header("authorization", bearer)
        .header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn count(store: &Store, sql: &'static str) -> i64 {
    store
        .read(move |c| c.query_row(sql, [], |r| r.get(0)))
        .await
        .unwrap()
}

async fn chatbots(store: &Store) -> i64 {
    count(store, "SELECT count(*) FROM chatbots").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_duplicates_create_one_chatbot() {
    storm(api(Duration::ZERO).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_duplicates_create_one_chatbot_with_records_in_memory() {
    let records = Arc::new(faultline_axum::idempotency::MemoryIdempotencyStore::new());
    storm(
        api_on(
            Duration::ZERO,
            IdempotencySettings::default(),
            Some(records),
        )
        .await,
    )
    .await;
}

/// 200 concurrent POSTs with one key: one chatbot, every answer its 201 or a wait.
async fn storm(api: Api) {
    let start = Arc::new(tokio::sync::Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (app, bearer, start) = (api.app.clone(), api.acme.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                let body = json!({"name": "storm"});
                post(&app, &bearer, "/v1/chatbots", Some(b"storm-key"), body).await
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
                assert!(answer.header("retry-after").is_some());
                waiting += 1;
            }
            other => panic!(
                "no other answer is allowed, got {other}: {:?}",
                answer.json()
            ),
        }
    }
    assert_eq!(
        chatbots(&api.store).await,
        1,
        "the handler ran exactly once"
    );
    assert_eq!(created.len() + waiting, 200);
    assert!(!created.is_empty());
    assert!(
        created.windows(2).all(|w| w[0] == w[1]),
        "every 201 is the same chatbot"
    );
}

#[tokio::test]
async fn a_replay_is_byte_identical_and_a_changed_body_is_a_conflict() {
    let api = api(Duration::ZERO).await;
    let body = json!({"name": "Support bot"});
    let first = post(
        &api.app,
        &api.acme,
        "/v1/chatbots",
        Some(b"k1"),
        body.clone(),
    )
    .await;
    assert_eq!(first.status, 201);
    let replay = post(&api.app, &api.acme, "/v1/chatbots", Some(b"k1"), body).await;
    assert_eq!(replay.status, 201);
    assert_eq!(replay.body, first.body);
    assert_eq!(replay.header("content-type"), Some("application/json"));
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_ne!(replay.header("x-request-id"), first.header("x-request-id"));
    assert_eq!(chatbots(&api.store).await, 1);

    let changed = json!({"name": "Sales bot"});
    let conflict = post(&api.app, &api.acme, "/v1/chatbots", Some(b"k1"), changed).await;
    assert_eq!(conflict.status, 409);
    assert_eq!(conflict.json()["error"], "idempotency_conflict");
    assert_eq!(conflict.json()["details"]["differs"], "body");
    assert!(!String::from_utf8_lossy(&conflict.body).contains("Support bot"));
    assert_eq!(chatbots(&api.store).await, 1);
}

#[tokio::test]
async fn the_same_key_in_another_org_is_independent() {
    let api = api(Duration::ZERO).await;
    let body = json!({"name": "bot"});
    let a = post(
        &api.app,
        &api.acme,
        "/v1/chatbots",
        Some(b"same"),
        body.clone(),
    )
    .await;
    let b = post(&api.app, &api.globex, "/v1/chatbots", Some(b"same"), body).await;
    assert_eq!((a.status, b.status), (201, 201));
    assert_ne!(a.json()["id"], b.json()["id"]);
    assert_eq!(chatbots(&api.store).await, 2);
}

#[tokio::test]
async fn malformed_keys_are_invalid_and_create_nothing() {
    let api = api(Duration::ZERO).await;
    let long = "x".repeat(256);
    for key in [
        &b""[..],
        long.as_bytes(),
        b"tab\there",
        b"\"open",
        b"close\"",
    ] {
        let answer = post(
            &api.app,
            &api.acme,
            "/v1/chatbots",
            Some(key),
            json!({"name": "b"}),
        )
        .await;
        assert_eq!(answer.status, 400, "{:?}", String::from_utf8_lossy(key));
        assert_eq!(answer.json()["error"], "invalid_idempotency_key");
        assert!(answer.json()["details"]["reason"].is_string());
    }
    assert_eq!(chatbots(&api.store).await, 0);
}

#[tokio::test]
async fn categories_and_api_keys_accept_keys_too() {
    let api = api(Duration::ZERO).await;
    let category = json!({"name": "Sales"});
    let first = post(
        &api.app,
        &api.acme,
        "/v1/categories",
        Some(b"c"),
        category.clone(),
    )
    .await;
    let again = post(&api.app, &api.acme, "/v1/categories", Some(b"c"), category).await;
    assert_eq!((first.status, again.status), (201, 201));
    assert_eq!(again.body, first.body);
    assert_eq!(
        count(&api.store, "SELECT count(*) FROM categories").await,
        1
    );

    let key = json!({"name": "ci", "scopes": ["chatbots:read"]});
    let first = post(&api.app, &api.acme, "/v1/api_keys", Some(b"k"), key.clone()).await;
    let again = post(&api.app, &api.acme, "/v1/api_keys", Some(b"k"), key).await;
    assert_eq!(first.status, 201, "{:?}", first.json());
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    // The same key record, once: the retry created nothing.
    let (first_json, again_json) = (first.json(), again.json());
    assert_eq!(again_json["id"], first_json["id"]);
    let secret = first_json["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("cb_live_"));
    // The secret is shown once: the replay has everything else, and no record holds it.
    assert_eq!(again_json["key"], Value::Null);
    let mut without_key = first_json.clone();
    without_key["key"] = Value::Null;
    assert_eq!(again_json, without_key);
    let stored: Vec<Vec<u8>> = api
        .store
        .read(|c| {
            let mut statement = c.prepare("SELECT body FROM idempotency_records")?;
            let rows = statement.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            rows.collect()
        })
        .await
        .unwrap();
    assert!(!stored.is_empty());
    assert!(
        stored
            .iter()
            .all(|body| !body.windows(secret.len()).any(|w| w == secret.as_bytes())),
        "an idempotency record holds the new key"
    );
}

#[tokio::test]
async fn a_500_releases_the_key_and_the_retry_creates_the_chatbot() {
    let api = api(Duration::ZERO).await;
    api.store
        .write(|c| {
            c.execute_batch(
                "CREATE TABLE fail_next (n INTEGER);
                 INSERT INTO fail_next VALUES (1);
                 CREATE TRIGGER fail_insert BEFORE INSERT ON chatbots
                 WHEN (SELECT count(*) FROM fail_next) > 0
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
        })
        .await
        .unwrap();
    let body = json!({"name": "retry me"});
    let failed = post(
        &api.app,
        &api.acme,
        "/v1/chatbots",
        Some(b"r"),
        body.clone(),
    )
    .await;
    assert_eq!(failed.status, 500);
    api.store
        .write(|c| c.execute_batch("DELETE FROM fail_next"))
        .await
        .unwrap();
    let retried = post(&api.app, &api.acme, "/v1/chatbots", Some(b"r"), body).await;
    assert_eq!(retried.status, 201, "{:?}", retried.json());
    assert_eq!(retried.header("idempotent-replayed"), None, "it ran again");
    assert_eq!(chatbots(&api.store).await, 1);
}

#[tokio::test]
async fn a_failure_after_the_write_in_the_shared_transaction_keeps_neither() {
    let api = api(Duration::ZERO).await;
    // The record's completion fails after the chatbot was inserted, in the same transaction.
    api.store
        .write(|c| {
            c.execute_batch(
                "CREATE TRIGGER fail_record BEFORE UPDATE ON idempotency_records
                 WHEN NEW.status IS NOT NULL
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;
                 CREATE TRIGGER fail_record_insert BEFORE INSERT ON idempotency_records
                 WHEN NEW.status IS NOT NULL
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
            )
        })
        .await
        .unwrap();
    let body = json!({"name": "atomic"});
    let failed = post(
        &api.app,
        &api.acme,
        "/v1/chatbots",
        Some(b"t"),
        body.clone(),
    )
    .await;
    assert_eq!(failed.status, 500);
    assert_eq!(
        chatbots(&api.store).await,
        0,
        "the row was rolled back with the record"
    );
    assert_eq!(
        count(&api.store, "SELECT count(*) FROM idempotency_records").await,
        0,
        "and the claim was released"
    );
    api.store
        .write(|c| c.execute_batch("DROP TRIGGER fail_record; DROP TRIGGER fail_record_insert"))
        .await
        .unwrap();
    let retried = post(&api.app, &api.acme, "/v1/chatbots", Some(b"t"), body).await;
    assert_eq!(retried.status, 201);
    assert_eq!(chatbots(&api.store).await, 1);
    assert_eq!(
        count(
            &api.store,
            "SELECT count(*) FROM idempotency_records WHERE status = 201"
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_whose_lease_was_taken_over_loses_at_its_commit() {
    // Every keyed request waits a moment after its claim: long enough for the test to end
    // the first claim's lease (on the manual clock) and let a retry take the key over.
    let api = api(Duration::from_millis(500)).await;
    let body = json!({"name": "slow"});
    let (app, bearer, first_body) = (api.app.clone(), api.acme.clone(), body.clone());
    let first = tokio::spawn(async move {
        post(&app, &bearer, "/v1/chatbots", Some(b"lease"), first_body).await
    });
    // `POST /v1/chatbots` claims in this process and writes nothing before its transaction:
    // give the first request a moment to take its claim and reach the hold.
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.clock.advance_secs(60);
    let second = post(
        &api.app,
        &api.acme,
        "/v1/chatbots",
        Some(b"lease"),
        body.clone(),
    )
    .await;
    let first = first.await.unwrap();
    // Both ran; the first to commit (the first, whose hold ends first) kept its write, and the
    // other rolled back and got its answer replayed.
    assert_eq!(first.status, 201, "{:?}", first.json());
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(second.status, 201, "{:?}", second.json());
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(second.body, first.body);
    assert_eq!(chatbots(&api.store).await, 1, "only the first commit wrote");
}

#[tokio::test]
async fn a_record_past_its_retention_lets_the_key_run_again() {
    let api = api(Duration::ZERO).await;
    let body = json!({"name": "daily"});
    let first = post(
        &api.app,
        &api.acme,
        "/v1/chatbots",
        Some(b"d"),
        body.clone(),
    )
    .await;
    api.clock.advance_secs(24 * 3600 - 1);
    let replay = post(
        &api.app,
        &api.acme,
        "/v1/chatbots",
        Some(b"d"),
        body.clone(),
    )
    .await;
    assert_eq!(replay.body, first.body, "still within 24 hours");
    api.clock.advance_secs(1);
    let again = post(&api.app, &api.acme, "/v1/chatbots", Some(b"d"), body).await;
    assert_eq!(again.status, 201);
    assert_ne!(again.body, first.body, "a new chatbot after the window");
    assert_eq!(chatbots(&api.store).await, 2);
}

#[tokio::test]
async fn the_docs_page_states_the_window_in_force() {
    let mut settings = IdempotencySettings::default();
    settings.retention = Duration::from_secs(2 * 3600);
    settings.lease = Duration::from_secs(30);
    let api = api_with(Duration::ZERO, settings).await;
    let response = api
        .app
        .clone()
        .oneshot(Request::get("/docs").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let page = response.into_body().collect().await.unwrap().to_bytes();
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains("kept for 2 hours"), "{page}");
    assert!(page.contains("freed after 30 seconds"), "{page}");
    // And the server keeps answers for exactly that long.
    let body = json!({"name": "two hours"});
    let first = post(
        &api.app,
        &api.acme,
        "/v1/chatbots",
        Some(b"w"),
        body.clone(),
    )
    .await;
    api.clock.advance_secs(2 * 3600 - 1);
    let replay = post(
        &api.app,
        &api.acme,
        "/v1/chatbots",
        Some(b"w"),
        body.clone(),
    )
    .await;
    assert_eq!(replay.body, first.body);
    api.clock.advance_secs(1);
    let again = post(&api.app, &api.acme, "/v1/chatbots", Some(b"w"), body).await;
    assert_ne!(again.body, first.body);
}

/// Two processes on one SQLite file (two stores, each holding claims of its own): concurrent
/// same-key POSTs spread over both create one chatbot, and every answer is that chatbot
/// (first or replayed) or `idempotency_in_progress`, never a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_on_one_file_create_one_chatbot() {
    let dir = TempDir::new();
    let memory = Arc::new(MemoryKeyStore::new());
    let keys = Arc::new(KeyManager::new(
        Arc::new(Authenticator::new(key_format(), memory.clone())),
        memory,
    ));
    let acme = bearer(&keys, "acme").await;
    let app = |store: Store| {
        let options = IdempotencyOptions::from_settings(IdempotencySettings::default());
        build_with(
            Settings {
                catalog: catalog(),
                profile: None,
                store,
                keys: Arc::clone(&keys),
                body_limit: 64 * 1024,
                timeout: Duration::from_secs(30),
            },
            &options,
        )
        .unwrap()
        .0
    };
    let store = Store::open(&dir.db()).unwrap();
    let apps = [app(store.clone()), app(Store::open(&dir.db()).unwrap())];
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (app, bearer) = (apps[i % 2].clone(), acme.clone());
            tokio::spawn(async move {
                post(
                    &app,
                    &bearer,
                    "/v1/chatbots",
                    Some(b"two"),
                    json!({"name": "once"}),
                )
                .await
            })
        })
        .collect();
    let (mut first, mut bodies) = (0, std::collections::BTreeSet::new());
    for task in tasks {
        let answer = task.await.unwrap();
        match answer.status {
            201 => {
                if answer.header("idempotent-replayed").is_none() {
                    first += 1;
                }
                bodies.insert(answer.body.clone());
            }
            409 => assert_eq!(answer.json()["error"], "idempotency_in_progress"),
            other => panic!("unexpected {other}: {:?}", answer.json()),
        }
    }
    assert_eq!(first, 1, "one request ran to its commit");
    assert_eq!(bodies.len(), 1, "every 201 is the same chatbot");
    assert_eq!(chatbots(&store).await, 1);
}
