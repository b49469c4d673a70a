//! The faultline layer: request ids in, every failure rendered from the catalog on the way out.

mod status;

use std::collections::HashSet;
use std::error::Error as _;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::HttpBody;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, X_CONTENT_TYPE_OPTIONS};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use faultline::details::Size;
use faultline::{ApiError, Situation};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

pub use status::{DefaultStatusMapper, StatusMapper};

use crate::contract::{Contract, Error, Pending, Rendered, nosniff};
use crate::request_id::RequestId;

/// The largest body accepted by default: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// The default handler deadline.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How many routes the layer remembers having reported hand-built error JSON for; past it, new
/// routes are not reported (a bound on memory, since an unmatched route is the raw path).
pub const MAX_REPORTED_ROUTES: usize = 256;

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
pub struct Faultline {
    contract: Arc<Contract>,
    body_limit: usize,
    timeout: Duration,
    mapper: Arc<dyn StatusMapper>,
    strict: bool,
}

impl std::fmt::Debug for Faultline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faultline")
            .field("contract", &self.contract)
            .field("body_limit", &self.body_limit)
            .field("timeout", &self.timeout)
            .field("strict", &self.strict)
            .finish_non_exhaustive()
    }
}

impl Faultline {
    /// faultline with default limits: 1 MiB bodies, a 30 s deadline, the
    /// [`DefaultStatusMapper`], strict mode as the contract says ([`Contract::strict`]).
    pub fn new(contract: Contract) -> Self {
        Faultline {
            strict: contract.is_strict(),
            contract: Arc::new(contract),
            body_limit: DEFAULT_BODY_LIMIT,
            timeout: DEFAULT_TIMEOUT,
            mapper: Arc::new(DefaultStatusMapper),
        }
    }

    /// Sets which situation a bare error status stands for (see [`StatusMapper`]).
    #[must_use]
    pub fn status_mapper(mut self, mapper: impl StatusMapper) -> Self {
        self.mapper = Arc::new(mapper);
        self
    }

    /// Refuses hand-built error JSON with the internal error (see [`Contract::strict`]).
    #[must_use]
    pub fn strict(mut self, on: bool) -> Self {
        self.strict = on;
        self
    }

    /// Sets the largest accepted body, in bytes.
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Sets the deadline for a handler's answer.
    ///
    /// # A handler that answers at once costs no timer
    ///
    /// The deadline starts only when the handler is still pending after its first poll; a
    /// handler past it gets the catalog's timeout code at the deadline. The first deadline
    /// also starts one anchor timer per layer (a task waking every half deadline), so that a
    /// request's deadline is never the earliest timer and registering it never has to wake
    /// tokio's timer driver (a system call and a thread wake-up). `tests/layer.rs` proves
    /// each part; `bench/strace.sh` counts the system calls.
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
    ///
    /// # One layer
    ///
    /// All of it is one [`FaultlineLayer`]: one boxed service and one future per request,
    /// where four separate layers would box four times.
    pub fn install<S: Clone + Send + Sync + 'static>(self, router: Router<S>) -> Router<S> {
        router.layer(self.into_layer())
    }

    /// The [`FaultlineLayer`] that [`Faultline::install`] adds, for a stack built by hand.
    pub fn into_layer(self) -> FaultlineLayer {
        FaultlineLayer {
            shared: Arc::new(Shared {
                needs_path: self.contract.needs_path(),
                contract: self.contract,
                body_limit: self.body_limit,
                timeout: self.timeout,
                mapper: self.mapper,
                strict: self.strict,
                reported: Mutex::new(HashSet::new()),
                anchored: AtomicBool::new(false),
            }),
        }
    }
}

/// The tower layer at the outside of the stack: gives each request its id and renders every
/// failure on the way out. [`Faultline::install`] adds it with the other layers.
///
/// # Every answer is a catalog error or passes through
///
/// - an [`Error`] a handler, layer or extractor returned is rendered (its cause, if any, is
///   logged at error level with the request id);
/// - a response [`Contract::render`] produced passes through unchanged;
/// - a bare error status (no JSON body) becomes the code bound to the situation its
///   [`StatusMapper`] gives, keeping the headers the catalog declares for that code (a
///   `Retry-After` or an `Allow` the inner response carried); with no situation, the internal
///   error and a warning naming the status and the route;
/// - error JSON built by hand (a JSON body with a status of 400 or more that the renderer did
///   not produce) is passed on with a warning, once per route, or replaced by the internal
///   error in strict mode;
/// - every answer gets the request id header and `X-Content-Type-Options: nosniff`.
#[derive(Clone)]
pub struct FaultlineLayer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FaultlineLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultlineLayer")
            .field("contract", &self.shared.contract)
            .finish_non_exhaustive()
    }
}

/// What every request of one installed stack shares.
struct Shared {
    contract: Arc<Contract>,
    /// Whether error bodies hold the path (problem+json's `instance`): only then is it kept.
    needs_path: bool,
    body_limit: usize,
    timeout: Duration,
    mapper: Arc<dyn StatusMapper>,
    strict: bool,
    /// Routes already reported for hand-built error JSON.
    reported: Mutex<HashSet<String>>,
    /// Whether the anchor timer runs (see [`Shared::anchor`]).
    anchored: AtomicBool,
}

impl Shared {
    /// Starts, once, a timer that stays armed ahead of every deadline of this layer: a task
    /// that wakes every half deadline, on the runtime of the first request that needed one.
    ///
    /// tokio wakes its timer driver, with a system call and a thread wake-up, whenever a timer
    /// is registered earlier than every other one; with no other timer that is every
    /// request's deadline. With the anchor there, a deadline is never the earliest.
    fn anchor(&self) {
        let period = self.timeout / 2;
        if period < Duration::from_millis(10) || self.anchored.swap(true, Ordering::Relaxed) {
            return;
        }
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            loop {
                ticks.tick().await;
            }
        });
    }
}

impl FaultlineLayer {
    /// The layer for `contract`, telling extractors that bodies are limited to `body_limit`,
    /// with the default deadline, the [`DefaultStatusMapper`] and the contract's strict mode.
    /// [`Faultline::into_layer`] sets the rest.
    pub fn new(contract: Arc<Contract>, body_limit: usize) -> Self {
        FaultlineLayer {
            shared: Arc::new(Shared {
                strict: contract.is_strict(),
                needs_path: contract.needs_path(),
                contract,
                body_limit,
                timeout: DEFAULT_TIMEOUT,
                mapper: Arc::new(DefaultStatusMapper),
                reported: Mutex::new(HashSet::new()),
                anchored: AtomicBool::new(false),
            }),
        }
    }
}

impl<S> Layer<S> for FaultlineLayer {
    type Service = FaultlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultlineService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service made by [`FaultlineLayer`].
#[derive(Clone)]
pub struct FaultlineService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for FaultlineService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultlineService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<axum::http::Request<B>> for FaultlineService<S>
where
    S: Service<axum::http::Request<B>, Response = Response>,
    B: HttpBody,
{
    type Response = Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        let shared = &self.shared;
        let contract = &shared.contract;
        let id = RequestId::from_header(
            request.headers().get(contract.request_id_header()),
            &contract.catalog().api.request_id_prefix,
        );
        request.extensions_mut().insert(id.clone());
        // A body known to be empty cannot exceed a limit: most GETs skip both inserts.
        if !request.body().is_end_stream() {
            // axum's own body extractors read this one; faultline's read `BodyLimit`, and
            // fall back to the default limit, so the common case saves an insert.
            DefaultBodyLimit::max(shared.body_limit).apply(&mut request);
            if shared.body_limit != DEFAULT_BODY_LIMIT {
                request
                    .extensions_mut()
                    .insert(BodyLimit(shared.body_limit));
            }
        }
        let declared_length = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // At debug, and made only when debug is on: a server logging at info pays nothing
        // for it (the macro alone would still build a span for the `log` crate). Boxed, so
        // that the future, which axum moves and boxes on every request, holds a pointer.
        let span = debug_enabled().then(|| {
            Box::new(tracing::debug_span!(
                "request",
                request_id = %id,
                method = %request.method(),
                path = %request.uri().path()
            ))
        });
        let path = shared.needs_path.then(|| request.uri().path().into());
        let matched = request.extensions().get::<MatchedPath>().cloned();
        let finish = Finish {
            started: contract.metrics().map(|_| Instant::now()),
            shared: Arc::clone(&self.shared),
            id,
            path,
            matched,
            declared_length,
        };
        let called = {
            let _entered = span.as_deref().map(tracing::Span::enter);
            catch_unwind(AssertUnwindSafe(|| self.inner.call(request)))
        };
        let state = match called {
            Ok(inner) => State::Running {
                inner,
                deadline: None,
            },
            Err(_panic) => State::Panicked,
        };
        ResponseFuture {
            state,
            span,
            finish: Some(finish),
        }
    }
}

pin_project! {
    /// The response future of [`FaultlineService`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        span: Option<Box<tracing::Span>>,
        finish: Option<Finish>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running {
            #[pin]
            inner: F,
            // Started only once the inner future has answered "not yet": a handler that
            // answers at once never touches the timer, and its future carries a pointer
            // rather than a whole timer entry.
            deadline: Option<Pin<Box<Sleep>>>,
        },
        Panicked,
    }
}

/// What the future needs once the inner service has answered.
struct Finish {
    /// When the request entered the layer, only when metrics are on.
    started: Option<Instant>,
    shared: Arc<Shared>,
    id: RequestId,
    /// The request's path, only when error bodies hold it.
    path: Option<Box<str>>,
    matched: Option<MatchedPath>,
    declared_length: Option<u64>,
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.as_deref().map(tracing::Span::enter);
        let outcome = match this.state.project() {
            StateProj::Panicked => Outcome::Panicked,
            StateProj::Running { inner, deadline } => {
                match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
                    Ok(Poll::Ready(Ok(response))) => Outcome::Answered(response),
                    Ok(Poll::Ready(Err(error))) => return Poll::Ready(Err(error)),
                    Err(_panic) => Outcome::Panicked,
                    Ok(Poll::Pending) => {
                        let sleep = deadline.get_or_insert_with(|| {
                            let shared = &this
                                .finish
                                .as_ref()
                                .expect("ResponseFuture polled after completion")
                                .shared;
                            let sleep = Box::pin(tokio::time::sleep(shared.timeout));
                            shared.anchor();
                            sleep
                        });
                        match sleep.as_mut().poll(cx) {
                            Poll::Ready(()) => Outcome::TimedOut,
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                }
            }
        };
        let finish = this
            .finish
            .take()
            .expect("ResponseFuture polled after completion");
        // Taken before `run` consumes `finish`; an `Arc` copy only when metrics are on.
        let timing = finish
            .started
            .zip(finish.shared.contract.metrics().map(Arc::clone));
        let response = match outcome {
            Outcome::Answered(response) => finish.run(response),
            Outcome::Panicked => {
                // The payload is not logged: it may hold data from the request.
                tracing::error!(request_id = %finish.id, "handler panicked");
                finish.render_bound(Situation::Internal)
            }
            Outcome::TimedOut => finish.render_bound(Situation::Timeout),
        };
        if let Some((started, metrics)) = timing {
            metrics.response(response.status().as_u16(), started.elapsed());
        }
        Poll::Ready(Ok(response))
    }
}

/// Whether a subscriber may want debug spans: two loads, no callsite lookup.
fn debug_enabled() -> bool {
    use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
    STATIC_MAX_LEVEL >= LevelFilter::DEBUG && LevelFilter::current() >= LevelFilter::DEBUG
}

/// How the inner service ended.
enum Outcome {
    Answered(Response),
    Panicked,
    TimedOut,
}

impl Finish {
    /// Renders a pending error or a bare status; passes the rest on with the request id.
    fn run(self, mut response: Response) -> Response {
        let contract = &*self.shared.contract;
        if let Some(pending) = response.extensions_mut().remove::<Pending>() {
            return match pending.take() {
                Some(error) => self.render_error(error),
                // Only a clone of the response could have taken it first.
                None => self.render_bound(Situation::Internal),
            };
        }
        if response.extensions().get::<Rendered>().is_some() {
            return response;
        }
        let status = response.status();
        if status.is_client_error() || status.is_server_error() {
            if !is_json(response.headers()) {
                return self.render_bare(response);
            }
            self.report_hand_built(status);
            if self.shared.strict {
                return self.render_bound(Situation::Internal);
            }
        }
        let headers = response.headers_mut();
        headers.insert(contract.request_id_header().clone(), self.id.header_value());
        headers.insert(X_CONTENT_TYPE_OPTIONS, nosniff());
        response
    }

    /// The path for error bodies (empty when they do not hold it).
    fn path(&self) -> &str {
        self.path.as_deref().unwrap_or("")
    }

    /// The route for log lines: the matched route, else the path.
    fn route(&self) -> &str {
        match (&self.matched, &self.path) {
            (Some(matched), _) => matched.as_str(),
            (None, Some(path)) => path,
            (None, None) => "(no matched route)",
        }
    }

    fn render_bound(&self, situation: Situation) -> Response {
        self.shared
            .contract
            .render_bound_unmarked(situation, &self.id, self.path())
    }

    fn render_api(&self, api: &ApiError) -> Response {
        self.shared
            .contract
            .render_unmarked(api, &self.id, self.path())
    }

    /// Renders an [`Error`]; logs its cause, if any, with the whole chain.
    fn render_error(&self, error: Error) -> Response {
        if error.source().is_none()
            && let Some(situation) = error.plain_situation()
        {
            return self.render_bound(situation);
        }
        let api = self.shared.contract.into_api(error);
        if let Some(cause) = api.source() {
            match store_failure(cause) {
                // An outage is expected to pass: a warning, with the request id and the cause.
                Some(store) if store.is_unavailable() => tracing::warn!(
                    request_id = %self.id,
                    code = api.code(),
                    cause = %Chain(cause),
                    "store unavailable"
                ),
                _ => tracing::error!(
                    request_id = %self.id,
                    code = api.code(),
                    cause = %Chain(cause),
                    "request failed"
                ),
            }
            if let (Some(store), Some(metrics)) =
                (store_failure(cause), self.shared.contract.metrics())
            {
                metrics.store_error(store.is_unavailable());
            }
        }
        self.render_api(&api)
    }

    /// Renders a bare error status as the code its situation is bound to.
    fn render_bare(&self, response: Response) -> Response {
        let contract = &*self.shared.contract;
        let (parts, _body) = response.into_parts();
        let situation = self
            .shared
            .mapper
            .situation(parts.status, &parts)
            .and_then(|situation| bindable(contract, situation));
        let Some((situation, declared)) = situation else {
            tracing::warn!(
                request_id = %self.id,
                status = parts.status.as_u16(),
                route = self.route(),
                "a bare error status with no situation was answered as the internal error"
            );
            return self.render_bound(Situation::Internal);
        };
        // The headers the code declares (Retry-After, Allow) are kept from the bare response.
        let mut api = None;
        for name in declared {
            if let Some(value) = parts.headers.get(name).and_then(|v| v.to_str().ok()) {
                let error = api.unwrap_or_else(|| contract.bound(situation));
                api = Some(error.with_header(name.as_str().to_owned(), value));
            }
        }
        if situation == Situation::PayloadTooLarge {
            let error = api.unwrap_or_else(|| contract.bound(situation));
            api = Some(error.with_details(Size {
                size_bytes: self.declared_length,
                max_bytes: self.shared.body_limit as u64,
            }));
        }
        match api {
            Some(api) => self.render_api(&api),
            None => self.render_bound(situation),
        }
    }

    /// Warns, once per route, of error JSON the renderer did not produce.
    fn report_hand_built(&self, status: StatusCode) {
        let route = self.route();
        {
            let mut reported = self
                .shared
                .reported
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if reported.len() >= MAX_REPORTED_ROUTES
                || reported.contains(route)
                || !reported.insert(route.to_owned())
            {
                return;
            }
        }
        tracing::warn!(
            request_id = %self.id,
            status = status.as_u16(),
            route,
            strict = self.shared.strict,
            "error JSON built by hand breaks the contract: raise faultline_axum::Error instead"
        );
    }
}

/// The situation to render for `situation` and the headers its code declares: itself when
/// bound, the scope refusal for an unbound `forbidden`, else none.
fn bindable(contract: &Contract, situation: Situation) -> Option<(Situation, &[HeaderName])> {
    match contract.declared_headers(situation) {
        Some(declared) => Some((situation, declared)),
        None if situation == Situation::Forbidden => contract
            .declared_headers(Situation::ScopeDenied)
            .map(|declared| (Situation::ScopeDenied, declared)),
        None => None,
    }
}

/// Whether the body is JSON (`application/json`, or any `+json` type such as problem+json).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let essence = ct.split(';').next().unwrap_or(ct).trim();
            essence.eq_ignore_ascii_case("application/json")
                || essence.to_ascii_lowercase().ends_with("+json")
        })
}

/// The store failure behind `cause`, if any link of its chain is one.
fn store_failure<'e>(
    mut cause: &'e (dyn std::error::Error + 'static),
) -> Option<&'e crate::StoreError> {
    loop {
        if let Some(store) = cause.downcast_ref::<crate::StoreError>() {
            return Some(store);
        }
        cause = cause.source()?;
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
