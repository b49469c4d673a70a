//! Property: whatever response is completed comes back from PostgreSQL exactly (status, every
//! header in order, every body byte), and a request with another body is told what differs.
//! Needs `FAULTLINE_TEST_POSTGRES_URL`.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};

use faultline::clock::Clock;
use faultline::idempotency::{Difference, Fingerprint, IdempotencyKey};
use faultline_axum::idempotency::suite;
use faultline_axum::idempotency::{ClaimOutcome, ClaimRequest, IdempotencyStore, StoredResponse};
use faultline_postgres::testing::TestDatabase;
use faultline_postgres::{PgIdempotencyStore, PgPool};
use http::{HeaderName, HeaderValue, StatusCode};
use proptest::prelude::*;

fn header() -> impl Strategy<Value = (HeaderName, HeaderValue)> {
    let name = "[a-z][a-z0-9-]{0,20}".prop_map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap());
    // Visible ASCII, spaces, tabs and obs-text: every byte a header value may hold.
    let value =
        proptest::collection::vec(prop_oneof![0x20u8..0x7f, Just(b'\t'), 0x80u8..=0xff], 0..40)
            .prop_map(|bytes| {
                let trimmed = bytes.trim_ascii().to_vec();
                HeaderValue::from_bytes(&trimmed).unwrap()
            });
    (name, value)
}

fn response() -> impl Strategy<Value = StoredResponse> {
    (
        100u16..=999,
        proptest::collection::vec(header(), 0..6),
        proptest::collection::vec(any::<u8>(), 0..2048),
    )
        .prop_map(|(status, headers, body)| {
            StoredResponse::new(StatusCode::from_u16(status).unwrap(), headers, body)
        })
}

#[test]
fn any_response_round_trips_byte_for_byte() {
    let Some(db) = TestDatabase::migrated() else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = PgIdempotencyStore::new(PgPool::new(&db.options()).unwrap());
    let clock = suite::clock();
    let counter = AtomicU64::new(0);
    let config = ProptestConfig {
        cases: 48,
        ..ProptestConfig::default()
    };
    proptest!(config, |(answer in response(), body in proptest::collection::vec(any::<u8>(), 0..64))| {
        let key = IdempotencyKey::new(format!("prop-{}", counter.fetch_add(1, Ordering::Relaxed))).unwrap();
        let request = |body: &[u8]| ClaimRequest::new(
            "org_prop",
            key.clone(),
            Fingerprint::new("POST", "/v1/things", "", body),
            suite::LEASE,
            clock.now_millis(),
        );
        runtime.block_on(async {
            let ClaimOutcome::Claimed(token) = store.claim(&request(&body)).await.unwrap() else {
                panic!("a fresh key is claimed");
            };
            assert!(store
                .complete(&token, &answer, clock.now_millis(), suite::RETENTION)
                .await
                .unwrap());
            assert_eq!(
                store.claim(&request(&body)).await.unwrap(),
                ClaimOutcome::Replay(answer.clone())
            );
            let mut other = body.clone();
            other.push(b'!');
            assert_eq!(
                store.claim(&request(&other)).await.unwrap(),
                ClaimOutcome::Mismatch(Difference::Body)
            );
        });
    });
}
