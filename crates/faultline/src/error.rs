//! [`ApiError`]: one occurrence of a catalog error.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::details::IntoDetails;
use crate::retry::RetryAdvice;

/// A catalog entry known at compile time: what `catalog!` generates for each code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorDef {
    /// The stable machine code.
    pub code: &'static str,
    /// The code's one HTTP status.
    pub status: u16,
    /// Short name, used as the problem+json `title`.
    pub title: &'static str,
    /// The default message.
    pub message: &'static str,
    /// What a client may do.
    pub retry: RetryAdvice,
}

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// One occurrence of a catalog error, ready to be rendered in any envelope profile.
///
/// Build it from a generated constructor (see the `catalog!` macro), from
/// [`ErrorDef`], or at run time from a loaded [`Catalog`](crate::Catalog).
///
/// # The message never carries a source error's text
///
/// [`ApiError::with_source`] keeps the cause for logs (it is returned by
/// [`std::error::Error::source`]) but leaves the message alone, so nothing internal reaches
/// the response body.
///
/// ```
/// use faultline::{ApiError, ErrorDef, RetryAdvice};
/// const INTERNAL: ErrorDef = ErrorDef {
///     code: "internal_error", status: 500, title: "Internal error",
///     message: "Something went wrong on our side.", retry: RetryAdvice::WithIdempotencyKey,
/// };
/// let cause = std::io::Error::other("disk /var/lib/db full");
/// let error = ApiError::from_def(&INTERNAL).with_source(cause);
/// assert_eq!(error.message(), "Something went wrong on our side.");
/// assert!(!error.to_string().contains("/var/lib"));
/// assert!(std::error::Error::source(&error).is_some());
/// ```
pub struct ApiError(Box<Inner>);

struct Inner {
    code: Cow<'static, str>,
    status: u16,
    title: Cow<'static, str>,
    message: Cow<'static, str>,
    retry: RetryAdvice,
    details: Option<Value>,
    headers: Vec<(Cow<'static, str>, String)>,
    source: Option<BoxError>,
}

impl ApiError {
    /// An error for a compile-time catalog entry, with its default message and no details.
    pub fn from_def(def: &ErrorDef) -> Self {
        Self::from_parts(
            Cow::Borrowed(def.code),
            def.status,
            Cow::Borrowed(def.title),
            Cow::Borrowed(def.message),
            def.retry,
        )
    }

    /// An error from its parts. Prefer generated constructors, which can only name codes that
    /// exist; this is for run-time catalogs and for parsers.
    pub fn from_parts(
        code: Cow<'static, str>,
        status: u16,
        title: Cow<'static, str>,
        message: Cow<'static, str>,
        retry: RetryAdvice,
    ) -> Self {
        ApiError(Box::new(Inner {
            code,
            status,
            title,
            message,
            retry,
            details: None,
            headers: Vec::new(),
            source: None,
        }))
    }

    /// Replaces the catalog's default message for this occurrence. The text goes to callers:
    /// keep it safe to show an end user.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.0.message = message.into();
        self
    }

    /// Sets the details.
    #[must_use]
    pub fn with_details(mut self, details: impl IntoDetails) -> Self {
        self.0.details = Some(details.into_details());
        self
    }

    /// Adds a response header, e.g. `Allow` on a 405.
    #[must_use]
    pub fn with_header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<String>,
    ) -> Self {
        let name = name.into();
        self.0
            .headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
        self.0.headers.push((name, value.into()));
        self
    }

    /// Sets `Retry-After` in whole seconds, rounding up so a client never retries early.
    #[must_use]
    pub fn with_retry_after(self, wait: Duration) -> Self {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.with_header("Retry-After", seconds.to_string())
    }

    /// Keeps `source` as the cause, for logs. The message is not changed.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.0.source = Some(source.into());
        self
    }

    /// The stable machine code.
    pub fn code(&self) -> &str {
        &self.0.code
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.0.status
    }

    /// The short title of the code.
    pub fn title(&self) -> &str {
        &self.0.title
    }

    /// The message sent to the caller.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The retry advice of the code.
    pub fn retry(&self) -> RetryAdvice {
        self.0.retry
    }

    /// The details, if any.
    pub fn details(&self) -> Option<&Value> {
        self.0.details.as_ref()
    }

    /// Extra response headers.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.headers.iter().map(|(n, v)| (n.as_ref(), v.as_str()))
    }

    /// The value of one extra header, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiError")
            .field("code", &self.0.code)
            .field("status", &self.0.status)
            .field("message", &self.0.message)
            .field("details", &self.0.details)
            .field("headers", &self.0.headers)
            .field("source", &self.0.source)
            .finish()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.0.code, self.0.status, self.0.message)
    }
}

impl StdError for ApiError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: ErrorDef = ErrorDef {
        code: "rate_limited",
        status: 429,
        title: "Rate limited",
        message: "Too many requests.",
        retry: RetryAdvice::AfterRetryAfter,
    };

    #[test]
    fn retry_after_rounds_up() {
        let e = ApiError::from_def(&RATE).with_retry_after(Duration::from_millis(1500));
        assert_eq!(e.header("retry-after"), Some("2"));
        let e = e.with_retry_after(Duration::from_secs(3));
        assert_eq!(e.header("Retry-After"), Some("3"));
        assert_eq!(e.headers().count(), 1, "setting a header twice replaces it");
    }

    #[test]
    fn display_and_overrides() {
        let e = ApiError::from_def(&RATE).with_message("Slow down.");
        assert_eq!(e.to_string(), "rate_limited (429): Slow down.");
        assert_eq!(e.title(), "Rate limited");
        assert_eq!(e.retry(), RetryAdvice::AfterRetryAfter);
        assert!(e.details().is_none());
    }

    #[test]
    fn api_error_is_small() {
        assert_eq!(
            std::mem::size_of::<ApiError>(),
            std::mem::size_of::<usize>()
        );
    }
}
