//! [`wait_at_start`]: retrying a start-up step while PostgreSQL is not reachable yet.

use std::future::Future;
use std::time::Duration;

use faultline_axum::StoreError;
use tokio::time::{Instant, sleep};

/// The first wait between two start-up attempts.
pub const START_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between two start-up attempts.
pub const START_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Runs `attempt` until it succeeds, while it fails as unavailable and `wait` has not passed
/// since the first attempt; returns its last answer.
///
/// Made for the start of a process that is started together with its database (a container
/// platform, a machine booting): instead of exiting at once, the process waits for the server.
///
/// # Backoff from 100 ms to 5 s, within the wait
///
/// After a failed attempt the next one comes 100 ms later, then twice as long each time, up to
/// 5 s ([`START_BACKOFF_MIN`], [`START_BACKOFF_MAX`]), and never after `wait` ran out: the last
/// attempt is made when it does. `wait` of zero makes one attempt.
///
/// # Each failure is logged, without secrets
///
/// Every failed attempt is logged at `warn` with `target` (the caller passes where the server
/// is, e.g. `host:port/dbname`, never the URL with its password), the attempt's number, the
/// error and the delay before the next one.
///
/// # A defect is not waited for
///
/// An error that is not [`StoreError::is_unavailable`] (a migration recorded by another build,
/// a bad statement) is returned at once: time will not fix it.
///
/// ```
/// # async fn demo() {
/// use std::time::Duration;
/// use faultline_axum::StoreError;
/// let mut tries = 0;
/// let answer = faultline_postgres::wait_at_start(Duration::from_secs(5), "db", || {
///     tries += 1;
///     let now = tries;
///     async move {
///         if now < 3 { Err(StoreError::unavailable("not yet")) } else { Ok(now) }
///     }
/// })
/// .await;
/// assert_eq!(answer.unwrap(), 3);
/// # }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo());
/// ```
pub async fn wait_at_start<T, F, Fut>(
    wait: Duration,
    target: &str,
    mut attempt: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let give_up = Instant::now() + wait;
    let mut backoff = START_BACKOFF_MIN;
    let mut tries: u32 = 0;
    loop {
        tries += 1;
        let error = match attempt().await {
            Ok(value) => {
                if tries > 1 {
                    tracing::info!(target_db = target, attempts = tries, "PostgreSQL reachable");
                }
                return Ok(value);
            }
            Err(e) if !e.is_unavailable() => return Err(e),
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= give_up {
            return Err(error);
        }
        let delay = backoff.min(give_up - now);
        tracing::warn!(
            target_db = target,
            attempt = tries,
            error = %describe(&error),
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "PostgreSQL not reachable at start-up; retrying"
        );
        sleep(delay).await;
        backoff = (backoff * 2).min(START_BACKOFF_MAX);
    }
}

/// `error` with its causes, `: `-separated (e.g. `store unavailable: error connecting to
/// server: Connection refused (os error 111)`), for a log line or an exit message. A
/// PostgreSQL error never carries the connection's password.
pub fn describe(error: &StoreError) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}
