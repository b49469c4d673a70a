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

mod encoding {
    use axum::http::{HeaderName, HeaderValue};
    use faultline_axum::idempotency::StoredResponse;
    use proptest::prelude::*;

    fn header() -> impl Strategy<Value = (HeaderName, HeaderValue)> {
        (
            "[a-z][a-z0-9-]{0,20}",
            proptest::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..40),
        )
            .prop_map(|(name, value)| {
                (
                    HeaderName::from_bytes(name.as_bytes()).expect("a valid name"),
                    HeaderValue::from_bytes(&value).expect("a valid value"),
                )
            })
    }

    proptest! {
        /// Any list of headers a response can hold survives the blob format, in order.
        #[test]
        fn headers_survive_the_blob(headers in proptest::collection::vec(header(), 0..8)) {
            let blob = StoredResponse::encode_headers(&headers);
            prop_assert_eq!(StoredResponse::decode_headers(&blob), Some(headers));
        }

        /// No blob panics the decoder.
        #[test]
        fn any_blob_decodes_or_is_refused(blob in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = StoredResponse::decode_headers(&blob);
        }
    }
}
