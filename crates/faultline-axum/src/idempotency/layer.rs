//! [`IdempotencyLayer`]: requests that carry an `Idempotency-Key` claim it before the handler
//! runs; retries get the first answer back.

use std::convert::Infallible;
use std::error::Error as _;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::OptionalFromRequestParts;
use axum::http::header::{self, CONTENT_LENGTH, HeaderName, HeaderValue, X_CONTENT_TYPE_OPTIONS};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use faultline::Situation;
use faultline::clock::{Clock, SystemClock};
use faultline::details::{Reason, Size};
use faultline::idempotency::{Difference, Fingerprint, IdempotencyKey, Settings};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::store::{
    ClaimOutcome, ClaimRequest, ClaimToken, IdempotencyStore, StoreError, StoredResponse,
};
use crate::contract::{Contract, Error, Pending, Rendered, nosniff};
use crate::layer::{BodyLimit, DEFAULT_BODY_LIMIT};
use crate::refuse::RefuseOr;
use crate::request_id::RequestId;

/// The `Idempotency-Key` request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The header a replayed response carries, with the value `true`.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The largest response body kept for replay by default: 1 MiB.
pub const DEFAULT_MAX_STORED_BODY: usize = 1024 * 1024;

/// The response headers kept for replay by default (besides those added with
/// [`IdempotencyLayer::keep_header`]). The request id and `X-Content-Type-Options` are not
/// kept: a replay gets its own.
pub const DEFAULT_KEPT_HEADERS: [HeaderName; 9] = [
    header::CONTENT_TYPE,
    header::CONTENT_LANGUAGE,
    header::CONTENT_LOCATION,
    header::LOCATION,
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
    header::LINK,
    header::RETRY_AFTER,
];

type ScopeFn = dyn Fn(&Parts) -> String + Send + Sync;

/// A response extension: the body replays get instead of the one sent now.
///
/// # A secret shown once is never kept
///
/// An answer that holds a secret (a new API key, shown once) must not sit in the record
/// store for the retention window. Its handler inserts `ReplayBody` with the same answer
/// without the secret; the layer keeps that one, so the first caller sees the secret and a
/// retry sees everything else, with the same status and headers.
///
/// ```
/// # use axum::response::IntoResponse;
/// let mut response = (axum::http::StatusCode::CREATED, r#"{"id":"k1","key":"sk_secret"}"#)
///     .into_response();
/// response
///     .extensions_mut()
///     .insert(faultline_axum::idempotency::ReplayBody::new(r#"{"id":"k1","key":null}"#));
/// ```
#[derive(Debug, Clone)]
pub struct ReplayBody(Bytes);

impl ReplayBody {
    /// Replays answer `body` instead.
    pub fn new(body: impl Into<Bytes>) -> Self {
        ReplayBody(body.into())
    }
}

/// Honours `Idempotency-Key` on the wrapped routes: one execution per key, replays after.
///
/// Add it with `Router::route_layer`, inside the faultline layer and after auth (so the
/// `auth::Principal` is known), on the routes that accept keys.
///
/// # What a request with a key gets
///
/// Only requests whose method the layer honours (POST and PATCH unless
/// [`IdempotencyLayer::methods`] says otherwise) are concerned; others pass untouched, and so
/// does a request without the header unless [`IdempotencyLayer::require_key`] is on.
///
/// - a malformed key, several `Idempotency-Key` headers, or a missing key on a route that
///   requires one: the code bound to `idempotency_key_invalid`, with a `reason` in details;
/// - the body is read in full (up to the body limit: past it, `payload_too_large`) and the
///   request is fingerprinted (method, path, query, body);
/// - the key is claimed in the store, in the caller's scope (the principal's organisation and
///   key when auth ran, see [`IdempotencyLayer::scope_with`]):
///   - claimed: the handler runs; a 2xx, 3xx or 4xx answer is stored (status, the kept
///     headers, the body) and sent; a 5xx, a panic, a timeout or a dropped connection releases
///     the claim so that a retry runs again;
///   - the same key for another request: `idempotency_conflict`, with `differs` in details
///     (`request`: method, path or query; `body`; or `both`), never the stored response;
///   - the same request still running: `idempotency_in_progress` with `Retry-After`;
///   - the same request completed: the stored response byte for byte, with
///     `Idempotent-Replayed: true` and this request's own request id header.
///
/// # Completion inside the handler's transaction
///
/// The handler sees an [`IdempotencyClaim`] (an extractor, `Option<IdempotencyClaim>`). A
/// handler whose data lives in the store's database completes the record in its own
/// transaction (e.g. `faultline_sqlite::idempotency::complete_in`) and calls
/// [`IdempotencyClaim::completed`]; the layer then stores nothing itself.
#[derive(Clone)]
pub struct IdempotencyLayer {
    config: Arc<Config>,
}

#[derive(Clone)]
struct Config {
    store: Arc<dyn IdempotencyStore>,
    contract: Arc<Contract>,
    clock: Arc<dyn Clock>,
    methods: Vec<Method>,
    required: bool,
    lease: Duration,
    retention: Duration,
    kept: Arc<[HeaderName]>,
    max_stored_body: usize,
    body_limit: Option<usize>,
    scope: Option<Arc<ScopeFn>>,
    in_handler_transaction: bool,
}

impl std::fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.config;
        f.debug_struct("IdempotencyLayer")
            .field("methods", &c.methods)
            .field("required", &c.required)
            .field("lease", &c.lease)
            .field("retention", &c.retention)
            .field("kept", &c.kept)
            .field("max_stored_body", &c.max_stored_body)
            .field("body_limit", &c.body_limit)
            .field("in_handler_transaction", &c.in_handler_transaction)
            .finish_non_exhaustive()
    }
}

impl IdempotencyLayer {
    /// Keys kept in `store`, errors rendered by `contract`'s bindings; the default
    /// [`Settings`] (24 hours of retention, a 60 second lease, POST and PATCH), the system
    /// clock, keys optional.
    pub fn new(store: Arc<dyn IdempotencyStore>, contract: Arc<Contract>) -> Self {
        let mut layer = IdempotencyLayer {
            config: Arc::new(Config {
                store,
                contract,
                clock: Arc::new(SystemClock),
                methods: Vec::new(),
                required: false,
                lease: Duration::ZERO,
                retention: Duration::ZERO,
                kept: Arc::from(DEFAULT_KEPT_HEADERS.to_vec()),
                max_stored_body: DEFAULT_MAX_STORED_BODY,
                body_limit: None,
                scope: None,
                in_handler_transaction: false,
            }),
        };
        layer = layer.settings(&Settings::default());
        layer
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Takes retention, lease and methods from `settings` (e.g. the catalog's
    /// `[idempotency]` table); a method name that is not valid is skipped.
    #[must_use]
    pub fn settings(self, settings: &Settings) -> Self {
        self.edit(|c| {
            c.retention = settings.retention;
            c.lease = settings.lease;
            c.methods = settings
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
                .collect();
        })
    }

    /// How long a claim holds before a retry may take it over (for a process that died
    /// holding it).
    #[must_use]
    pub fn lease(self, lease: Duration) -> Self {
        self.edit(|c| c.lease = lease)
    }

    /// How long a completed response is replayed.
    #[must_use]
    pub fn retention(self, retention: Duration) -> Self {
        self.edit(|c| c.retention = retention)
    }

    /// The methods that honour a key.
    #[must_use]
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.edit(|c| c.methods = methods.into_iter().collect())
    }

    /// Whether a request without a key is refused (with the code bound to
    /// `idempotency_key_invalid`).
    #[must_use]
    pub fn require_key(self, required: bool) -> Self {
        self.edit(|c| c.required = required)
    }

    /// The clock that dates claims and records.
    #[must_use]
    pub fn clock(self, clock: Arc<dyn Clock>) -> Self {
        self.edit(|c| c.clock = clock)
    }

    /// Keeps `name` too when storing a response.
    #[must_use]
    pub fn keep_header(self, name: HeaderName) -> Self {
        self.edit(|c| {
            let mut kept = c.kept.to_vec();
            kept.push(name);
            c.kept = Arc::from(kept);
        })
    }

    /// The largest response body kept ([`DEFAULT_MAX_STORED_BODY`]): a larger answer is sent
    /// but not kept, and its claim is released.
    #[must_use]
    pub fn max_stored_body(self, bytes: usize) -> Self {
        self.edit(|c| c.max_stored_body = bytes)
    }

    /// The largest request body read; by default the faultline layer's body limit.
    #[must_use]
    pub fn body_limit(self, bytes: usize) -> Self {
        self.edit(|c| c.body_limit = Some(bytes))
    }

    /// Whose keys a request uses: by default the principal's organisation and key id when
    /// auth ran, else one scope for everyone.
    #[must_use]
    pub fn scope_with(self, scope: impl Fn(&Parts) -> String + Send + Sync + 'static) -> Self {
        self.edit(|c| c.scope = Some(Arc::new(scope)))
    }

    /// Declares that the wrapped handler records every outcome that has effects in its own
    /// transaction (with the engine's in-transaction completion, then
    /// [`IdempotencyClaim::completed`]; or [`IdempotencyClaim::superseded`] when that
    /// completion fails and it rolls back), so the store may claim with
    /// [`IdempotencyStore::claim_deferred`]: a fresh key then costs no write before the
    /// handler's own.
    ///
    /// # A superseded handler's answer is replaced
    ///
    /// When the handler reports [`IdempotencyClaim::superseded`] (another request's record was
    /// there at its commit), or answers without completing and the layer then finds another
    /// request's record, the client gets what that record means instead of the handler's
    /// answer: the replay, the conflict, or `idempotency_in_progress`.
    ///
    /// Only for handlers whose effects are all in that transaction: one that writes elsewhere
    /// before completing could run twice across processes.
    #[must_use]
    pub fn in_handler_transaction(self, on: bool) -> Self {
        self.edit(|c| c.in_handler_transaction = on)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn IdempotencyStore> {
        &self.config.store
    }

    /// The retention in force.
    pub fn retention_period(&self) -> Duration {
        self.config.retention
    }

    /// The lease in force.
    pub fn lease_period(&self) -> Duration {
        self.config.lease
    }

    /// Prunes ended records every `every`, on a task of its own (up to 1000 at a time, until
    /// none is left): requests never wait for it. Stops when the handle is aborted.
    pub fn spawn_pruning(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        spawn_pruning(
            Arc::clone(&self.config.store),
            Arc::clone(&self.config.clock),
            every,
        )
    }
}

/// How many records one prune call deletes at most.
pub const PRUNE_BATCH: usize = 1000;

/// Prunes `store`'s ended records every `every` on a task of its own (see
/// [`IdempotencyLayer::spawn_pruning`]). A failing store is logged and tried again next time.
pub fn spawn_pruning(
    store: Arc<dyn IdempotencyStore>,
    clock: Arc<dyn Clock>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            loop {
                match store.prune(clock.now_millis(), PRUNE_BATCH).await {
                    Ok(n) if n as usize >= PRUNE_BATCH => tokio::task::yield_now().await,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(cause = %e, "pruning idempotency records failed");
                        break;
                    }
                }
            }
        }
    })
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            config: Arc::clone(&self.config),
        }
    }
}

/// The service made by [`IdempotencyLayer`].
#[derive(Clone)]
pub struct Idempotency<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The response future of [`Idempotency`]: a refusal, or the request on its way.
pub type IdempotencyFuture<F> = RefuseOr<KeyedFuture<F>>;

type BoxResponse = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

pin_project! {
    /// A request without a key (the inner future, not boxed) or with one (claim, handler,
    /// store: boxed).
    pub struct KeyedFuture<F> {
        #[pin]
        state: KeyedState<F>,
    }
}

pin_project! {
    #[project = KeyedProj]
    enum KeyedState<F> {
        Direct { #[pin] future: F },
        Keyed { future: BoxResponse },
    }
}

impl<F> Future for KeyedFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            KeyedProj::Direct { future } => future.poll(cx),
            KeyedProj::Keyed { future } => future.as_mut().poll(cx),
        }
    }
}

fn invalid_key(reason: impl Into<String>) -> Error {
    Error::bound(Situation::IdempotencyKeyInvalid).with_details(Reason {
        reason: reason.into(),
    })
}

/// `idempotency_in_progress`, to retry after `retry_after` (whole seconds, at least one).
fn in_progress(retry_after: Duration) -> Error {
    Error::bound(Situation::IdempotencyInProgress)
        .with_header("Retry-After", retry_after.as_secs().max(1).to_string())
}

/// The conflict error for a key reused with another request.
fn conflict(difference: Difference) -> Error {
    Error::bound(Situation::IdempotencyConflict)
        .with_details(serde_json::json!({ "differs": difference.as_str() }))
}

impl<S> Service<Request<Body>> for Idempotency<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = IdempotencyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let config = &self.config;
        let direct = |inner: &mut S, request| {
            RefuseOr::allow(KeyedFuture {
                state: KeyedState::Direct {
                    future: inner.call(request),
                },
            })
        };
        if !config.methods.contains(request.method()) {
            return direct(&mut self.inner, request);
        }
        let mut values = request.headers().get_all(IDEMPOTENCY_KEY).iter();
        let key = match (values.next(), values.next()) {
            (None, _) if !config.required => return direct(&mut self.inner, request),
            (None, _) => {
                return RefuseOr::refuse(invalid_key(
                    "this route requires an Idempotency-Key header",
                ));
            }
            (Some(_), Some(_)) => {
                return RefuseOr::refuse(invalid_key(
                    "send one Idempotency-Key header, not several",
                ));
            }
            (Some(value), None) => match IdempotencyKey::parse(value.as_bytes()) {
                Ok(key) => key,
                Err(e) => return RefuseOr::refuse(invalid_key(e.to_string())),
            },
        };
        // The service that was polled ready is the one that must be called.
        let ready = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, ready);
        RefuseOr::allow(KeyedFuture {
            state: KeyedState::Keyed {
                future: Box::pin(run(Arc::clone(config), inner, request, key)),
            },
        })
    }
}

/// The default scope: the principal's organisation and key, or one scope for everyone.
fn default_scope(parts: &Parts) -> String {
    #[cfg(feature = "auth")]
    if let Some(principal) = parts.extensions.get::<crate::auth::Principal>() {
        return format!("{}/{}", principal.org_id, principal.key_id);
    }
    let _ = parts;
    String::new()
}

async fn read_body(parts: &Parts, body: Body, limit: usize) -> Result<Bytes, Error> {
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = |size| {
        Error::bound(Situation::PayloadTooLarge).with_details(Size {
            size_bytes: size,
            max_bytes: limit as u64,
        })
    };
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(declared));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(None)),
        // The client stopped sending: nothing was claimed, and nobody reads the answer.
        Err(_) => Err(Error::bound(Situation::MalformedRequest)),
    }
}

async fn run<S>(
    config: Arc<Config>,
    mut inner: S,
    request: Request<Body>,
    key: IdempotencyKey,
) -> Result<Response, Infallible>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    let (parts, body) = request.into_parts();
    let limit = config
        .body_limit
        .or_else(|| parts.extensions.get::<BodyLimit>().map(|l| l.0))
        .unwrap_or(DEFAULT_BODY_LIMIT);
    let bytes = match read_body(&parts, body, limit).await {
        Ok(bytes) => bytes,
        Err(error) => return Ok(error.into_response()),
    };
    let fingerprint = Fingerprint::new(
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query().unwrap_or(""),
        &bytes,
    );
    let scope = match &config.scope {
        Some(scope) => scope(&parts),
        None => default_scope(&parts),
    };
    let claim = ClaimRequest::new(
        scope,
        key,
        fingerprint,
        config.lease,
        config.clock.now_millis(),
    );
    let id = parts
        .extensions
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(|| RequestId::generate(&config.contract.catalog().api.request_id_prefix));
    let claimed = if config.in_handler_transaction {
        config.store.claim_deferred(&claim).await
    } else {
        config.store.claim(&claim).await
    };
    let token = match config.claimed_or_answer(claimed, &id) {
        ControlFlow::Continue(token) => token,
        ControlFlow::Break(answer) => return Ok(answer),
    };
    let mut guard = Release {
        store: Arc::clone(&config.store),
        token: Some(token.clone()),
    };
    let handle = IdempotencyClaim {
        token: token.clone(),
        retention: config.retention,
        clock: Arc::clone(&config.clock),
        kept: Arc::clone(&config.kept),
        completed: Arc::new(AtomicBool::new(false)),
        superseded: Arc::new(AtomicBool::new(false)),
    };
    let path = config
        .contract
        .needs_path()
        .then(|| parts.uri.path().to_owned());
    let mut request = Request::from_parts(parts, Body::from(bytes));
    request.extensions_mut().insert(handle.clone());
    let response = inner.call(request).await?;
    let mut response = config.resolve_pending(response, &id, path.as_deref().unwrap_or(""));
    let replay_body = response.extensions_mut().remove::<ReplayBody>();
    if response.status().is_server_error() {
        guard.release().await;
        return Ok(response);
    }
    if handle.is_completed() {
        config.store.settle(&token);
        guard.disarm();
        return Ok(response);
    }
    if handle.is_superseded() {
        guard.release().await;
        return Ok(config.decided_elsewhere(&claim, &id).await);
    }
    let (parts, body) = response.into_parts();
    if body.size_hint().lower() > config.max_stored_body as u64 {
        tracing::warn!(request_id = %id, "a response too large to keep was sent without being kept");
        guard.release().await;
        return Ok(Response::from_parts(parts, body));
    }
    let bytes = match Limited::new(body, config.max_stored_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            guard.release().await;
            return Ok(
                Error::internal(format!("an idempotent response could not be kept: {e}"))
                    .into_response(),
            );
        }
    };
    let stored = StoredResponse::new(
        parts.status,
        kept_headers(&config.kept, &parts.headers),
        replay_body.map_or_else(|| bytes.clone(), |replay| replay.0),
    );
    match config
        .store
        .complete(&token, &stored, config.clock.now_millis(), config.retention)
        .await
    {
        Ok(true) => {}
        // The handler promised no effects outside its transaction, and it did not complete
        // one: the record there is another request's, and it decides the answer.
        Ok(false) if config.in_handler_transaction => {
            guard.disarm();
            return Ok(config.decided_elsewhere(&claim, &id).await);
        }
        Ok(false) => tracing::warn!(
            request_id = %id,
            "the idempotency claim ended before the handler did; its answer was not kept"
        ),
        Err(e) => tracing::warn!(
            request_id = %id,
            cause = %e,
            "an idempotent answer could not be kept; a retry after the lease runs again"
        ),
    }
    guard.disarm();
    Ok(Response::from_parts(parts, Body::from(bytes)))
}

fn kept_headers(kept: &[HeaderName], headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    headers
        .iter()
        .filter(|(name, _)| kept.contains(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

impl Config {
    /// What the record another request left for `claim`'s key means for this request: a
    /// replay, a conflict, or in progress (also when no record is there any more: the retry
    /// then runs again).
    async fn decided_elsewhere(&self, claim: &ClaimRequest, id: &RequestId) -> Response {
        let again = ClaimRequest::new(
            claim.scope.clone(),
            claim.key.clone(),
            claim.fingerprint.clone(),
            claim.lease,
            self.clock.now_millis(),
        );
        match self.claimed_or_answer(self.store.claim(&again).await, id) {
            ControlFlow::Break(answer) => answer,
            ControlFlow::Continue(token) => {
                if let Err(e) = self.store.release(&token).await {
                    tracing::warn!(cause = %e, "an idempotency claim could not be released; it ends with its lease");
                }
                in_progress(Duration::from_secs(1)).into_response()
            }
        }
    }

    /// The token of a claim taken, or the answer a claim that was not taken gets: the store's
    /// error, the replay, the conflict or in progress.
    fn claimed_or_answer(
        &self,
        claimed: Result<ClaimOutcome, StoreError>,
        id: &RequestId,
    ) -> ControlFlow<Response, ClaimToken> {
        let answer = match claimed {
            Ok(ClaimOutcome::Claimed(token)) => return ControlFlow::Continue(token),
            Err(e) => Error::from(e).into_response(),
            Ok(ClaimOutcome::InProgress { retry_after }) => {
                in_progress(retry_after).into_response()
            }
            Ok(ClaimOutcome::Mismatch(difference)) => conflict(difference).into_response(),
            Ok(ClaimOutcome::Replay(stored)) => self.replay(stored, id),
        };
        ControlFlow::Break(answer)
    }

    /// A handler's pending error rendered now (it must be stored as the client sees it), unless
    /// it is a 5xx, which stays pending for the faultline layer to render and log.
    fn resolve_pending(&self, mut response: Response, id: &RequestId, path: &str) -> Response {
        let Some(pending) = response.extensions_mut().remove::<Pending>() else {
            return response;
        };
        let Some(error) = pending.take() else {
            return Error::bound(Situation::Internal).into_response();
        };
        let api = self.contract.into_api(error);
        if api.status() >= 500 {
            return Error::from(api).into_response();
        }
        if let Some(cause) = api.source() {
            tracing::error!(request_id = %id, code = api.code(), cause = %cause, "request failed");
        }
        self.contract.render(&api, id, path)
    }

    /// The stored response, with this request's id and the replay mark.
    fn replay(&self, stored: StoredResponse, id: &RequestId) -> Response {
        let mut response = stored.into_response();
        let headers = response.headers_mut();
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        headers.insert(self.contract.request_id_header().clone(), id.header_value());
        headers.insert(X_CONTENT_TYPE_OPTIONS, nosniff());
        // Stored error bodies came from the renderer: the faultline layer passes them on.
        response.extensions_mut().insert(Rendered);
        response
    }
}

impl IntoResponse for StoredResponse {
    /// The status, headers and body as stored (nothing added).
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        response
    }
}

/// Releases a claim that was neither completed nor released when the request ends: a panic,
/// a timeout or a dropped connection drops the request's future, and this with it.
struct Release {
    store: Arc<dyn IdempotencyStore>,
    token: Option<ClaimToken>,
}

impl Release {
    async fn release(&mut self) {
        if let Some(token) = self.token.take()
            && let Err(e) = self.store.release(&token).await
        {
            tracing::warn!(cause = %e, "an idempotency claim could not be released; it ends with its lease");
        }
    }

    fn disarm(&mut self) {
        self.token = None;
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let store = Arc::clone(&self.store);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = store.release(&token).await {
                        tracing::warn!(cause = %e, "an idempotency claim could not be released; it ends with its lease");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(
                    "no runtime to release an idempotency claim; it ends with its lease"
                );
            }
        }
    }
}

/// The claim a request holds while its handler runs (a request extension; extract it as
/// `Option<IdempotencyClaim>`, which is `None` on requests without a key).
///
/// # Completing in the handler's own transaction
///
/// A handler whose data lives in the same database as the records builds the response it will
/// send with [`IdempotencyClaim::response`], stores it with the engine's in-transaction
/// completion in the same transaction as its own writes, sends it, and calls
/// [`IdempotencyClaim::completed`] once the transaction has committed: the write and the
/// record then exist together or not at all.
#[derive(Clone)]
pub struct IdempotencyClaim {
    token: ClaimToken,
    retention: Duration,
    clock: Arc<dyn Clock>,
    kept: Arc<[HeaderName]>,
    completed: Arc<AtomicBool>,
    superseded: Arc<AtomicBool>,
}

impl std::fmt::Debug for IdempotencyClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyClaim")
            .field("token", &self.token)
            .field("retention", &self.retention)
            .field("completed", &self.is_completed())
            .finish_non_exhaustive()
    }
}

impl IdempotencyClaim {
    /// The claim's token, for the engine's in-transaction completion.
    pub fn token(&self) -> &ClaimToken {
        &self.token
    }

    /// How long the record is to be kept.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// The layer's clock now, in Unix milliseconds.
    pub fn now_millis(&self) -> i64 {
        self.clock.now_millis()
    }

    /// The record of a response: `status`, the headers of `headers` the layer keeps, `body`.
    pub fn response(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: impl Into<Bytes>,
    ) -> StoredResponse {
        StoredResponse::new(status, kept_headers(&self.kept, headers), body)
    }

    /// Tells the layer that the handler stored the record itself: it stores nothing.
    pub fn completed(&self) {
        self.completed.store(true, Ordering::Release);
    }

    /// Whether [`IdempotencyClaim::completed`] was called.
    pub fn is_completed(&self) -> bool {
        self.completed.load(Ordering::Acquire)
    }

    /// Tells the layer that the in-transaction completion found the key taken by another
    /// request (it answered `false`) and the handler rolled back: the layer answers what that
    /// request's record means instead of the handler's answer (see
    /// [`IdempotencyLayer::in_handler_transaction`]).
    pub fn superseded(&self) {
        self.superseded.store(true, Ordering::Release);
    }

    /// Whether [`IdempotencyClaim::superseded`] was called.
    pub fn is_superseded(&self) -> bool {
        self.superseded.load(Ordering::Acquire)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for IdempotencyClaim {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<IdempotencyClaim>().cloned())
    }
}
