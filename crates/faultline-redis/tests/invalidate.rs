//! `RedisInvalidations` on the test Redis: a key revoked (or an organisation deactivated)
//! through one authenticator's manager is refused by another within a second (measured); a
//! subscriber whose connection is cut resubscribes and applies `All`; malformed messages are
//! ignored.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use faultline::Situation;
use faultline_axum::auth::{
    AuthFailure, Authenticator, KeyAction, KeyFormat, KeyManager, MemoryKeyStore, NewKey,
};
use faultline_redis::{PoolOptions, RedisInvalidations, RedisPool, RedisSubscription};
use faultline_testkit::TcpProxy;

fn format() -> KeyFormat {
    KeyFormat::new("cb", "test").unwrap()
}

async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "not done within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn refused_within(auth: &Authenticator, key: &str, expected: Situation) -> Duration {
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
        assert!(start.elapsed() < Duration::from_secs(1), "still accepted");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Two instances on one key store, each with its own cache and subscriber; `a`'s manager
/// publishes.
struct Pair {
    b: Arc<Authenticator>,
    manager: KeyManager,
    subs: Vec<RedisSubscription>,
}

async fn pair(pool: RedisPool, channel: &str) -> Pair {
    let store = Arc::new(MemoryKeyStore::new());
    let a = Arc::new(Authenticator::new(format(), store.clone()));
    let b = Arc::new(Authenticator::new(format(), store.clone()));
    let bus = RedisInvalidations::new(&common::redis_url(), Arc::new(pool))
        .unwrap()
        .with_channel(channel);
    let subs = vec![bus.subscribe(Arc::clone(&a)), bus.subscribe(Arc::clone(&b))];
    wait_until(Duration::from_secs(5), || {
        subs.iter().all(|s| s.subscribes() >= 1)
    })
    .await;
    let manager = KeyManager::new(a, store).with_invalidations(Arc::new(bus));
    Pair { b, manager, subs }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_and_a_deactivation_reach_the_other_instance_within_a_second() {
    let Some(pool) = common::redis_or_skip("invalidate_revoke").await else {
        return;
    };
    let p = pair(pool, &common::unique_prefix("inv")).await;
    let org = p.manager.ensure_org("acme").await.unwrap();
    let (record, key) = p
        .manager
        .create_key(&org.id, NewKey::new("ci", Vec::<String>::new()))
        .await
        .unwrap();
    assert!(p.b.verify(key.expose()).await.is_ok());
    let start = Instant::now();
    p.manager
        .change_key(&org.id, &record.id, KeyAction::Revoke)
        .await
        .unwrap();
    let delay =
        start.elapsed() + refused_within(&p.b, key.expose(), Situation::ApiKeyRevoked).await;
    eprintln!("revocation over Redis reached the other instance in {delay:?}");
    assert!(delay < Duration::from_secs(1));

    let (_, key) = p
        .manager
        .create_key(&org.id, NewKey::new("ci2", Vec::<String>::new()))
        .await
        .unwrap();
    assert!(p.b.verify(key.expose()).await.is_ok());
    let start = Instant::now();
    assert!(p.manager.set_org_active(&org.id, false).await.unwrap());
    let delay = start.elapsed() + refused_within(&p.b, key.expose(), Situation::OrgInactive).await;
    eprintln!("deactivation over Redis reached the other instance in {delay:?}");
    assert!(delay < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_messages_are_ignored() {
    let Some(pool) = common::redis_or_skip("invalidate_malformed").await else {
        return;
    };
    let channel = common::unique_prefix("inv");
    let raw = RedisPool::new(&common::redis_url(), PoolOptions::default()).unwrap();
    let p = pair(pool, &channel).await;
    let org = p.manager.ensure_org("acme").await.unwrap();
    let (_, key) = p
        .manager
        .create_key(&org.id, NewKey::new("ci", Vec::<String>::new()))
        .await
        .unwrap();
    assert!(p.b.verify(key.expose()).await.is_ok());
    for junk in ["drop everything", "key:", "ALL"] {
        let _: i64 = raw
            .query(redis::cmd("PUBLISH").arg(&channel).arg(junk))
            .await
            .unwrap();
    }
    // A well-formed event published after them is applied after them.
    let before = p.subs[1].applied();
    let other = p.manager.ensure_org("other").await.unwrap();
    assert!(p.manager.set_org_active(&other.id, false).await.unwrap());
    wait_until(Duration::from_secs(1), || p.subs[1].applied() > before).await;
    assert_eq!(p.subs[1].applied(), before + 1);
    assert!(p.b.verify_cached(key.expose()).is_some(), "nothing dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_subscriber_resubscribes_and_applies_all() {
    let Some(pool) = common::redis_or_skip("invalidate_cut").await else {
        return;
    };
    let proxy = TcpProxy::start(common::redis_addr()).await.unwrap();
    let via_proxy = format!("redis://{}", proxy.addr());
    let quick = PoolOptions::default()
        .with_deadline(Duration::from_millis(300))
        .with_connect_timeout(Duration::from_millis(300));
    let subscriber_pool = Arc::new(RedisPool::new(&via_proxy, quick).unwrap());
    let channel = common::unique_prefix("inv");
    let store = Arc::new(MemoryKeyStore::new());
    let auth = Arc::new(Authenticator::new(format(), store.clone()));
    let sub = RedisInvalidations::new(&via_proxy, subscriber_pool)
        .unwrap()
        .with_channel(&channel)
        .with_keepalive(Duration::from_millis(100))
        .with_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .subscribe(Arc::clone(&auth));
    wait_until(Duration::from_secs(5), || sub.subscribes() == 1).await;
    let manager = KeyManager::new(Arc::clone(&auth), store);
    let org = manager.ensure_org("acme").await.unwrap();
    let (_, key) = manager
        .create_key(&org.id, NewKey::new("ci", Vec::<String>::new()))
        .await
        .unwrap();
    assert!(auth.verify(key.expose()).await.is_ok());

    proxy.cut();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sub.subscribes(), 1);
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
    let publisher = RedisInvalidations::new(&common::redis_url(), Arc::new(pool))
        .unwrap()
        .with_channel(&channel);
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
