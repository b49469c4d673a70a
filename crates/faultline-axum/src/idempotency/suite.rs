//! One test suite for every idempotency store (feature `store-suite`): each function drives a
//! store through claims, completions, releases and pruning on a manual clock, and panics at the
//! first broken promise.
//!
//! A store crate runs every function from its tests, so the in-memory store, SQLite and
//! PostgreSQL are held to exactly the same assertions. The functions that race claims spawn
//! tasks: run them on a multi-threaded runtime so that the claims really overlap.
//!
//! ```
//! # async fn suite() {
//! // In a store crate's test: `#[tokio::test(flavor = "multi_thread")] async fn …` with its
//! // own store.
//! let store = std::sync::Arc::new(faultline_axum::idempotency::MemoryIdempotencyStore::new());
//! faultline_axum::idempotency::suite::scopes_are_independent(store).await;
//! # }
//! ```
#![allow(clippy::missing_panics_doc)] // panicking is how a suite reports a failure

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, StatusCode};
use faultline::clock::{Clock, ManualClock};
use faultline::idempotency::{Difference, Fingerprint, IdempotencyKey};

use super::store::{ClaimOutcome, ClaimRequest, ClaimToken, IdempotencyStore, StoredResponse};

/// The time the suite's clock starts at (Unix seconds).
pub const NOW: i64 = 1_900_000_000;

/// The lease the suite claims with.
pub const LEASE: Duration = Duration::from_secs(60);

/// The retention the suite completes with.
pub const RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// A manual clock at [`NOW`].
pub fn clock() -> ManualClock {
    ManualClock::at(NOW)
}

/// The key `name` (panics unless valid).
pub fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey::new(name).expect("a valid key")
}

/// The fingerprint of `POST /v1/things` with `body`.
pub fn fingerprint(body: &[u8]) -> Fingerprint {
    Fingerprint::new("POST", "/v1/things", "", body)
}

/// A claim of `key` in `scope` for `POST /v1/things` with `body`, at the clock's time.
pub fn request(clock: &ManualClock, scope: &str, key_name: &str, body: &[u8]) -> ClaimRequest {
    ClaimRequest::new(
        scope,
        key(key_name),
        fingerprint(body),
        LEASE,
        clock.now_millis(),
    )
}

/// A response whose status, headers and body exercise every byte a store must keep: a body
/// holding all 256 byte values, a header value with bytes above 0x7F, a repeated header name
/// and an empty value.
pub fn awkward_response() -> StoredResponse {
    let body: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    StoredResponse::new(
        StatusCode::CREATED,
        vec![
            (
                HeaderName::from_static("location"),
                HeaderValue::from_static("/v1/things/th_1"),
            ),
            (
                HeaderName::from_static("x-note"),
                HeaderValue::from_bytes(b"caf\xe9 \x80\xff: \"q\"").expect("a valid value"),
            ),
            (
                HeaderName::from_static("x-note"),
                HeaderValue::from_static(""),
            ),
            (
                HeaderName::from_static("content-type"),
                HeaderValue::from_static("application/json"),
            ),
        ],
        body,
    )
}

/// A plain JSON response with status `status`.
pub fn response(status: u16, body: &str) -> StoredResponse {
    StoredResponse::new(
        StatusCode::from_u16(status).expect("a valid status"),
        vec![(
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("application/json"),
        )],
        body.as_bytes().to_vec(),
    )
}

/// Claims and expects [`ClaimOutcome::Claimed`].
pub async fn claimed<S: IdempotencyStore + ?Sized>(
    store: &S,
    request: &ClaimRequest,
) -> ClaimToken {
    match store.claim(request).await.expect("the store answers") {
        ClaimOutcome::Claimed(token) => token,
        other => panic!("expected the claim to succeed, got {other:?}"),
    }
}

/// Claims and returns whatever came of it.
pub async fn outcome<S: IdempotencyStore + ?Sized>(
    store: &S,
    request: &ClaimRequest,
) -> ClaimOutcome {
    store.claim(request).await.expect("the store answers")
}

/// Of many concurrent claims of one key, exactly one succeeds and every other is told to wait
/// for the lease; once the winner completes, every later claim is the replay.
pub async fn concurrent_claims_elect_one<S: IdempotencyStore>(store: Arc<S>) {
    const CLAIMS: usize = 64;
    let clock = clock();
    let start = Arc::new(tokio::sync::Barrier::new(CLAIMS));
    let tasks: Vec<_> = (0..CLAIMS)
        .map(|_| {
            let (store, start) = (Arc::clone(&store), Arc::clone(&start));
            let request = request(&clock, "org_race", "race-key", b"{}");
            tokio::spawn(async move {
                start.wait().await;
                store.claim(&request).await.expect("the store answers")
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for task in tasks {
        match task.await.expect("the task finishes") {
            ClaimOutcome::Claimed(token) => tokens.push(token),
            ClaimOutcome::InProgress { retry_after } => assert_eq!(retry_after, LEASE),
            other => panic!("a concurrent claim must win or wait, got {other:?}"),
        }
    }
    assert_eq!(tokens.len(), 1, "exactly one claim wins");
    let answer = response(201, r#"{"id":"th_1"}"#);
    assert!(
        store
            .complete(&tokens[0], &answer, clock.now_millis(), RETENTION)
            .await
            .expect("the store answers")
    );
    let tasks: Vec<_> = (0..CLAIMS)
        .map(|_| {
            let store = Arc::clone(&store);
            let request = request(&clock, "org_race", "race-key", b"{}");
            tokio::spawn(async move { store.claim(&request).await.expect("the store answers") })
        })
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.expect("the task finishes"),
            ClaimOutcome::Replay(answer.clone())
        );
    }
}

/// A completed response comes back exactly: status, every header in order, every body byte.
pub async fn replays_are_byte_identical<S: IdempotencyStore>(store: Arc<S>) {
    let clock = clock();
    let token = claimed(&*store, &request(&clock, "org_a", "replay", b"body")).await;
    let stored = awkward_response();
    assert!(
        store
            .complete(&token, &stored, clock.now_millis(), RETENTION)
            .await
            .expect("the store answers")
    );
    clock.advance_secs(3600);
    match outcome(&*store, &request(&clock, "org_a", "replay", b"body")).await {
        ClaimOutcome::Replay(replayed) => {
            assert_eq!(replayed.status, stored.status);
            assert_eq!(replayed.headers, stored.headers);
            assert_eq!(replayed.body, stored.body);
        }
        other => panic!("expected the replay, got {other:?}"),
    }
    // A response with no headers and an empty body is kept as such.
    let token = claimed(&*store, &request(&clock, "org_a", "empty", b"")).await;
    let empty = StoredResponse::new(StatusCode::NO_CONTENT, Vec::new(), Vec::new());
    assert!(
        store
            .complete(&token, &empty, clock.now_millis(), RETENTION)
            .await
            .expect("the store answers")
    );
    assert_eq!(
        outcome(&*store, &request(&clock, "org_a", "empty", b"")).await,
        ClaimOutcome::Replay(empty)
    );
}

/// The same key with another request is a mismatch that names what differs, whether the first
/// request is still running or completed; the same request waits or replays.
pub async fn mismatches_say_what_differs<S: IdempotencyStore>(store: Arc<S>) {
    let clock = clock();
    let token = claimed(&*store, &request(&clock, "org_a", "k1", b"first")).await;
    let check = |when: &'static str| {
        let store = Arc::clone(&store);
        let clock = clock.clone();
        async move {
            let now = clock.now_millis();
            let other = |method, path, body: &[u8]| {
                ClaimRequest::new(
                    "org_a",
                    key("k1"),
                    Fingerprint::new(method, path, "", body),
                    LEASE,
                    now,
                )
            };
            for (request, difference) in [
                (other("POST", "/v1/things", b"second"), Difference::Body),
                (other("PATCH", "/v1/things", b"first"), Difference::Request),
                (other("POST", "/v1/other", b"first"), Difference::Request),
                (
                    ClaimRequest::new(
                        "org_a",
                        key("k1"),
                        Fingerprint::new("POST", "/v1/things", "dry_run=true", b"first"),
                        LEASE,
                        now,
                    ),
                    Difference::Request,
                ),
                (other("PATCH", "/v1/things", b"second"), Difference::Both),
            ] {
                assert_eq!(
                    outcome(&*store, &request).await,
                    ClaimOutcome::Mismatch(difference),
                    "{when}: {difference:?}"
                );
            }
        }
    };
    check("while in progress").await;
    assert!(matches!(
        outcome(&*store, &request(&clock, "org_a", "k1", b"first")).await,
        ClaimOutcome::InProgress { .. }
    ));
    let answer = response(200, "{}");
    assert!(
        store
            .complete(&token, &answer, clock.now_millis(), RETENTION)
            .await
            .expect("the store answers")
    );
    check("once completed").await;
    assert_eq!(
        outcome(&*store, &request(&clock, "org_a", "k1", b"first")).await,
        ClaimOutcome::Replay(answer)
    );
}

/// One key in two scopes, and two keys in one scope, are four independent records.
pub async fn scopes_are_independent<S: IdempotencyStore>(store: Arc<S>) {
    let clock = clock();
    let a = claimed(&*store, &request(&clock, "org_a", "shared", b"a")).await;
    let b = claimed(&*store, &request(&clock, "org_b", "shared", b"b")).await;
    let _ = claimed(&*store, &request(&clock, "org_a", "other", b"a")).await;
    // A scope that is a prefix of another is still another scope.
    let _ = claimed(&*store, &request(&clock, "org_", "ashared", b"a")).await;
    assert_ne!(a, b);
    let (ra, rb) = (
        response(201, r#"{"org":"a"}"#),
        response(201, r#"{"org":"b"}"#),
    );
    let now = clock.now_millis();
    assert!(
        store
            .complete(&a, &ra, now, RETENTION)
            .await
            .expect("answers")
    );
    assert!(
        store
            .complete(&b, &rb, now, RETENTION)
            .await
            .expect("answers")
    );
    assert_eq!(
        outcome(&*store, &request(&clock, "org_a", "shared", b"a")).await,
        ClaimOutcome::Replay(ra)
    );
    assert_eq!(
        outcome(&*store, &request(&clock, "org_b", "shared", b"b")).await,
        ClaimOutcome::Replay(rb)
    );
    // A token of one scope does nothing to the other scope's record.
    let forged = ClaimRequest::new("org_b", key("other"), fingerprint(b"a"), LEASE, now).token();
    assert!(!store.release(&forged).await.expect("answers"));
}

/// A live lease makes later claims wait for its remaining time; once it has ended, the next
/// claim takes the key over and the first holder can neither complete nor release it.
pub async fn an_expired_lease_is_taken_over<S: IdempotencyStore>(store: Arc<S>) {
    let clock = clock();
    let first = claimed(&*store, &request(&clock, "org_a", "lease", b"x")).await;
    clock.advance(Duration::from_millis(20_500));
    assert_eq!(
        outcome(&*store, &request(&clock, "org_a", "lease", b"x")).await,
        ClaimOutcome::InProgress {
            retry_after: Duration::from_secs(40)
        },
        "the remaining 39.5 s round up"
    );
    clock.advance(Duration::from_millis(39_499));
    assert_eq!(
        outcome(&*store, &request(&clock, "org_a", "lease", b"x")).await,
        ClaimOutcome::InProgress {
            retry_after: Duration::from_secs(1)
        },
        "never less than a second"
    );
    clock.advance(Duration::from_millis(1));
    let second = claimed(&*store, &request(&clock, "org_a", "lease", b"x")).await;
    assert_ne!(first, second);
    let now = clock.now_millis();
    let late = response(201, r#"{"from":"first"}"#);
    assert!(
        !store
            .complete(&first, &late, now, RETENTION)
            .await
            .expect("answers")
    );
    assert!(!store.release(&first).await.expect("answers"));
    assert!(matches!(
        outcome(&*store, &request(&clock, "org_a", "lease", b"x")).await,
        ClaimOutcome::InProgress { .. }
    ));
    let answer = response(201, r#"{"from":"second"}"#);
    assert!(
        store
            .complete(&second, &answer, now, RETENTION)
            .await
            .expect("answers")
    );
    assert_eq!(
        outcome(&*store, &request(&clock, "org_a", "lease", b"x")).await,
        ClaimOutcome::Replay(answer)
    );
    // A crashed holder whose request differed does not block a retry with another body
    // forever either: once the lease ends, the key is free.
    let _ = claimed(&*store, &request(&clock, "org_a", "crash", b"one")).await;
    clock.advance(LEASE);
    let _ = claimed(&*store, &request(&clock, "org_a", "crash", b"two")).await;
}

/// A released claim lets the retry run; a token completes or releases at most once.
pub async fn release_lets_a_retry_run<S: IdempotencyStore>(store: Arc<S>) {
    let clock = clock();
    let first = claimed(&*store, &request(&clock, "org_a", "retry", b"x")).await;
    assert!(store.release(&first).await.expect("answers"));
    assert!(
        !store.release(&first).await.expect("answers"),
        "released once"
    );
    let now = clock.now_millis();
    let answer = response(201, "{}");
    assert!(
        !store
            .complete(&first, &answer, now, RETENTION)
            .await
            .expect("answers"),
        "a released claim cannot complete"
    );
    // The retry may even carry another body: nothing was kept of the first attempt.
    let second = claimed(&*store, &request(&clock, "org_a", "retry", b"y")).await;
    assert!(
        store
            .complete(&second, &answer, now, RETENTION)
            .await
            .expect("answers")
    );
    assert!(
        !store
            .complete(&second, &answer, now, RETENTION)
            .await
            .expect("answers"),
        "completed once"
    );
    assert!(
        !store.release(&second).await.expect("answers"),
        "a completed record is not released"
    );
    assert_eq!(
        outcome(&*store, &request(&clock, "org_a", "retry", b"y")).await,
        ClaimOutcome::Replay(answer)
    );
}

/// A completed record replays until its retention ends, then counts as absent; pruning deletes
/// ended records (completed or claimed), at most `limit` at a time, and nothing else.
pub async fn retention_and_pruning<S: IdempotencyStore>(store: Arc<S>) {
    let clock = clock();
    let retention = Duration::from_secs(3600);
    let answer = response(201, "{}");
    for name in ["done-1", "done-2", "done-3"] {
        let token = claimed(&*store, &request(&clock, "org_p", name, b"x")).await;
        assert!(
            store
                .complete(&token, &answer, clock.now_millis(), retention)
                .await
                .expect("answers")
        );
    }
    // A claim whose lease ends long before the retention.
    let _ = claimed(&*store, &request(&clock, "org_p", "abandoned", b"x")).await;
    assert_eq!(
        store.prune(clock.now_millis(), 100).await.expect("answers"),
        0
    );

    clock.advance(LEASE);
    assert_eq!(
        store.prune(clock.now_millis(), 100).await.expect("answers"),
        1,
        "the ended lease only"
    );
    // Completed later, so kept longer.
    let token = claimed(&*store, &request(&clock, "org_p", "later", b"x")).await;
    assert!(
        store
            .complete(&token, &answer, clock.now_millis(), retention)
            .await
            .expect("answers")
    );

    clock.advance(retention - LEASE - Duration::from_millis(1));
    assert_eq!(
        outcome(&*store, &request(&clock, "org_p", "done-1", b"x")).await,
        ClaimOutcome::Replay(answer.clone()),
        "one millisecond before the end"
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        store.prune(clock.now_millis(), 2).await.expect("answers"),
        2
    );
    assert_eq!(
        store.prune(clock.now_millis(), 2).await.expect("answers"),
        1
    );
    assert_eq!(
        store.prune(clock.now_millis(), 2).await.expect("answers"),
        0
    );
    assert_eq!(
        outcome(&*store, &request(&clock, "org_p", "later", b"x")).await,
        ClaimOutcome::Replay(answer.clone()),
        "a record completed later is still kept"
    );
    // An ended record that was not pruned yet counts as absent too, even for another body.
    let token = claimed(&*store, &request(&clock, "org_p", "later-2", b"x")).await;
    assert!(
        store
            .complete(&token, &answer, clock.now_millis(), retention)
            .await
            .expect("answers")
    );
    clock.advance(retention);
    let _ = claimed(
        &*store,
        &request(&clock, "org_p", "later-2", b"another body"),
    )
    .await;
}

/// Runs every function of the suite on stores made by `store` (a fresh one each time).
pub async fn all<S: IdempotencyStore>(mut store: impl FnMut() -> Arc<S>) {
    concurrent_claims_elect_one(store()).await;
    replays_are_byte_identical(store()).await;
    mismatches_say_what_differs(store()).await;
    scopes_are_independent(store()).await;
    an_expired_lease_is_taken_over(store()).await;
    release_lets_a_retry_run(store()).await;
    retention_and_pruning(store()).await;
}
