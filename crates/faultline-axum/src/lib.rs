//! # faultline-axum
//!
//! faultline for axum and tower: every non-2xx answer of an app is an error from its catalog,
//! in the catalog's envelope profile, with the request id in body and header.
//!
//! - [`Faultline::install`] wraps a [`axum::Router`]: request ids, unknown routes and methods,
//!   body limits, timeouts and panics all become catalog errors;
//! - [`Json`], [`Query`] and [`Path`] are drop-in extractors whose rejections are catalog
//!   errors, with every field problem collected;
//! - `ValidJson` (feature `garde`) adds garde's rules, reported in the same details;
//! - handlers return `Result<_, faultline_axum::Error>`; an [`faultline::ApiError`] from a
//!   generated constructor converts with `?`;
//! - [`serve`] with a [`ContractListener`] makes hyper's own refusals (unreadable requests,
//!   oversized headers) catalog errors too, without ever touching a byte the application wrote,
//!   and closes slow, idle and excess connections;
//! - [`auth`] (feature `auth`, on by default): API keys, scopes and tenancy; its stores on
//!   SQLite are in the `faultline-sqlite` crate;
//! - `idempotency` (feature `idempotency`): `Idempotency-Key` honoured, one execution per key,
//!   byte-identical replays; its SQLite store is in `faultline-sqlite`;
//! - [`refuse::RefuseOr`]: the response future every guarding middleware shares.
//!
//! # Layout
//!
//! One module per middleware, each behind its own feature, with its layer, its service and its
//! future; store traits and in-memory stores live here, storage engines in crates of their own
//! (`faultline-sqlite` now), so an app that stores nothing in SQLite does not compile SQLite.
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `auth` | yes | [`auth`]: API keys (checksum format, SHA-256 digests, constant-time checks, a cache), scopes, tenancy, `KeyLookup`/`KeyAdmin` with an in-memory store |
//! | `limit` | no | [`limit`]: rate limits (GCRA), quotas and concurrency limits from the catalog's `[limits]`, one atomic decision per request, IETF `RateLimit` headers, `LimitStore` with a sharded in-memory store |
//! | `idempotency` | no | `idempotency`: `Idempotency-Key` claims, replays and conflicts, the store trait and an in-memory store |
//! | `garde` | no | `ValidJson`: garde's rules after the schema, in the same details |
//!
//! Without any feature the crate still gives the layer, the renderer, the extractors, the
//! listener and [`StoreError`].

#[cfg(feature = "auth")]
pub mod auth;
#[cfg(any(feature = "auth", feature = "limit"))]
pub mod clock;
pub mod contract;
pub mod extract;
pub mod health;
#[cfg(feature = "idempotency")]
pub mod idempotency;
pub mod layer;
#[cfg(feature = "limit")]
pub mod limit;
pub mod listener;
pub mod metrics;
mod problems;
pub mod refuse;
pub mod request_id;
pub mod store;

pub use contract::{Contract, Error, MissingBindings, Problems};
#[cfg(feature = "garde")]
pub use extract::ValidJson;
pub use extract::{Json, Path, Query, UnsupportedSchema, ensure_supported};
pub use health::{Health, ReadinessCheck};
pub use layer::{BodyLimit, DefaultStatusMapper, Faultline, FaultlineLayer, StatusMapper};
pub use listener::{ContractIo, ContractListener, serve};
pub use metrics::Metrics;
pub use request_id::RequestId;
pub use store::{StoreError, StoreFuture};
