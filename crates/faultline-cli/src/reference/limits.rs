//! The reference API's limits: the catalog's `[limits]` policies (per key and per
//! organisation, by plan tier) on every `/v1` route, in memory or shared through Redis, with
//! the quota counters in PostgreSQL when `serve` runs on it.

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
/// Nothing is opened here: connections are made on the first decision, and each call has the
/// pool's deadline, so a Redis that is down answers as the layer is configured (fail-open or
/// the catalog's 503), never with a hang. A URL that is not a Redis URL refuses to start.
/// Keys are under the prefix `faultline`, or `FAULTLINE_REDIS_PREFIX` when set (so that
/// several deployments, or tests, can share one Redis).
pub fn redis_store(url: &str) -> Result<Arc<dyn LimitStore>, StartError> {
    let store = faultline_redis::RedisLimitStore::connect(url).map_err(|e| {
        // Never echo a password given in the URL.
        let shown = match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}***{}", &url[..scheme + 3], &url[at..])
            }
            _ => url.to_owned(),
        };
        StartError(format!("--redis-url {shown}: {e}"))
    })?;
    let store = match std::env::var("FAULTLINE_REDIS_PREFIX") {
        Ok(prefix) if !prefix.is_empty() => store.with_prefix(&prefix),
        _ => store,
    };
    Ok(Arc::new(store))
}

/// With `serve --database-url`: the quota counters (e.g. `monthly_requests`) in PostgreSQL on
/// `pool`, around `inner` (Redis or memory) for the rate and concurrency checks.
///
/// A month's usage then survives restarts of every process and of Redis (which keeps nothing
/// on disk), and is exact across the processes on the database; a request is still decided
/// as one step over both stores (see [`faultline_postgres::PgQuotaStore`]). PostgreSQL errors
/// reach the limit layer as store errors, so `--limits-on-failure` applies to them too, and
/// `/metrics` counts them: as `faultline_limiter_decisions_total` with the outcome
/// `failed_open` or `failed_closed`, and, when answered 503 (`closed`), in
/// `faultline_store_errors_total{kind="unavailable"}`.
pub fn quotas_on_postgres(
    pool: faultline_postgres::PgPool,
    inner: Arc<dyn LimitStore>,
) -> Arc<faultline_postgres::PgQuotaStore> {
    Arc::new(faultline_postgres::PgQuotaStore::new(pool, inner))
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
