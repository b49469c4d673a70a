//! Situations: the standard failures a server raises itself, bound to codes by each catalog.

use std::fmt;

macro_rules! situations {
    ($($(#[$doc:meta])* $variant:ident => $name:literal, $typical:literal;)*) => {
        /// A standard failure that faultline's server layers raise themselves. Each catalog's
        /// `[bindings]` table says which of its codes stands for each one.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Situation {
            $($(#[$doc])* $variant,)*
        }

        impl Situation {
            /// Every situation, in the order of the catalog format's table.
            pub const ALL: &'static [Situation] = &[$(Situation::$variant,)*];

            /// The key used in `[bindings]`.
            pub const fn as_str(self) -> &'static str {
                match self { $(Situation::$variant => $name,)* }
            }

            /// The status such a code usually has, for docs and lint hints.
            pub const fn typical_status(self) -> &'static str {
                match self { $(Situation::$variant => $typical,)* }
            }
        }
    };
}

situations! {
    /// No route matches the path.
    RouteNotFound => "route_not_found", "404";
    /// The path exists, but not with this method.
    MethodNotAllowed => "method_not_allowed", "405";
    /// The body is not valid JSON.
    MalformedJson => "malformed_json", "400";
    /// The body parses but fails the schema or the validation rules.
    ValidationFailed => "validation_failed", "400 or 422";
    /// The query string fails validation.
    InvalidQuery => "invalid_query", "400";
    /// A path id is not a valid id.
    InvalidPathId => "invalid_path_id", "400";
    /// Missing or wrong `Content-Type`.
    UnsupportedMediaType => "unsupported_media_type", "415";
    /// The body is over the size limit.
    PayloadTooLarge => "payload_too_large", "413";
    /// The handler missed its deadline.
    Timeout => "timeout", "503 or 504";
    /// A panic or an unexpected error.
    Internal => "internal", "500";
    /// A resource does not exist or belongs to another tenant.
    ResourceNotFound => "resource_not_found", "404";
    /// No credential in the request.
    MissingApiKey => "missing_api_key", "401";
    /// Not `Bearer`, wrong prefix or bad checksum.
    MalformedApiKey => "malformed_api_key", "401";
    /// A well-formed key that is unknown.
    InvalidApiKey => "invalid_api_key", "401";
    /// The key was revoked.
    ApiKeyRevoked => "api_key_revoked", "401";
    /// The key is past its expiry.
    ApiKeyExpired => "api_key_expired", "401";
    /// The key is paused.
    ApiKeyPaused => "api_key_paused", "403";
    /// The key's organisation is inactive or deleted.
    OrgInactive => "org_inactive", "403";
    /// The key lacks the scope the route requires.
    ScopeDenied => "scope_denied", "403";
    /// A rate limit was hit.
    RateLimited => "rate_limited", "429";
    /// A usage quota is exhausted.
    QuotaExceeded => "quota_exceeded", "429 or 402";
    /// Too many requests in flight.
    ConcurrencyLimited => "concurrency_limited", "429";
    /// The `Idempotency-Key` header is malformed.
    IdempotencyKeyInvalid => "idempotency_key_invalid", "400";
    /// An idempotency key was reused with a different request.
    IdempotencyConflict => "idempotency_conflict", "409";
    /// A request with the same idempotency key is still running.
    IdempotencyInProgress => "idempotency_in_progress", "409";
    /// The bytes received are not an HTTP request (bad method, header, URI or version).
    MalformedRequest => "malformed_request", "400";
    /// The request's headers are too many or too large to read.
    RequestHeadersTooLarge => "request_headers_too_large", "431";
    /// The caller may not do this (a bare 403 from a handler or a tower layer).
    Forbidden => "forbidden", "403";
    /// The request conflicts with the current state (a bare 409).
    Conflict => "conflict", "409";
    /// A backing store or dependency is unreachable or busy: retry after `Retry-After`.
    ServiceUnavailable => "service_unavailable", "503";
}

impl std::str::FromStr for Situation {
    type Err = crate::names::UnknownName;

    /// Parses a `[bindings]` key.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| {
                crate::names::UnknownName::new(
                    "situation",
                    name,
                    Self::ALL.iter().map(|s| s.as_str()),
                )
            })
    }
}

impl fmt::Display for Situation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
