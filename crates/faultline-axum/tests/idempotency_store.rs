//! The idempotency store suite on the in-memory store.
#![cfg(all(feature = "idempotency", feature = "store-suite"))]

use std::sync::Arc;

use faultline_axum::idempotency::{MemoryIdempotencyStore, suite};

fn store() -> Arc<MemoryIdempotencyStore> {
    Arc::new(MemoryIdempotencyStore::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claims_elect_one() {
    suite::concurrent_claims_elect_one(store()).await;
}

#[tokio::test]
async fn replays_are_byte_identical() {
    suite::replays_are_byte_identical(store()).await;
}

#[tokio::test]
async fn mismatches_say_what_differs() {
    suite::mismatches_say_what_differs(store()).await;
}

#[tokio::test]
async fn scopes_are_independent() {
    suite::scopes_are_independent(store()).await;
}

#[tokio::test]
async fn an_expired_lease_is_taken_over() {
    suite::an_expired_lease_is_taken_over(store()).await;
}

#[tokio::test]
async fn release_lets_a_retry_run() {
    suite::release_lets_a_retry_run(store()).await;
}

#[tokio::test]
async fn retention_and_pruning() {
    suite::retention_and_pruning(store()).await;
    let s = store();
    suite::retention_and_pruning(Arc::clone(&s)).await;
    assert!(!s.is_empty(), "records still within retention are kept");
}
