//! The reference API's limits: the catalog's `[limits]` policies (per key and per
//! organisation, by plan tier) on every `/v1` route, in memory or shared through Redis.

use std::sync::Arc;

use faultline_axum::limit::{LimitStore, MemoryLimitStore};

use super::StartError;

/// Where `serve` keeps its limit buckets: in this process, unless `--redis-url` names a Redis
/// shared by several processes.
pub fn limit_store(redis_url: Option<&str>) -> Result<Arc<dyn LimitStore>, StartError> {
    match redis_url {
        None => Ok(Arc::new(MemoryLimitStore::new())),
        Some(url) => redis_store(url),
    }
}

/// HOOK for the `faultline-redis` crate: the Redis limit store at `url` (e.g.
/// `redis://127.0.0.1:6379`), shared by every process given the same URL.
///
/// Until that crate is wired in here, `serve --redis-url` refuses to start rather than
/// silently limiting each process on its own.
pub fn redis_store(url: &str) -> Result<Arc<dyn LimitStore>, StartError> {
    Err(StartError(format!(
        "--redis-url {url}: this build has no Redis limit store (faultline-redis is not wired in yet)"
    )))
}

/// Checks that `tier` is one of the catalog's tiers, for `faultline orgs set-tier`.
pub fn known_tier(catalog: &faultline::Catalog, tier: &str) -> Result<(), StartError> {
    let tiers = &catalog.limits().tiers;
    if tiers.iter().any(|t| t == tier) {
        Ok(())
    } else {
        Err(StartError(format!(
            "unknown tier `{tier}`; the catalog's tiers: {}",
            tiers.join(", ")
        )))
    }
}
