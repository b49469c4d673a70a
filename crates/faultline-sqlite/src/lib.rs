//! # faultline-sqlite
//!
//! The embedded default of faultline: SQLite behind the store traits of `faultline-axum`.
//! A user who stores nothing in SQLite does not depend on this crate, and so does not compile
//! SQLite's C code.
//!
//! - [`Pool`]: one database file in WAL mode, a writer connection and a few reader connections,
//!   so readers never wait for a writer; every call runs on tokio's blocking pool; a busy or
//!   locked database is answered as unavailable (the catalog's 503 with `Retry-After`), never
//!   as an internal error;
//! - [`SqliteKeyStore`]: API keys (as SHA-256 digests) and organisations, on a [`Pool`]; it
//!   implements both `faultline_axum::auth::KeyLookup` and `KeyAdmin`;
//! - [`idempotency`] (feature `idempotency`, on by default): idempotency records on a
//!   [`Pool`], and their completion inside a handler's own transaction.

#[cfg(feature = "idempotency")]
pub mod idempotency;
mod keys;
mod pool;

pub use keys::SqliteKeyStore;
pub use pool::{Pool, PoolOptions, store_error};
