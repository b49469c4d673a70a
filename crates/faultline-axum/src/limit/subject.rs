//! Who a request counts against: [`Caller`], found by a [`Subject`].

use std::sync::Arc;

use axum::http::request::Parts;

/// The caller a request's limits are counted for.
///
/// Built with [`Caller::new`]; the tier and custom keys are added after.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Caller {
    /// The organisation: the group all of its buckets live in (one Redis hash tag).
    pub org: Arc<str>,
    /// The API key (for `per = "key"` policies).
    pub key: Arc<str>,
    /// The plan tier; `None`: the catalog's default tier.
    pub tier: Option<Arc<str>>,
    /// Values for `per = "custom"` policies: `(policy name, bucket value)`. A custom policy
    /// without a value here does not apply to the request.
    pub custom: Vec<(String, String)>,
}

impl Caller {
    /// The caller using `key` of `org`, on the default tier.
    pub fn new(org: impl Into<Arc<str>>, key: impl Into<Arc<str>>) -> Self {
        Caller {
            org: org.into(),
            key: key.into(),
            tier: None,
            custom: Vec::new(),
        }
    }

    /// The same caller on `tier` (`None`: the default tier).
    #[must_use]
    pub fn with_tier(mut self, tier: Option<Arc<str>>) -> Self {
        self.tier = tier;
        self
    }

    /// The same caller with `value` as its bucket for the custom policy `policy`.
    #[must_use]
    pub fn with_custom(mut self, policy: &str, value: impl Into<String>) -> Self {
        self.custom.push((policy.to_owned(), value.into()));
        self
    }

    /// Its bucket value for the custom policy `policy`.
    pub fn custom_value(&self, policy: &str) -> Option<&str> {
        self.custom
            .iter()
            .find(|(p, _)| p == policy)
            .map(|(_, v)| v.as_str())
    }
}

/// Finds the [`Caller`] of a request; `None` lets the request through unlimited (e.g. a route
/// without authentication).
///
/// A closure `Fn(&Parts) -> Option<Caller>` is a subject:
///
/// ```
/// use faultline_axum::limit::{Caller, Subject};
/// let by_header = |parts: &axum::http::request::Parts| {
///     let tenant = parts.headers.get("x-tenant")?.to_str().ok()?;
///     Some(Caller::new(tenant, tenant))
/// };
/// let request = axum::http::Request::builder().header("x-tenant", "t1").body(()).unwrap();
/// let (parts, ()) = request.into_parts();
/// assert_eq!(by_header.identify(&parts).unwrap().org.as_ref(), "t1");
/// ```
pub trait Subject: Send + Sync + 'static {
    /// The caller of the request with these parts.
    fn identify(&self, parts: &Parts) -> Option<Caller>;
}

impl<F> Subject for F
where
    F: Fn(&Parts) -> Option<Caller> + Send + Sync + 'static,
{
    fn identify(&self, parts: &Parts) -> Option<Caller> {
        self(parts)
    }
}

/// The default subject: the [`crate::auth::Principal`] the auth layer put in the request (its
/// org, key id and org tier). A request without one is not limited.
#[cfg(feature = "auth")]
#[derive(Debug, Clone, Copy, Default)]
pub struct PrincipalSubject;

#[cfg(feature = "auth")]
impl Subject for PrincipalSubject {
    fn identify(&self, parts: &Parts) -> Option<Caller> {
        let principal = parts.extensions.get::<crate::auth::Principal>()?;
        Some(
            Caller::new(Arc::clone(&principal.org_id), Arc::clone(&principal.key_id))
                .with_tier(principal.tier.clone()),
        )
    }
}
