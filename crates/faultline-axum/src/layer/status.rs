//! Which situation a bare error status stands for: [`StatusMapper`] and its default.

use axum::http::StatusCode;
use axum::http::response::Parts;
use faultline::Situation;

/// Says which situation a bare error status stands for: a status of 400 or more that a handler
/// or a tower layer returned without a body the renderer produced (a `StatusCode` alone, a
/// `tower::load_shed` refusal turned into a 503, a timeout's 408).
///
/// The faultline layer renders the code the catalog binds to that situation. `None`, or a
/// situation the catalog leaves unbound, gives the internal error and a warning naming the
/// status and the route.
///
/// Closures implement it, so an app can extend the default mapping:
///
/// ```
/// use axum::http::{StatusCode, response::Parts};
/// use faultline::Situation;
/// use faultline_axum::layer::{DefaultStatusMapper, StatusMapper};
///
/// let mapper = |status: StatusCode, _: &Parts| match status {
///     StatusCode::PAYMENT_REQUIRED => Some(Situation::QuotaExceeded),
///     _ => DefaultStatusMapper::map(status),
/// };
/// let (parts, _) = axum::http::Response::new(()).into_parts();
/// assert_eq!(mapper.situation(StatusCode::PAYMENT_REQUIRED, &parts), Some(Situation::QuotaExceeded));
/// assert_eq!(mapper.situation(StatusCode::TOO_MANY_REQUESTS, &parts), Some(Situation::RateLimited));
/// ```
pub trait StatusMapper: Send + Sync + 'static {
    /// The situation `status` stands for; `parts` is the head of the bare response (its
    /// headers, its extensions).
    fn situation(&self, status: StatusCode, parts: &Parts) -> Option<Situation>;
}

impl<F> StatusMapper for F
where
    F: Fn(StatusCode, &Parts) -> Option<Situation> + Send + Sync + 'static,
{
    fn situation(&self, status: StatusCode, parts: &Parts) -> Option<Situation> {
        self(status, parts)
    }
}

/// The mapping [`crate::Faultline`] uses unless told otherwise.
///
/// # Every common error status has a situation
///
/// | status | situation |
/// |---|---|
/// | 400, 422 | `validation_failed` |
/// | 401 | `missing_api_key` |
/// | 403 | `forbidden` (`scope_denied` when the catalog leaves `forbidden` unbound) |
/// | 404 | `route_not_found` |
/// | 405 | `method_not_allowed` |
/// | 408, 504 | `timeout` |
/// | 409 | `conflict` |
/// | 413 | `payload_too_large` |
/// | 415 | `unsupported_media_type` |
/// | 429 | `rate_limited` |
/// | 431 | `request_headers_too_large` |
/// | 500 | `internal` |
/// | 503 | `service_unavailable` |
///
/// Any other status has none.
///
/// ```
/// use axum::http::StatusCode;
/// use faultline::Situation;
/// use faultline_axum::layer::DefaultStatusMapper;
/// assert_eq!(DefaultStatusMapper::map(StatusCode::CONFLICT), Some(Situation::Conflict));
/// assert_eq!(DefaultStatusMapper::map(StatusCode::IM_A_TEAPOT), None);
/// ```
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct DefaultStatusMapper;

impl DefaultStatusMapper {
    /// The situation of `status` in the table above.
    pub fn map(status: StatusCode) -> Option<Situation> {
        Some(match status.as_u16() {
            400 | 422 => Situation::ValidationFailed,
            401 => Situation::MissingApiKey,
            403 => Situation::Forbidden,
            404 => Situation::RouteNotFound,
            405 => Situation::MethodNotAllowed,
            408 | 504 => Situation::Timeout,
            409 => Situation::Conflict,
            413 => Situation::PayloadTooLarge,
            415 => Situation::UnsupportedMediaType,
            429 => Situation::RateLimited,
            431 => Situation::RequestHeadersTooLarge,
            500 => Situation::Internal,
            503 => Situation::ServiceUnavailable,
            _ => return None,
        })
    }
}

impl StatusMapper for DefaultStatusMapper {
    fn situation(&self, status: StatusCode, _parts: &Parts) -> Option<Situation> {
        Self::map(status)
    }
}
