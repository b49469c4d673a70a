//! The contract a server keeps: a catalog, the profile it is served in, and the one renderer.

use std::sync::{Arc, Mutex, PoisonError};

use axum::http::header::{
    CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use faultline::details::IntoDetails;
use faultline::{ApiError, Catalog, Profile, RenderContext, Situation};
use serde_json::Value;

use crate::metrics::Metrics;
pub use crate::problems::Problems;
use crate::request_id::RequestId;

/// The situations the server layers raise themselves: a catalog served by faultline-axum must
/// bind a code to each.
pub const REQUIRED: [Situation; 10] = [
    Situation::RouteNotFound,
    Situation::MethodNotAllowed,
    Situation::MalformedJson,
    Situation::ValidationFailed,
    Situation::InvalidQuery,
    Situation::InvalidPathId,
    Situation::UnsupportedMediaType,
    Situation::PayloadTooLarge,
    Situation::Timeout,
    Situation::Internal,
];

/// A catalog as served: which profile, and the request-id settings.
#[derive(Debug)]
pub struct Contract {
    catalog: Catalog,
    profile: Profile,
    request_id_header: HeaderName,
    /// Bound errors without details, rendered once by [`Contract::render_into`] around a
    /// placeholder request id; see [`Contract::render_bound`].
    prerendered: Vec<Option<Prerendered>>,
    /// For each situation (by [`slot`]), the headers its bound code declares; `None` when
    /// unbound. Read by the layer for each bare status, so no string lookup is needed.
    declared: Vec<Option<Box<[HeaderName]>>>,
    /// Whether hand-built error JSON is refused; see [`Contract::strict`].
    strict: bool,
    /// Whether error bodies hold the path (problem+json's `instance`), found by
    /// [`Contract::prerender`].
    needs_path: bool,
    /// The counters every rendered error goes into, with each situation's code position
    /// (by [`slot`]) so a bound error is counted without a lookup by name.
    metrics: Option<(Arc<Metrics>, Vec<Option<usize>>)>,
}

/// One bound error rendered ahead: the bytes before and after the request id.
#[derive(Debug)]
struct Prerendered {
    status: StatusCode,
    /// Every header, the request id's with a placeholder value: a copy of the map takes the
    /// real id in place, without hashing the others again or growing.
    headers: HeaderMap,
    /// Where the request id's header comes in `headers`' iteration order: the copy's value is
    /// replaced there without a lookup by name.
    id_at: usize,
    before: Vec<u8>,
    after: Vec<u8>,
}

/// The catalog lacks bindings the server needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingBindings(pub Vec<Situation>);

impl std::error::Error for MissingBindings {}

impl std::fmt::Display for MissingBindings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.0.iter().map(|s| s.as_str()).collect();
        write!(f, "the catalog must bind a code to: {}", names.join(", "))
    }
}

impl Contract {
    /// Serves `catalog` in its own profile. Fails when a required situation is unbound.
    pub fn new(catalog: Catalog) -> Result<Self, MissingBindings> {
        let missing: Vec<Situation> = REQUIRED
            .into_iter()
            .filter(|s| catalog.bound(*s).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(MissingBindings(missing));
        }
        // The usual name is taken from static bytes: copies of it then cost no reference count.
        const USUAL: HeaderName = HeaderName::from_static("x-request-id");
        let request_id_header = match HeaderName::try_from(catalog.api.request_id_header.as_str()) {
            Ok(name) if name != USUAL => name,
            _ => USUAL,
        };
        let mut contract = Contract {
            profile: catalog.api.profile,
            catalog,
            request_id_header,
            prerendered: Vec::new(),
            declared: Vec::new(),
            strict: false,
            needs_path: true,
            metrics: None,
        };
        contract.prerender();
        Ok(contract)
    }

    /// In strict mode, an error response with a JSON body that the renderer did not produce
    /// (error JSON built by hand in a handler) is replaced by the internal error; otherwise it
    /// is passed on and logged once per route. Meant for tests. Off by default;
    /// [`crate::Faultline::strict`] sets the same option.
    #[must_use]
    pub fn strict(mut self, on: bool) -> Self {
        self.strict = on;
        self
    }

    /// Whether [`Contract::strict`] is on.
    pub fn is_strict(&self) -> bool {
        self.strict
    }

    /// Counts every error rendered from now on in `metrics` (see [`crate::metrics`]).
    ///
    /// # Each error answered is counted once
    ///
    /// The count is taken where the error is rendered for a client (by the faultline layer,
    /// [`Contract::render`], [`Contract::render_bound`] or the listener), never when the
    /// contract renders ahead at start-up.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        let slots = Situation::ALL
            .iter()
            .map(|situation| {
                self.catalog
                    .bound(*situation)
                    .and_then(|spec| metrics.code_index(&spec.code))
            })
            .collect();
        self.metrics = Some((metrics, slots));
        self
    }

    /// The counters attached with [`Contract::with_metrics`].
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref().map(|(metrics, _)| metrics)
    }

    /// Counts one error with `code` answered, when metrics are on.
    pub(crate) fn count_error(&self, code: &str) {
        if let Some((metrics, _)) = &self.metrics {
            metrics.error(code);
        }
    }

    /// Serves the same catalog in another envelope profile.
    #[must_use]
    pub fn with_profile(mut self, profile: Profile) -> Self {
        self.profile = profile;
        self.prerender();
        self
    }

    /// Renders every bound situation once, through [`Contract::render_into`], with
    /// placeholders for the request id and the path; keeps those whose bytes hold the id once
    /// and the path nowhere (a problem+json `instance` holds the path, so those are skipped).
    fn prerender(&mut self) {
        const ID: &str = "req_0faultline0placeholder0id0";
        const PATH: &str = "/0faultline0placeholder0path0";
        let id = RequestId::accept(ID).expect("the placeholder is a valid id");
        let mut prerendered: Vec<Option<Prerendered>> = Vec::new();
        prerendered.resize_with(Situation::ALL.len(), || None);
        self.declared = Situation::ALL
            .iter()
            .map(|&situation| {
                self.catalog.bound(situation).map(|spec| {
                    spec.headers
                        .iter()
                        .filter_map(|name| HeaderName::try_from(name.as_str()).ok())
                        .collect()
                })
            })
            .collect();
        let mut needs_path = false;
        for &situation in Situation::ALL {
            let Some(spec) = self.catalog.bound(situation) else {
                continue;
            };
            let mut headers = HeaderMap::new();
            let (status, body) = self.render_into(&spec.to_error(), &id, PATH, &mut headers);
            let at: Vec<usize> = body
                .windows(ID.len())
                .enumerate()
                .filter(|(_, w)| *w == ID.as_bytes())
                .map(|(i, _)| i)
                .collect();
            let holds_path = body.windows(PATH.len()).any(|w| w == PATH.as_bytes());
            needs_path |= holds_path;
            if let ([at], false) = (at.as_slice(), holds_path) {
                headers.insert(
                    self.request_id_header.clone(),
                    HeaderValue::from_static("-"),
                );
                let id_at = headers
                    .iter()
                    .position(|(name, _)| *name == self.request_id_header)
                    .expect("the request id header was just inserted");
                prerendered[slot(situation)] = Some(Prerendered {
                    status,
                    headers,
                    id_at,
                    before: body[..*at].to_vec(),
                    after: body[at + ID.len()..].to_vec(),
                });
            }
        }
        self.prerendered = prerendered;
        self.needs_path = needs_path;
    }

    /// The headers the code bound to `situation` declares (`Retry-After`, `Allow`), or `None`
    /// when the catalog leaves `situation` unbound.
    pub fn declared_headers(&self, situation: Situation) -> Option<&[HeaderName]> {
        self.declared.get(slot(situation))?.as_deref()
    }

    /// Whether error bodies in this profile hold the request's path (problem+json's
    /// `instance` does): a server keeps the path for rendering only then.
    pub fn needs_path(&self) -> bool {
        self.needs_path
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The profile error bodies are rendered in.
    pub fn profile(&self) -> Profile {
        self.profile
    }

    /// The header carrying request ids.
    pub fn request_id_header(&self) -> &HeaderName {
        &self.request_id_header
    }

    /// A fresh error for the code bound to `situation`.
    ///
    /// Required situations are checked by [`Contract::new`]; an optional one that is unbound
    /// falls back to the internal error, so a request never goes unanswered.
    pub fn bound(&self, situation: Situation) -> ApiError {
        self.catalog
            .bound(situation)
            .or_else(|| self.catalog.bound(Situation::Internal))
            .map(faultline::ErrorSpec::to_error)
            .expect("Contract::new checked the internal binding")
    }

    /// Whether [`Contract::render_bound`] serves `situation` from its copy rendered ahead
    /// (false for unbound situations and for bodies that hold the path, as problem+json does).
    pub fn is_prerendered(&self, situation: Situation) -> bool {
        self.prerendered
            .get(slot(situation))
            .is_some_and(Option::is_some)
    }

    /// The response for the code bound to `situation`, with the catalog's message and no
    /// details: the same bytes as [`Contract::render`] gives for [`Contract::bound`], from the
    /// copy rendered ahead, so the commonest refusals (unknown routes above all) cost a copy.
    pub fn render_bound(
        &self,
        situation: Situation,
        request_id: &RequestId,
        path: &str,
    ) -> Response {
        let mut response = self.render_bound_unmarked(situation, request_id, path);
        response.extensions_mut().insert(Rendered);
        response
    }

    /// [`Contract::render_bound`] without the [`Rendered`] mark, for the faultline layer (it
    /// renders last, so nothing after it needs the mark, and the mark costs an allocation).
    pub(crate) fn render_bound_unmarked(
        &self,
        situation: Situation,
        request_id: &RequestId,
        path: &str,
    ) -> Response {
        let Some(Some(ready)) = self.prerendered.get(slot(situation)) else {
            return self.render_unmarked(&self.bound(situation), request_id, path);
        };
        if let Some((metrics, slots)) = &self.metrics
            && let Some(Some(index)) = slots.get(slot(situation))
        {
            metrics.error_at(*index);
        }
        let id = request_id.as_bytes();
        let mut body = Vec::with_capacity(ready.before.len() + id.len() + ready.after.len());
        body.extend_from_slice(&ready.before);
        body.extend_from_slice(id);
        body.extend_from_slice(&ready.after);
        let mut response = Response::new(axum::body::Body::from(body));
        *response.status_mut() = ready.status;
        let mut headers = ready.headers.clone();
        match headers.iter_mut().nth(ready.id_at) {
            Some((_, value)) => *value = request_id.header_value(),
            None => {
                headers.insert(self.request_id_header.clone(), request_id.header_value());
            }
        }
        *response.headers_mut() = headers;
        response
    }

    /// Renders `error` as a response: status, content type, headers, request id, body.
    ///
    /// # Exactly one place renders an error
    ///
    /// Every refusal of every layer and extractor reaches the client through this function
    /// (or [`Contract::render_into`], which it calls). The response is marked as rendered, so
    /// the faultline layer passes it on unchanged when a handler returns it.
    pub fn render(&self, error: &ApiError, request_id: &RequestId, path: &str) -> Response {
        let mut response = self.render_unmarked(error, request_id, path);
        response.extensions_mut().insert(Rendered);
        response
    }

    /// [`Contract::render`] without the [`Rendered`] mark, for the faultline layer.
    pub(crate) fn render_unmarked(
        &self,
        error: &ApiError,
        request_id: &RequestId,
        path: &str,
    ) -> Response {
        self.count_error(error.code());
        let mut response = Response::new(axum::body::Body::empty());
        let (status, body) = self.render_into(error, request_id, path, response.headers_mut());
        *response.status_mut() = status;
        *response.body_mut() = axum::body::Body::from(body);
        response
    }

    /// The status and body of [`Contract::render`], its headers written into `headers`: for a
    /// writer below the HTTP stack (see [`crate::listener`]). The same bytes either way.
    ///
    /// # `Retry-After` whenever the catalog declares it
    ///
    /// A code whose catalog entry lists `Retry-After` among its headers always carries one:
    /// the error's own value when it has one, else [`DEFAULT_RETRY_AFTER`] seconds.
    ///
    /// # `X-Content-Type-Options: nosniff`
    ///
    /// Every error carries it, so a browser never guesses another type for the body.
    ///
    /// # Bounded bodies
    ///
    /// A body with details that comes out longer than [`MAX_ERROR_BODY`] bytes is rendered
    /// again without them (code, message and request id stay), and a warning is logged. The
    /// rest of a body comes from the catalog, whose messages are short.
    pub fn render_into(
        &self,
        error: &ApiError,
        request_id: &RequestId,
        path: &str,
        headers: &mut HeaderMap,
    ) -> (StatusCode, Vec<u8>) {
        // Only problem+json (`type`) and Google (`Help`, `ErrorInfo.domain`) bodies carry a
        // docs link or a domain; other profiles skip building them.
        let (docs_url, domain) = match self.profile {
            Profile::Problem => (self.catalog.docs_url_for(error.code()), None),
            Profile::Google => (
                self.catalog.docs_url_for(error.code()),
                Some(self.catalog.google_domain()),
            ),
            _ => (None, None),
        };
        let mut ctx = RenderContext::new()
            .with_request_id(request_id.as_str())
            .with_instance(path);
        if let Some(url) = &docs_url {
            ctx = ctx.with_docs_url(url);
        }
        if let Some(domain) = &domain {
            ctx = ctx.with_domain(domain);
        }
        let mut body = self.profile.render(error, &ctx);
        if body.len() > MAX_ERROR_BODY && error.details().is_some() {
            tracing::warn!(
                request_id = %request_id,
                code = error.code(),
                size_bytes = body.len(),
                max_bytes = MAX_ERROR_BODY,
                "error body too large: sent without its details"
            );
            body = self.profile.render(&without_details(error), &ctx);
        }
        let status =
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(self.profile.content_type()),
        );
        headers.insert(X_CONTENT_TYPE_OPTIONS, nosniff());
        for (name, value) in error.headers() {
            if let (Ok(name), Ok(value)) =
                (HeaderName::try_from(name), HeaderValue::try_from(value))
            {
                headers.insert(name, value);
            }
        }
        if !headers.contains_key(RETRY_AFTER)
            && self
                .catalog
                .get(error.code())
                .is_some_and(|spec| spec.carries("Retry-After"))
        {
            headers.insert(RETRY_AFTER, HeaderValue::from(DEFAULT_RETRY_AFTER));
        }
        headers.insert(self.request_id_header.clone(), request_id.header_value());
        (status, body)
    }

    /// Resolves an [`Error`] to the catalog error it stands for. The copy keeps no cause: use
    /// [`Contract::into_api`] to keep it.
    pub fn resolve(&self, error: &Error) -> ApiError {
        match &*error.0 {
            Repr::Api(api) => clone_error(api),
            Repr::Bound {
                situation,
                problems,
                headers,
                details,
                ..
            } => self.resolve_bound(*situation, problems.as_ref(), details.clone(), headers),
        }
    }

    /// Resolves an [`Error`] to the catalog error it stands for, moving its cause (an internal
    /// error's, or an [`ApiError`]'s source) into the result, where
    /// [`std::error::Error::source`] finds it.
    pub fn into_api(&self, error: Error) -> ApiError {
        match *error.0 {
            Repr::Api(api) => api,
            Repr::Bound {
                situation,
                problems,
                details,
                headers,
                cause,
            } => {
                let api = self.resolve_bound(situation, problems.as_ref(), details, &headers);
                match cause {
                    Some(cause) => api.with_source(cause),
                    None => api,
                }
            }
        }
    }

    fn resolve_bound(
        &self,
        situation: Situation,
        problems: Option<&Problems>,
        details: Option<Value>,
        headers: &[(&'static str, String)],
    ) -> ApiError {
        let mut api = self.bound(situation);
        let spec = self.catalog.get(api.code());
        if let Some(details) = problems
            .zip(spec)
            .and_then(|(p, s)| p.to_details(&s.details))
        {
            api = api.with_details(details);
        }
        if let Some(details) = details {
            api = api.with_details(details);
        }
        for (name, value) in headers {
            api = api.with_header(*name, value.clone());
        }
        api
    }
}

/// The position of `situation` in tables indexed by situation ([`Situation::ALL`]'s order).
fn slot(situation: Situation) -> usize {
    situation as usize
}

/// The largest error body sent with its details, in bytes (64 KiB); see
/// [`Contract::render_into`].
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// The `Retry-After` sent, in seconds, when the catalog declares the header and nothing set
/// it.
pub const DEFAULT_RETRY_AFTER: u16 = 1;

/// The value of `X-Content-Type-Options` on every answer (static bytes: no allocation).
pub(crate) fn nosniff() -> HeaderValue {
    HeaderValue::from_static("nosniff")
}

/// `error` without its details (and without its cause, which rendering never reads).
fn without_details(error: &ApiError) -> ApiError {
    let mut copy = ApiError::from_parts(
        error.code().to_owned().into(),
        error.status(),
        error.title().to_owned().into(),
        error.message().to_owned().into(),
        error.retry(),
    );
    for (name, value) in error.headers() {
        copy = copy.with_header(name.to_owned(), value);
    }
    copy
}

fn clone_error(api: &ApiError) -> ApiError {
    let copy = without_details(api);
    match api.details() {
        Some(details) => copy.with_details(details.clone()),
        None => copy,
    }
}

/// What a handler, layer or extractor returns to refuse a request.
///
/// Either a catalog error the application raised (from a generated constructor), or a standard
/// situation that the contract resolves to its bound code, or an unexpected failure (rendered
/// as the bound internal error). Its `IntoResponse` only marks the response; the faultline
/// layer renders it, so the body always has the request id and the served profile.
///
/// # A real Rust error whose text reveals nothing
///
/// `Error` implements [`std::error::Error`]: [`Display`](std::fmt::Display) names the code or
/// situation only (never the cause's text, which may hold secrets), and
/// [`source`](std::error::Error::source) gives the cause, for logs.
///
/// ```
/// use std::error::Error as _;
/// let error = faultline_axum::Error::internal(std::io::Error::other("password=hunter2"));
/// assert_eq!(error.to_string(), "internal error");
/// assert!(error.source().unwrap().to_string().contains("hunter2"));
/// ```
///
/// # Details and headers apply to every kind
///
/// [`Error::with_details`] and [`Error::with_header`] set details and headers on the rendered
/// error whatever its kind: on an application error they are set on its [`ApiError`]
/// (replacing its details, replacing a header of the same name); on a bound situation and on
/// an internal error they are added to the bound code. The application chose them, so they
/// are sent; the cause of an internal error never is.
#[derive(Debug)]
pub struct Error(pub(crate) Box<Repr>);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub(crate) enum Repr {
    Api(ApiError),
    Bound {
        situation: Situation,
        problems: Option<Problems>,
        details: Option<Value>,
        headers: Vec<(&'static str, String)>,
        /// The cause (of an internal error, a store outage), for the log line only.
        cause: Option<BoxError>,
    },
}

impl Error {
    /// The code the catalog binds to `situation`.
    pub fn bound(situation: Situation) -> Self {
        Error(Box::new(Repr::Bound {
            situation,
            problems: None,
            details: None,
            headers: Vec::new(),
            cause: None,
        }))
    }

    /// A validation situation with the problems found; they take the bound code's shape.
    pub fn invalid(situation: Situation, problems: Problems) -> Self {
        Error(Box::new(Repr::Bound {
            situation,
            problems: Some(problems),
            details: None,
            headers: Vec::new(),
            cause: None,
        }))
    }

    /// The internal error, keeping `cause` for the log line; the body says nothing of it.
    ///
    /// ```
    /// fn parse(input: &str) -> Result<u32, faultline_axum::Error> {
    ///     input.parse().map_err(faultline_axum::Error::internal)
    /// }
    /// assert!(parse("x").is_err());
    /// ```
    pub fn internal(cause: impl Into<BoxError>) -> Self {
        Error(Box::new(Repr::Bound {
            situation: Situation::Internal,
            problems: None,
            details: None,
            headers: Vec::new(),
            cause: Some(cause.into()),
        }))
    }

    /// Keeps `cause` for the log line (with the request id) of a bound situation; the body
    /// says nothing of it. No effect on an application [`ApiError`], whose source is its own.
    #[must_use]
    pub fn with_cause(self, cause: impl Into<BoxError>) -> Self {
        let mut repr = self.0;
        if let Repr::Bound { cause: slot, .. } = &mut *repr {
            *slot = Some(cause.into());
        }
        Error(repr)
    }

    /// Sets the details of the rendered error (see the type's `# Details and headers apply to
    /// every kind`).
    #[must_use]
    pub fn with_details(self, value: impl IntoDetails) -> Self {
        let mut repr = self.0;
        *repr = match *repr {
            Repr::Api(api) => Repr::Api(api.with_details(value)),
            Repr::Bound {
                situation,
                problems,
                headers,
                cause,
                ..
            } => Repr::Bound {
                situation,
                problems,
                details: Some(value.into_details()),
                headers,
                cause,
            },
        };
        Error(repr)
    }

    /// Adds a header to the rendered error, replacing one of the same name (see the type's
    /// `# Details and headers apply to every kind`).
    #[must_use]
    pub fn with_header(self, name: &'static str, value: impl Into<String>) -> Self {
        let mut repr = self.0;
        match &mut *repr {
            Repr::Api(_) => {
                let Repr::Api(api) = *repr else {
                    unreachable!("matched above")
                };
                *repr = Repr::Api(api.with_header(name, value));
            }
            Repr::Bound { headers, .. } => {
                headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                headers.push((name, value.into()));
            }
        }
        Error(repr)
    }

    /// The situation, when this is a bound situation with nothing added to it (no problems,
    /// details or headers): such an error renders from [`Contract::render_bound`].
    pub(crate) fn plain_situation(&self) -> Option<Situation> {
        match &*self.0 {
            Repr::Bound {
                situation,
                problems: None,
                details: None,
                headers,
                ..
            } if headers.is_empty() => Some(*situation),
            _ => None,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            Repr::Api(api) => write!(f, "{} ({})", api.code(), api.status()),
            Repr::Bound {
                situation: Situation::Internal,
                ..
            } => f.write_str("internal error"),
            Repr::Bound { situation, .. } => write!(f, "situation {situation}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.0 {
            Repr::Api(api) => std::error::Error::source(api),
            Repr::Bound { cause, .. } => cause
                .as_deref()
                .map(|c| c as &(dyn std::error::Error + 'static)),
        }
    }
}

impl From<ApiError> for Error {
    fn from(error: ApiError) -> Self {
        Error(Box::new(Repr::Api(error)))
    }
}

/// The marker a response carries until the faultline layer renders it. The error is moved out
/// (not cloned), so its cause reaches the log line.
#[derive(Clone)]
pub(crate) struct Pending(Arc<Mutex<Option<Error>>>);

impl Pending {
    /// The error, the first time it is asked for.
    pub(crate) fn take(&self) -> Option<Error> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
        response
            .extensions_mut()
            .insert(Pending(Arc::new(Mutex::new(Some(self)))));
        response
    }
}

/// The mark of a response [`Contract::render`] or [`Contract::render_bound`] produced: the
/// faultline layer passes it on as it is, and never mistakes it for hand-built error JSON.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rendered;
