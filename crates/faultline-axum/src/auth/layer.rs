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
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: Arc::clone(&self.auth),
        }
    }
}

/// The service made by [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

type BoxResponse = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

pin_project! {
    /// The response future of [`AuthService`].
    pub struct AuthFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
        #[project = AuthFutureProj]
    enum State<F> {
        /// Verified from the cache: the inner service's own future.
        Inner { #[pin] future: F },
        /// The store had to be asked.
        Store { future: BoxResponse },
        /// Refused before the inner service was called.
        Refused { response: Option<Response> },
    }
}

impl<F> Future for AuthFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            AuthFutureProj::Inner { future } => future.poll(cx),
            AuthFutureProj::Store { future } => future.as_mut().poll(cx),
            AuthFutureProj::Refused { response } => Poll::Ready(Ok(response
                .take()
                .expect("AuthFuture polled after completion"))),
        }
    }
}

impl<S, B> Service<Request<B>> for AuthService<S>
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
        let refused = |failure: AuthFailure| {
            AuthFuture::from(State::Refused {
                response: Some(Error::from(failure).into_response()),
            })
        };
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
                AuthFuture::from(State::Inner {
                    future: self.inner.call(request),
                })
            }
            Ok(Err(failure)) => refused(failure),
            Err(token) => {
                // The service that was polled ready is the one that must be called.
                let ready = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, ready);
                let auth = Arc::clone(&self.auth);
                AuthFuture::from(State::Store {
                    future: Box::pin(async move {
                        match auth.verify(&token).await {
                            Ok(principal) => {
                                request.extensions_mut().insert::<Principal>(principal);
                                inner.call(request).await
                            }
                            Err(failure) => Ok(Error::from(failure).into_response()),
                        }
                    }),
                })
            }
        }
    }
}

impl<F> From<State<F>> for AuthFuture<F> {
    fn from(state: State<F>) -> Self {
        AuthFuture { state }
    }
}
