//! [`Health`]: `GET /healthz` (the process answers) and `GET /readyz` (its stores answer), for
//! load balancers and orchestrators.
//!
//! Both routes sit outside any key check: add them to the router next to the API, not under
//! its `route_layer`s. `/healthz` answers `200 {"status":"ok"}` as long as the process serves
//! requests. `/readyz` runs every registered [`ReadinessCheck`] at once, each under the same
//! deadline, and answers `200 {"status":"ready","checks":{...}}` when all pass.
//!
//! # A store that is down or slow makes `/readyz` a catalog 503, never a hang
//!
//! A check that fails, or does not answer within the deadline, makes `/readyz` answer the
//! code bound to `service_unavailable` with `Retry-After`, like any other outage; the failing
//! check's cause is logged with the request id (never sent) and counted as a store error.
//!
//! # Draining
//!
//! Once [`Health::start_draining`] is called (on `SIGTERM`, before the server stops
//! accepting), `/readyz` answers 503 too, so the load balancer sends no new requests while the
//! ones in flight finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use serde_json::{Map, Value, json};

use crate::contract::Error;
use crate::store::{StoreError, StoreFuture};

/// How long `/readyz` waits for a check by default.
pub const DEFAULT_CHECK_DEADLINE: Duration = Duration::from_secs(2);

/// One dependency `/readyz` asks: `Ok` when it answers. Closures returning a future implement
/// it: `|| async { Ok(()) }`.
pub trait ReadinessCheck: Send + Sync + 'static {
    /// Asks the dependency once.
    fn check(&self) -> StoreFuture<'_, ()>;
}

impl<F, Fut> ReadinessCheck for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), StoreError>> + Send + 'static,
{
    fn check(&self) -> StoreFuture<'_, ()> {
        Box::pin(self())
    }
}

/// The health routes and their checks; see the [module docs](self). Clones share state.
#[derive(Clone)]
pub struct Health {
    checks: Arc<Vec<(String, Arc<dyn ReadinessCheck>)>>,
    deadline: Duration,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.checks.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Health")
            .field("checks", &names)
            .field("deadline", &self.deadline)
            .field("draining", &self.is_draining())
            .finish()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// No checks yet, [`DEFAULT_CHECK_DEADLINE`] per check.
    pub fn new() -> Self {
        Health {
            checks: Arc::new(Vec::new()),
            deadline: DEFAULT_CHECK_DEADLINE,
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Adds a check named `name` (the name shows in `/readyz`'s body and in logs).
    #[must_use]
    pub fn check(mut self, name: impl Into<String>, check: impl ReadinessCheck) -> Self {
        Arc::make_mut(&mut self.checks).push((name.into(), Arc::new(check)));
        self
    }

    /// How long each check may take.
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// From now on `/readyz` answers 503: the process is shutting down.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether [`Health::start_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Runs every check at once; the first failure (in registration order) if any fails.
    ///
    /// # Errors
    ///
    /// The failing check's [`StoreError`], an unavailable one naming the check when it timed
    /// out, or an unavailable one when the process is draining.
    pub async fn ready(&self) -> Result<Vec<&str>, StoreError> {
        if self.is_draining() {
            return Err(StoreError::unavailable(std::io::Error::other(
                "the process is shutting down",
            )));
        }
        let runs = self.checks.iter().map(|(name, check)| async move {
            match tokio::time::timeout(self.deadline, check.check()).await {
                Ok(Ok(())) => Ok(name.as_str()),
                // Whatever the check's failure, the dependency is not there: a 503.
                Ok(Err(e)) if e.is_unavailable() => Err(e),
                Ok(Err(e)) => Err(StoreError::unavailable(e)),
                Err(_) => Err(StoreError::unavailable(std::io::Error::other(format!(
                    "readiness check `{name}` did not answer within {:?}",
                    self.deadline
                )))),
            }
        });
        let mut names = Vec::with_capacity(self.checks.len());
        for outcome in join_all(runs).await {
            names.push(outcome?);
        }
        Ok(names)
    }

    /// `GET /healthz` and `GET /readyz`, to merge into an app's router.
    pub fn routes<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let health = self.clone();
        Router::new()
            .route(
                "/healthz",
                get(|| async { axum::Json(json!({"status": "ok"})) }),
            )
            .route(
                "/readyz",
                get(move || {
                    let health = health.clone();
                    async move {
                        let names = health.ready().await.map_err(Error::from)?;
                        let checks: Map<String, Value> = names
                            .into_iter()
                            .map(|name| (name.to_owned(), Value::from("ok")))
                            .collect();
                        Ok::<_, Error>(axum::Json(json!({"status": "ready", "checks": checks})))
                    }
                }),
            )
    }
}

/// Polls every future at once and gives their outputs in order (the crate does not depend on
/// `futures` for this one use).
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
