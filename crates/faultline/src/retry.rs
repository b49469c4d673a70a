//! Retry advice: what a client may do after receiving a code.

crate::names::named_enum! {
    /// What the contract says a client may do after an error with this code.
    ///
    /// The advice is part of each catalog entry; the docs page explains each class and the
    /// client follows it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum RetryAdvice ("retry advice") {
        /// Do not retry: the request has to change first.
        Never => "never",
        /// Retry once the number of seconds in the `Retry-After` header has passed.
        AfterRetryAfter => "after_retry_after",
        /// Retry with bounded exponential backoff and jitter.
        Backoff => "backoff",
        /// Retry only when the request is idempotent: a safe method, or an `Idempotency-Key`.
        WithIdempotencyKey => "with_idempotency_key",
    }
}

impl RetryAdvice {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for advice in RetryAdvice::ALL {
            assert_eq!(advice.as_str().parse(), Ok(advice));
            assert_eq!(advice.to_string(), advice.as_str());
        }
        let error = "sometimes".parse::<RetryAdvice>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown retry advice `sometimes`; expected one of never, after_retry_after, backoff, with_idempotency_key"
        );
    }
}
