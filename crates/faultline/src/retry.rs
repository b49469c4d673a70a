//! Retry advice: what a client may do after receiving a code.

use std::fmt;

/// What the contract says a client may do after an error with this code.
///
/// The advice is part of each catalog entry; the docs page explains each class and the
/// client follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RetryAdvice {
    /// Do not retry: the request has to change first.
    Never,
    /// Retry once the number of seconds in the `Retry-After` header has passed.
    AfterRetryAfter,
    /// Retry with bounded exponential backoff and jitter.
    Backoff,
    /// Retry only when the request is idempotent: a safe method, or an `Idempotency-Key`.
    WithIdempotencyKey,
}

impl RetryAdvice {
    /// Every advice class, in the order the docs list them.
    pub const ALL: [RetryAdvice; 4] = [
        RetryAdvice::Never,
        RetryAdvice::AfterRetryAfter,
        RetryAdvice::Backoff,
        RetryAdvice::WithIdempotencyKey,
    ];

    /// The name used in catalog files.
    pub const fn as_str(self) -> &'static str {
        match self {
            RetryAdvice::Never => "never",
            RetryAdvice::AfterRetryAfter => "after_retry_after",
            RetryAdvice::Backoff => "backoff",
            RetryAdvice::WithIdempotencyKey => "with_idempotency_key",
        }
    }

    /// Parses a catalog name; `None` for an unknown one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// A short label for tables.
    pub const fn label(self) -> &'static str {
        match self {
            RetryAdvice::Never => "Do not retry",
            RetryAdvice::AfterRetryAfter => "Retry after `Retry-After`",
            RetryAdvice::Backoff => "Retry with backoff",
            RetryAdvice::WithIdempotencyKey => "Retry if idempotent",
        }
    }

    /// One sentence telling a client what to do, for the docs page.
    pub const fn explanation(self) -> &'static str {
        match self {
            RetryAdvice::Never => {
                "Sending the same request again gives the same answer. Change the request, \
                 the credentials or the account state first."
            }
            RetryAdvice::AfterRetryAfter => {
                "Wait for the number of seconds given in the `Retry-After` header, then send \
                 the request again. Add a little random jitter when many workers share a key."
            }
            RetryAdvice::Backoff => {
                "The failure is transient. Retry with exponential backoff and jitter \
                 (for example 0.5 s, 1 s, 2 s, capped), and give up after a few attempts."
            }
            RetryAdvice::WithIdempotencyKey => {
                "Retry with backoff when the request is idempotent: GET, PUT and DELETE always \
                 are, and a POST is when it carries an `Idempotency-Key` header."
            }
        }
    }
}

impl fmt::Display for RetryAdvice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for advice in RetryAdvice::ALL {
            assert_eq!(RetryAdvice::from_name(advice.as_str()), Some(advice));
        }
        assert_eq!(RetryAdvice::from_name("sometimes"), None);
    }
}
