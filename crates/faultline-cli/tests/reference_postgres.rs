//! The reference API on PostgreSQL (`reference::store::PgStore`): the same handlers as on
//! SQLite, the same answers; an unreachable or stalled database is a catalog 503 with
//! `Retry-After` within the pool's deadline, and service comes back by itself.
//!
//! Needs `FAULTLINE_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432`); without it
//! each test prints a `skipped:` line and passes. Each test runs on a database of its own,
//! dropped at the end.
#![allow(clippy::unwrap_used)] // tests unwrap: a failure is the test failing

mod common;

use std::time::{Duration, Instant};

use common::Api;
use faultline_cli::reference::store::{PgStore, Store};
use faultline_postgres::PgPool;
use faultline_postgres::testing::TestDatabase;
use faultline_testkit::TcpProxy;
use serde_json::json;

async fn api_on(db: &TestDatabase) -> Api {
    let pool = PgPool::new(&db.options()).unwrap();
    let store = PgStore::connect(pool).await.unwrap();
    Api::on(Store::from(store), Duration::from_secs(30)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatbots_live_their_whole_life_on_postgres() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let api = api_on(&db).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let created = api
            .send(
                "POST",
                "/v1/chatbots",
                Some(json!({"name": format!("Bot {i}")})),
            )
            .await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        assert_eq!(created.body["status"], "draft");
        ids.push(created.body["id"].as_str().unwrap().to_owned());
    }
    let path = format!("/v1/chatbots/{}", ids[0]);
    let got = api.send("GET", &path, None).await;
    assert_eq!(
        (got.status, got.body["name"].as_str()),
        (200, Some("Bot 0"))
    );

    // Pages of two, in creation order, with a signed cursor.
    let mut seen = Vec::new();
    let mut next = "/v1/chatbots?limit=2".to_owned();
    loop {
        let page = api.send("GET", &next, None).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        for bot in page.body["data"].as_array().unwrap() {
            seen.push(bot["id"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(cursor) => next = format!("/v1/chatbots?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let tampered = api.send("GET", "/v1/chatbots?cursor=AAAA.BBBB", None).await;
    assert_eq!(tampered.code(), Some("invalid_cursor"));

    // The state machine, on the locked row.
    let active = api
        .send("PATCH", &path, Some(json!({"status": "active"})))
        .await;
    assert_eq!(
        (active.status, active.body["status"].as_str()),
        (200, Some("active"))
    );
    let back = api
        .send("PATCH", &path, Some(json!({"status": "draft"})))
        .await;
    assert_eq!(back.code(), Some("conflict"), "{:?}", back.body);

    // Tenancy: another organisation sees nothing and can change nothing.
    let foreign = api.send_as(&api.other_bearer, "GET", &path, None).await;
    assert_eq!(foreign.status, 404);
    let foreign_patch = api
        .send_as(
            &api.other_bearer,
            "PATCH",
            &path,
            Some(json!({"name": "Mine"})),
        )
        .await;
    assert_eq!(foreign_patch.status, 404);
    let foreign_list = api
        .send_as(&api.other_bearer, "GET", "/v1/chatbots", None)
        .await;
    assert_eq!(foreign_list.body["data"].as_array().unwrap().len(), 0);

    // Delete: gone from then on, and out of the list.
    assert_eq!(api.send("DELETE", &path, None).await.status, 204);
    assert_eq!(api.send("GET", &path, None).await.code(), Some("gone"));
    assert_eq!(api.send("DELETE", &path, None).await.code(), Some("gone"));
    let listed = api.send("GET", "/v1/chatbots?limit=100", None).await;
    assert_eq!(listed.body["data"].as_array().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn category_trees_nest_bounded_and_delete_whole_on_postgres() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let api = api_on(&db).await;
    let root = api
        .send("POST", "/v1/categories", Some(json!({"name": "Root"})))
        .await;
    assert_eq!(root.status, 201, "{:?}", root.body);
    let root_id = root.body["id"].as_str().unwrap().to_owned();
    // A chain down to the deepest level allowed, then one more refused.
    let mut parent = root_id.clone();
    for level in 2..=faultline_cli::reference::store::MAX_CATEGORY_DEPTH {
        let child = api
            .send(
                "POST",
                "/v1/categories",
                Some(json!({"name": format!("L{level}"), "parent_id": parent})),
            )
            .await;
        assert_eq!(child.status, 201, "level {level}: {:?}", child.body);
        parent = child.body["id"].as_str().unwrap().to_owned();
    }
    let too_deep = api
        .send(
            "POST",
            "/v1/categories",
            Some(json!({"name": "Too deep", "parent_id": parent})),
        )
        .await;
    assert_eq!(
        too_deep.code(),
        Some("invalid_payload"),
        "{:?}",
        too_deep.body
    );

    // Another organisation cannot hang a category under ours, nor see or delete it.
    let foreign_child = api
        .send_as(
            &api.other_bearer,
            "POST",
            "/v1/categories",
            Some(json!({"name": "Intruder", "parent_id": root_id})),
        )
        .await;
    assert_eq!(foreign_child.status, 422, "{:?}", foreign_child.body);
    let root_path = format!("/v1/categories/{root_id}");
    assert_eq!(
        api.send_as(&api.other_bearer, "GET", &root_path, None)
            .await
            .status,
        404
    );
    assert_eq!(
        api.send_as(
            &api.other_bearer,
            "DELETE",
            &format!("{root_path}?cascade=true"),
            None
        )
        .await
        .status,
        404
    );

    // Without cascade a parent stays; with it the whole chain goes.
    let refused = api.send("DELETE", &root_path, None).await;
    assert_eq!(
        refused.code(),
        Some("category_not_empty"),
        "{:?}",
        refused.body
    );
    let deleted = api
        .send("DELETE", &format!("{root_path}?cascade=true"), None)
        .await;
    assert_eq!(deleted.status, 204, "{:?}", deleted.body);
    assert_eq!(api.send("GET", &root_path, None).await.status, 404);
    let leaf = api
        .send("GET", &format!("/v1/categories/{parent}"), None)
        .await;
    assert_eq!(leaf.status, 404);
}

/// # An outage is a 503 within the deadline, and the store recovers by itself
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_or_stalled_database_is_a_503_with_retry_after_then_recovers() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let proxy = TcpProxy::start(db.server_addr()).await.unwrap();
    let mut options = db.options_via(proxy.addr());
    let deadline = Duration::from_millis(500);
    options.connect_timeout = deadline;
    options.statement_timeout = deadline;
    let store = PgStore::connect(PgPool::new(&options).unwrap())
        .await
        .unwrap();
    let api = Api::on(Store::from(store), Duration::from_secs(30)).await;
    let created = api
        .send("POST", "/v1/chatbots", Some(json!({"name": "Before"})))
        .await;
    assert_eq!(created.status, 201);
    let path = format!("/v1/chatbots/{}", created.body["id"].as_str().unwrap());

    for outage in ["cut", "stall"] {
        match outage {
            "cut" => proxy.cut(),
            _ => proxy.stall().unwrap(),
        }
        for (method, body) in [("GET", None), ("PATCH", Some(json!({"name": "During"})))] {
            let started = Instant::now();
            let reply = api.send(method, &path, body).await;
            let took = started.elapsed();
            assert_eq!(reply.status, 503, "{outage} {method}: {:?}", reply.body);
            assert_eq!(reply.code(), Some("service_unavailable"));
            assert!(reply.retry_after.is_some(), "{outage} {method}");
            assert!(
                took < deadline * 2 + Duration::from_millis(500),
                "{outage} {method} took {took:?}"
            );
        }
        proxy.restore().unwrap();
        // Back without a restart (the first call may still meet a connection the outage
        // broke; it is answered 503 too, never anything else).
        let mut recovered = false;
        for _ in 0..20 {
            let reply = api.send("GET", &path, None).await;
            assert!(
                reply.status == 200 || reply.status == 503,
                "{outage}: {:?}",
                reply.body
            );
            if reply.status == 200 {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(recovered, "the store did not recover after the {outage}");
    }
    // The PATCH during the outage wrote nothing.
    let after = api.send("GET", &path, None).await;
    assert_eq!(after.body["name"], "Before");
}
