//! [`StoreError`]: the one error type every store returns (key stores, the reference API's
//! tables, and later idempotency and limit stores), whatever engine is behind it.

use std::fmt;
use std::time::Duration;

use faultline::Situation;

use crate::contract::Error;

/// The future a store method returns: boxed, so that stores can sit behind `dyn` traits
/// (`dyn KeyLookup`, a readiness check, …; `auth::StoreFuture` is the same type).
pub type StoreFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// How long a client is told to wait when a store is unavailable, unless the store says.
pub const DEFAULT_UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A storage failure. Its text goes to logs only: a client sees the catalog's
/// service-unavailable code (with `Retry-After`) when the store is busy or unreachable, and the
/// internal error otherwise.
///
/// # A busy or unreachable store is a 503, never a 500
///
/// ```
/// use faultline_axum::StoreError;
/// let busy = StoreError::unavailable(std::io::Error::other("database is locked"));
/// assert!(busy.is_unavailable());
/// let bug = StoreError::new(std::io::Error::other("no such column"));
/// assert!(!bug.is_unavailable());
/// ```
#[derive(Debug)]
pub struct StoreError {
    kind: Kind,
    cause: Box<dyn std::error::Error + Send + Sync>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Busy, locked, unreachable, timed out: the same request may succeed later.
    Unavailable { retry_after: Duration },
    /// Anything else: a defect or corrupt data.
    Other,
}

impl StoreError {
    /// A failure that retrying will not fix (a defect, corrupt data).
    pub fn new(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError {
            kind: Kind::Other,
            cause: cause.into(),
        }
    }

    /// The store is busy or unreachable: the client is told to retry after
    /// [`DEFAULT_UNAVAILABLE_RETRY_AFTER`].
    pub fn unavailable(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError {
            kind: Kind::Unavailable {
                retry_after: DEFAULT_UNAVAILABLE_RETRY_AFTER,
            },
            cause: cause.into(),
        }
    }

    /// Sets the wait a client is told for an unavailable store (no effect on other failures).
    #[must_use]
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        if let Kind::Unavailable { retry_after } = &mut self.kind {
            *retry_after = wait;
        }
        self
    }

    /// Whether the store was busy or unreachable (the request may succeed later).
    pub fn is_unavailable(&self) -> bool {
        matches!(self.kind, Kind::Unavailable { .. })
    }

    /// How long a client should wait before retrying, for an unavailable store.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            Kind::Unavailable { retry_after } => Some(retry_after),
            Kind::Other => None,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Unavailable { .. } => write!(f, "store unavailable: {}", self.cause),
            Kind::Other => write!(f, "store failed: {}", self.cause),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.cause.as_ref())
    }
}

impl From<StoreError> for Error {
    /// A busy or unreachable store becomes the bound service-unavailable code with
    /// `Retry-After` (whole seconds, rounded up); any other failure the internal error. Either
    /// way the store error stays the cause: the faultline layer logs it with the request id
    /// (at warn for an outage, at error otherwise) and counts it in its metrics.
    fn from(e: StoreError) -> Self {
        match e.retry_after() {
            Some(wait) => {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Error::bound(Situation::ServiceUnavailable)
                    .with_header("Retry-After", seconds.max(1).to_string())
                    .with_cause(e)
            }
            None => Error::internal(e),
        }
    }
}
