//! `PgKeyStore` and `PgInvalidations` against a real PostgreSQL
//! (`FAULTLINE_TEST_POSTGRES_URL`): the shared key store suite, the cap across processes,
//! revocation between two authenticators within a second, resubscribing after a dropped
//! connection, and outages through a proxy.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use faultline::Situation;
use faultline_axum::auth::suite;
use faultline_axum::auth::{
    AuthFailure, Authenticator, KeyAction, KeyAdmin, KeyLookup, KeyManager, StatusChange,
};
use faultline_postgres::testing::TestDatabase;
use faultline_postgres::{PgInvalidations, PgKeyStore, PgOptions, PgPool};
use faultline_testkit::TcpProxy;

fn store_on(options: &PgOptions) -> Arc<PgKeyStore> {
    Arc::new(PgKeyStore::new(PgPool::new(options).unwrap()))
}

fn quick(mut options: PgOptions) -> PgOptions {
    options.connect_timeout = Duration::from_millis(700);
    options.statement_timeout = Duration::from_millis(700);
    options
}

/// A channel of this test's own, so tests running at once on one server never cross.
fn channel(db: &TestDatabase) -> String {
    format!("inv_{}", db.name())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_store_suite_passes_on_postgresql() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    suite::every_lifecycle_state(store_on(&db.options())).await;
    let db = TestDatabase::migrated().unwrap();
    suite::the_cap_counts_unrevoked_keys_only(store_on(&db.options())).await;
    let db = TestDatabase::migrated().unwrap();
    suite::listings_page_by_creation_then_id(store_on(&db.options())).await;
    let db = TestDatabase::migrated().unwrap();
    suite::org_tiers_reach_the_principal(store_on(&db.options())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cap_holds_when_many_processes_create_keys_at_once() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    // Eight "processes": each its own pool, authenticator and manager, on one database.
    let mut managers = Vec::new();
    for _ in 0..8 {
        let store = store_on(&db.options());
        let auth = Arc::new(Authenticator::new(suite::format(), store.clone()));
        managers.push(Arc::new(
            KeyManager::new(auth, store).with_max_keys_per_org(5),
        ));
    }
    let org = managers[0].ensure_org("acme").await.unwrap();
    let mut tasks = Vec::new();
    for (i, manager) in managers.iter().enumerate() {
        for j in 0..3 {
            let (manager, org_id) = (Arc::clone(manager), org.id.clone());
            tasks.push(tokio::spawn(async move {
                manager
                    .create_key(&org_id, suite::new_key(&[]).clone())
                    .await
                    .map(|_| (i, j))
            }));
        }
    }
    let mut created = 0;
    for task in tasks {
        if task.await.unwrap().is_ok() {
            created += 1;
        }
    }
    assert_eq!(created, 5, "exactly the cap is created, never more");
    let store = store_on(&db.options());
    assert_eq!(store.list_keys(&org.id, None, 100).await.unwrap().len(), 5);
}

/// Two instances on one database: each with its own pool, authenticator (and cache) and
/// subscriber; the manager of `a` publishes.
struct Pair {
    a: Arc<Authenticator>,
    b: Arc<Authenticator>,
    manager: KeyManager,
    subs: Vec<faultline_postgres::Subscription>,
}

async fn pair(db: &TestDatabase) -> Pair {
    let options = db.options();
    let (store_a, store_b) = (store_on(&options), store_on(&options));
    let a = Arc::new(Authenticator::new(suite::format(), store_a.clone()));
    let b = Arc::new(Authenticator::new(suite::format(), store_b.clone()));
    let bus_a = PgInvalidations::new(store_a.pool().clone()).with_channel(&channel(db));
    let bus_b = PgInvalidations::new(store_b.pool().clone()).with_channel(&channel(db));
    let subs = vec![
        bus_a.subscribe(&options, Arc::clone(&a)),
        bus_b.subscribe(&options, Arc::clone(&b)),
    ];
    wait_until(Duration::from_secs(5), || {
        subs.iter().all(|s| s.subscribes() >= 1)
    })
    .await;
    let manager = KeyManager::new(Arc::clone(&a), store_a).with_invalidations(Arc::new(bus_a));
    Pair {
        a,
        b,
        manager,
        subs,
    }
}

async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "not done within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `auth` with `key` until it is refused with `expected`; returns how long that took.
async fn refused_within(
    auth: &Authenticator,
    key: &str,
    expected: Situation,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        match auth.verify(key).await {
            Err(AuthFailure::Refused(situation)) => {
                assert_eq!(situation, expected);
                return start.elapsed();
            }
            Ok(_) => {}
            Err(other) => panic!("unexpected failure: {other:?}"),
        }
        assert!(
            start.elapsed() < limit,
            "still accepted after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_revoked_on_one_instance_is_refused_by_the_other_within_a_second() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let p = pair(&db).await;
    let org = p.manager.ensure_org("acme").await.unwrap();
    let (record, key) = p
        .manager
        .create_key(&org.id, suite::new_key(&["a:read"]))
        .await
        .unwrap();
    // Both instances have the key cached (for 10 s, the default).
    assert!(p.a.verify(key.expose()).await.is_ok());
    assert!(p.b.verify(key.expose()).await.is_ok());
    assert!(p.b.verify_cached(key.expose()).is_some());

    let start = Instant::now();
    let change = p
        .manager
        .change_key(&org.id, &record.id, KeyAction::Revoke)
        .await
        .unwrap();
    assert!(matches!(change, StatusChange::Changed(_)));
    let delay = start.elapsed()
        + refused_within(
            &p.b,
            key.expose(),
            Situation::ApiKeyRevoked,
            Duration::from_secs(1),
        )
        .await;
    eprintln!("revocation reached the other instance in {delay:?}");
    assert!(delay < Duration::from_secs(1), "took {delay:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_org_deactivated_on_one_instance_is_refused_by_the_other_within_a_second() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let p = pair(&db).await;
    let org = p.manager.ensure_org("acme").await.unwrap();
    let (_, key) = p
        .manager
        .create_key(&org.id, suite::new_key(&[]))
        .await
        .unwrap();
    assert!(p.b.verify(key.expose()).await.is_ok());

    let start = Instant::now();
    assert!(p.manager.set_org_active(&org.id, false).await.unwrap());
    let delay = start.elapsed()
        + refused_within(
            &p.b,
            key.expose(),
            Situation::OrgInactive,
            Duration::from_secs(1),
        )
        .await;
    eprintln!("deactivation reached the other instance in {delay:?}");
    assert!(delay < Duration::from_secs(1), "took {delay:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_notifications_are_ignored() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let p = pair(&db).await;
    let org = p.manager.ensure_org("acme").await.unwrap();
    let (_, key) = p
        .manager
        .create_key(&org.id, suite::new_key(&[]))
        .await
        .unwrap();
    assert!(p.b.verify(key.expose()).await.is_ok());
    let pool = PgPool::new(&db.options()).unwrap();
    let mut conn = pool.get().await.unwrap();
    conn.batch_execute(&format!(
        "NOTIFY \"{}\", 'drop everything'; NOTIFY \"{}\", 'key:'",
        channel(&db),
        channel(&db)
    ))
    .await
    .unwrap();
    // A well-formed event sent after them arrives after them: once it is applied, the
    // malformed ones have been seen and ignored.
    let before = p.subs[1].applied();
    let other = p.manager.ensure_org("other").await.unwrap();
    assert!(p.manager.set_org_active(&other.id, false).await.unwrap());
    wait_until(Duration::from_secs(1), || p.subs[1].applied() > before).await;
    assert_eq!(p.subs[1].applied(), before + 1);
    assert!(p.b.verify_cached(key.expose()).is_some(), "nothing dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_droppedsubscriber_connection_resubscribes_and_applies_all() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let proxy = TcpProxy::start(db.server_addr()).await.unwrap();
    let store = store_on(&db.options());
    let auth = Arc::new(Authenticator::new(suite::format(), store.clone()));
    let manager = KeyManager::new(Arc::clone(&auth), store.clone());
    let bus = PgInvalidations::new(store.pool().clone())
        .with_channel(&channel(&db))
        .with_keepalive(Duration::from_millis(100))
        .with_backoff(Duration::from_millis(20), Duration::from_millis(200));
    let sub = bus.subscribe(&quick(db.options_via(proxy.addr())), Arc::clone(&auth));
    wait_until(Duration::from_secs(5), || sub.subscribes() == 1).await;

    let org = manager.ensure_org("acme").await.unwrap();
    let (_, key) = manager
        .create_key(&org.id, suite::new_key(&[]))
        .await
        .unwrap();
    assert!(auth.verify(key.expose()).await.is_ok());
    assert!(auth.verify_cached(key.expose()).is_some());

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sub.subscribes(),
        1,
        "no subscribe while the server is cut off"
    );
    assert!(
        auth.verify_cached(key.expose()).is_some(),
        "a cut alone changes nothing"
    );
    proxy.restore().unwrap();
    let start = Instant::now();
    wait_until(Duration::from_secs(5), || sub.subscribes() == 2).await;
    eprintln!("resubscribed {:?} after the restore", start.elapsed());
    assert!(
        auth.verify_cached(key.expose()).is_none(),
        "the resubscribe applied All"
    );

    // Events flow again on the new connection.
    assert!(auth.verify(key.expose()).await.is_ok());
    let publisher = PgInvalidations::new(store.pool().clone()).with_channel(&channel(&db));
    faultline_axum::auth::InvalidationSink::publish(
        &publisher,
        faultline_axum::auth::Invalidation::Org(org.id.clone()),
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(1), || {
        auth.verify_cached(key.expose()).is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalledsubscriber_connection_is_replaced() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let proxy = TcpProxy::start(db.server_addr()).await.unwrap();
    let store = store_on(&db.options());
    let auth = Arc::new(Authenticator::new(suite::format(), store.clone()));
    let bus = PgInvalidations::new(store.pool().clone())
        .with_channel(&channel(&db))
        .with_keepalive(Duration::from_millis(100))
        .with_backoff(Duration::from_millis(20), Duration::from_millis(200));
    let sub = bus.subscribe(&quick(db.options_via(proxy.addr())), Arc::clone(&auth));
    wait_until(Duration::from_secs(5), || sub.subscribes() == 1).await;
    proxy.stall().unwrap();
    // The keepalive times out under the deadline (700 ms) and reconnection attempts stall
    // too; after the restore a new connection subscribes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.restore().unwrap();
    wait_until(Duration::from_secs(5), || sub.subscribes() >= 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_makes_lookups_unavailable_within_the_deadline_and_they_recover() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let proxy = TcpProxy::start(db.server_addr()).await.unwrap();
    let options = quick(db.options_via(proxy.addr()));
    let store = store_on(&options);
    let auth = Authenticator::new(suite::format(), store.clone()).with_cache_ttl(0);
    let manager = KeyManager::new(
        Arc::new(Authenticator::new(suite::format(), store.clone())),
        store.clone(),
    );
    let org = manager.ensure_org("acme").await.unwrap();
    let (record, key) = manager
        .create_key(&org.id, suite::new_key(&[]))
        .await
        .unwrap();
    assert!(auth.verify(key.expose()).await.is_ok());

    for fault in ["cut", "stall"] {
        match fault {
            "cut" => proxy.cut(),
            _ => proxy.stall().unwrap(),
        }
        let start = Instant::now();
        let looked_up = store.find_by_digest(record.digest).await;
        let took = start.elapsed();
        let error = looked_up.expect_err("no answer from a server that is cut off");
        assert!(error.is_unavailable(), "{fault}: {error}");
        assert!(
            took < options.statement_timeout + Duration::from_millis(500),
            "{fault}: took {took:?}"
        );
        // Through the authenticator the failure is the store's, not a refusal.
        match auth.verify(key.expose()).await {
            Err(AuthFailure::Store(e)) => assert!(e.is_unavailable()),
            other => panic!("{fault}: expected an unavailable store, got {other:?}"),
        }
        proxy.restore().unwrap();
        let start = Instant::now();
        loop {
            if auth.verify(key.expose()).await.is_ok() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{fault}: no recovery"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
