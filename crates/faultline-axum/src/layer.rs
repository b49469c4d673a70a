//! The faultline layer: request ids in, every failure rendered from the catalog on the way out.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::http::Uri;
use axum::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use faultline::Situation;
use faultline::details::Size;
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

use crate::contract::{Contract, Error, Pending};
use crate::request_id::RequestId;

/// The largest body accepted by default: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// The default handler deadline.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The body limit in force, for extractors (they read it from the request's extensions).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Configures and installs faultline on an axum [`Router`].
///
/// ```
/// # fn demo(catalog: faultline::Catalog) {
/// let contract = faultline_axum::Contract::new(catalog).expect("bindings present");
/// let app: axum::Router = faultline_axum::Faultline::new(contract).install(axum::Router::new());
/// # }
/// ```
#[derive(Debug)]
pub struct Faultline {
    contract: Arc<Contract>,
    body_limit: usize,
    timeout: Duration,
}

impl Faultline {
    /// faultline with default limits: 1 MiB bodies, a 30 s deadline.
    pub fn new(contract: Contract) -> Self {
        Faultline {
            contract: Arc::new(contract),
            body_limit: DEFAULT_BODY_LIMIT,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sets the largest accepted body, in bytes.
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Sets the deadline for a handler's answer.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The contract served.
    pub fn contract(&self) -> &Arc<Contract> {
        &self.contract
    }

    /// Wraps `router` so that every failure is a catalog error: request ids, unknown routes and
    /// methods, body limits, timeouts and panics.
    pub fn install<S: Clone + Send + Sync + 'static>(self, router: Router<S>) -> Router<S> {
        router
            // Only matched routes get a deadline: an unknown route or method is answered at
            // once, and a timer per request there would be pure cost.
            .route_layer(TimeoutLayer::with_status_code(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                self.timeout,
            ))
            .layer(axum::extract::DefaultBodyLimit::max(self.body_limit))
            .layer(CatchPanicLayer::custom(
                |_panic: Box<dyn std::any::Any + Send>| {
                    // The payload is not logged either: it may hold data from the request.
                    tracing::error!("handler panicked");
                    Error::bound(Situation::Internal).into_response()
                },
            ))
            .layer(FaultlineLayer {
                contract: self.contract,
                body_limit: self.body_limit,
            })
    }
}

/// The tower layer at the outside of the stack: gives each request its id and renders every
/// failure on the way out. [`Faultline::install`] adds it with the other layers.
#[derive(Debug, Clone)]
pub struct FaultlineLayer {
    contract: Arc<Contract>,
    body_limit: usize,
}

impl FaultlineLayer {
    /// The layer for `contract`, telling extractors that bodies are limited to `body_limit`.
    pub fn new(contract: Arc<Contract>, body_limit: usize) -> Self {
        FaultlineLayer {
            contract,
            body_limit,
        }
    }
}

impl<S> Layer<S> for FaultlineLayer {
    type Service = FaultlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultlineService {
            inner,
            contract: Arc::clone(&self.contract),
            body_limit: self.body_limit,
        }
    }
}

/// The service made by [`FaultlineLayer`].
#[derive(Debug, Clone)]
pub struct FaultlineService<S> {
    inner: S,
    contract: Arc<Contract>,
    body_limit: usize,
}

impl<S, B> Service<axum::http::Request<B>> for FaultlineService<S>
where
    S: Service<axum::http::Request<B>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        let contract = &self.contract;
        let id = RequestId::from_header(
            request.headers().get(contract.request_id_header()),
            &contract.catalog().api.request_id_prefix,
        );
        request.extensions_mut().insert(id.clone());
        // Extractors fall back to the default limit, so the common case saves an insert.
        if self.body_limit != DEFAULT_BODY_LIMIT {
            request.extensions_mut().insert(BodyLimit(self.body_limit));
        }
        let declared_length = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let span = tracing::info_span!(
            "request",
            request_id = %id,
            method = %request.method(),
            path = %request.uri().path()
        );
        let uri = request.uri().clone();
        let inner = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        ResponseFuture {
            inner,
            span,
            pending: Some(Finish {
                contract: Arc::clone(&self.contract),
                id,
                uri,
                declared_length,
                body_limit: self.body_limit,
            }),
        }
    }
}

pin_project! {
    /// The response future of [`FaultlineService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: tracing::Span,
        pending: Option<Finish>,
    }
}

/// What the future needs once the inner service has answered.
struct Finish {
    contract: Arc<Contract>,
    id: RequestId,
    uri: Uri,
    declared_length: Option<u64>,
    body_limit: usize,
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.enter();
        let response = ready!(this.inner.poll(cx))?;
        let finish = this
            .pending
            .take()
            .expect("ResponseFuture polled after completion");
        Poll::Ready(Ok(finish.run(response)))
    }
}

impl Finish {
    /// Renders a pending or bare framework failure; stamps the request id on the rest.
    fn run(self, mut response: Response) -> Response {
        let Finish {
            contract,
            id,
            uri,
            declared_length,
            body_limit,
        } = self;
        let (contract, id, path) = (&*contract, &id, uri.path());
        if let Some(Pending(error)) = response.extensions_mut().remove::<Pending>() {
            if let Some(situation) = error.plain_situation() {
                return contract.render_bound(situation, id, path);
            }
            let api = contract.resolve(&error);
            if let Some(cause) = error.source() {
                tracing::error!(request_id = %id, code = api.code(), cause = %Chain(cause), "request failed");
            }
            return contract.render(&api, id, path);
        }
        let status = response.status();
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.starts_with("application/json") || ct.starts_with("application/problem+json")
            });
        if status.as_u16() >= 400 && !is_json {
            // A framework answer (router, limit, timeout) or a bare status from a handler.
            let situation = match status.as_u16() {
                404 => Situation::RouteNotFound,
                405 => Situation::MethodNotAllowed,
                408 => Situation::Timeout,
                413 => Situation::PayloadTooLarge,
                415 => Situation::UnsupportedMediaType,
                400 | 422 => Situation::ValidationFailed,
                _ => Situation::Internal,
            };
            // Two answers carry what only this response knows; the rest are rendered ahead.
            let api = match situation {
                Situation::MethodNotAllowed => {
                    let allow = response.headers().get(ALLOW).and_then(|v| v.to_str().ok());
                    let api = contract.bound(situation);
                    match allow {
                        Some(allow) => api.with_header("Allow", allow),
                        None => api,
                    }
                }
                Situation::PayloadTooLarge => contract.bound(situation).with_details(Size {
                    size_bytes: declared_length,
                    max_bytes: body_limit as u64,
                }),
                _ => return contract.render_bound(situation, id, path),
            };
            return contract.render(&api, id, path);
        }
        response
            .headers_mut()
            .insert(contract.request_id_header().clone(), id.header_value());
        response
    }
}

/// Displays an error and its sources, for the log line of an internal error.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
