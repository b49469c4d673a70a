//! [`AuthLayer`]: every request must carry a valid API key; its [`Principal`] goes into the
//! request's extensions.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::Request;
use axum::http::header::AUTHORIZATION;
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{AuthFailure, Authenticator, Principal};
use crate::contract::Error;
use crate::refuse::RefuseOr;

/// Requires an API key on every request of the wrapped service.
///
/// Add it with `Router::route_layer`, so that unknown routes still answer not found rather
/// than asking for a key.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// Verifies with `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        AuthLayer { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            auth: Arc::clone(&self.auth),
        }
    }
}

/// The service made by [`AuthLayer`] (named `AuthService` before 0.2).
#[doc(alias = "AuthService")]
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

/// The former name of [`Auth`].
#[deprecated(note = "renamed `Auth`, as tower-http names its services")]
pub type AuthService<S> = Auth<S>;

/// The response future of [`Auth`]: a refusal, or the request on its way in.
pub type AuthFuture<F> = RefuseOr<VerifyFuture<F>>;

type BoxResponse = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

pin_project! {
    /// A request [`Auth`] let through, or is still verifying.
    pub struct VerifyFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        /// Verified from the cache: the inner service's own future, not boxed.
        Cached { #[pin] future: F },
        /// The store had to be asked: verification, then the inner call (boxed, rare).
        Store { future: BoxResponse },
    }
}

impl<F> Future for VerifyFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Cached { future } => future.poll(cx),
            StateProj::Store { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S, B> Service<Request<B>> for Auth<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = AuthFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // The token is borrowed from the request while the cache decides; it is copied only
        // when the store has to be asked.
        let verdict = match Authenticator::credential(request.headers().get(AUTHORIZATION)) {
            Ok(token) => self
                .auth
                .verify_cached(token)
                .ok_or_else(|| token.to_owned()),
            Err(situation) => Ok(Err(AuthFailure::Refused(situation))),
        };
        match verdict {
            Ok(Ok(principal)) => {
                request.extensions_mut().insert::<Principal>(principal);
                RefuseOr::allow(VerifyFuture {
                    state: State::Cached {
                        future: self.inner.call(request),
                    },
                })
            }
            Ok(Err(failure)) => RefuseOr::refuse(Error::from(failure)),
            Err(token) => {
                // The service that was polled ready is the one that must be called.
                let ready = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, ready);
                let auth = Arc::clone(&self.auth);
                RefuseOr::allow(VerifyFuture {
                    state: State::Store {
                        future: Box::pin(async move {
                            match auth.verify(&token).await {
                                Ok(principal) => {
                                    request.extensions_mut().insert::<Principal>(principal);
                                    inner.call(request).await
                                }
                                Err(failure) => Ok(Error::from(failure).into_response()),
                            }
                        }),
                    },
                })
            }
        }
    }
}
