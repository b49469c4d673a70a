//! [`RequireScopeLayer`]: a route answers only to keys that hold a scope.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::Request;
use axum::response::Response;
use faultline::Situation;
use faultline::details::RequiredScope;
use tower::{Layer, Service};

use super::Principal;
use crate::contract::Error;
use crate::refuse::RefuseOr;

/// Refuses requests whose key lacks `scope`, with the catalog's scope-denied code and
/// `details.required` naming the scope. Put it inside [`super::AuthLayer`]; a request that
/// reaches it without a principal is treated as carrying no key.
///
/// ```
/// # use axum::{Router, routing::post};
/// use faultline_axum::auth::RequireScopeLayer;
/// let app: Router = Router::new().route(
///     "/v1/chatbots",
///     post(|| async {}).layer(RequireScopeLayer::new("chatbots:write")),
/// );
/// ```
#[derive(Debug, Clone)]
pub struct RequireScopeLayer {
    scope: Arc<str>,
}

impl RequireScopeLayer {
    /// Requires `scope`.
    pub fn new(scope: &str) -> Self {
        RequireScopeLayer {
            scope: scope.into(),
        }
    }
}

impl<S> Layer<S> for RequireScopeLayer {
    type Service = RequireScope<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScope {
            inner,
            scope: Arc::clone(&self.scope),
        }
    }
}

/// The service made by [`RequireScopeLayer`].
#[derive(Debug, Clone)]
pub struct RequireScope<S> {
    inner: S,
    scope: Arc<str>,
}

/// The response future of [`RequireScope`].
pub type ScopeFuture<F> = RefuseOr<F>;

impl<S, B> Service<Request<B>> for RequireScope<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ScopeFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match request.extensions().get::<Principal>() {
            Some(principal) if principal.has_scope(&self.scope) => {
                RefuseOr::allow(self.inner.call(request))
            }
            Some(_) => RefuseOr::refuse(Error::bound(Situation::ScopeDenied).with_details(
                RequiredScope {
                    required: self.scope.to_string(),
                },
            )),
            None => RefuseOr::refuse(Error::bound(Situation::MissingApiKey)),
        }
    }
}
