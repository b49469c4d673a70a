//! Idempotency keys (feature `idempotency`): a request that carries an `Idempotency-Key` runs
//! its handler at most once per key, and every retry with the same key and the same request
//! gets the first answer back, byte for byte.
//!
//! - [`IdempotencyLayer`]: the middleware (see its docs for every rule), and
//!   [`IdempotencyClaim`], the handle a handler completes its record with in its own
//!   transaction;
//! - [`store`]: the [`IdempotencyStore`] trait (one atomic claim, then complete or release),
//!   the records it keeps and [`MemoryIdempotencyStore`]; engines live in their own crates
//!   (`faultline-sqlite`, `faultline-postgres`);
//! - `suite` (feature `store-suite`): the behaviour every store must show, run by each
//!   store crate's tests.
//!
//! The header's syntax and the request fingerprint are in [`faultline::idempotency`].

mod layer;
pub mod store;
#[cfg(feature = "store-suite")]
pub mod suite;

pub use layer::{
    DEFAULT_KEPT_HEADERS, DEFAULT_MAX_STORED_BODY, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED,
    Idempotency, IdempotencyClaim, IdempotencyFuture, IdempotencyLayer, KeyedFuture, PRUNE_BATCH,
    ReplayBody, spawn_pruning,
};
pub use store::{
    ClaimOutcome, ClaimRequest, ClaimToken, IdempotencyStore, LocalClaims, MemoryIdempotencyStore,
    StoredResponse,
};
