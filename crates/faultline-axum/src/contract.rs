//! The contract a server keeps: a catalog, the profile it is served in, and the one renderer.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use faultline::details::IntoDetails;
use faultline::{ApiError, Catalog, Profile, RenderContext, Situation};
use serde_json::Value;

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
    prerendered: HashMap<Situation, Prerendered>,
}

/// One bound error rendered ahead: the bytes before and after the request id.
#[derive(Debug)]
struct Prerendered {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
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
        let request_id_header = HeaderName::try_from(catalog.api.request_id_header.as_str())
            .unwrap_or(HeaderName::from_static("x-request-id"));
        let mut contract = Contract {
            profile: catalog.api.profile,
            catalog,
            request_id_header,
            prerendered: HashMap::new(),
        };
        contract.prerender();
        Ok(contract)
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
        let mut prerendered = HashMap::new();
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
            if let ([at], false) = (at.as_slice(), holds_path) {
                headers.remove(&self.request_id_header);
                let headers = headers
                    .iter()
                    .map(|(name, value)| (name.clone(), value.clone()))
                    .collect();
                prerendered.insert(
                    situation,
                    Prerendered {
                        status,
                        headers,
                        before: body[..*at].to_vec(),
                        after: body[at + ID.len()..].to_vec(),
                    },
                );
            }
        }
        self.prerendered = prerendered;
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
        self.prerendered.contains_key(&situation)
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
        let Some(ready) = self.prerendered.get(&situation) else {
            return self.render(&self.bound(situation), request_id, path);
        };
        let id = request_id.as_str().as_bytes();
        let mut body = Vec::with_capacity(ready.before.len() + id.len() + ready.after.len());
        body.extend_from_slice(&ready.before);
        body.extend_from_slice(id);
        body.extend_from_slice(&ready.after);
        let mut response = Response::new(axum::body::Body::from(body));
        *response.status_mut() = ready.status;
        let headers = response.headers_mut();
        headers.reserve(ready.headers.len() + 1);
        for (name, value) in &ready.headers {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(self.request_id_header.clone(), request_id.header_value());
        response
    }

    /// Renders `error` as a response: status, content type, headers, request id, body.
    ///
    /// # Exactly one place renders an error
    ///
    /// Every refusal of every layer and extractor reaches the client through this function.
    pub fn render(&self, error: &ApiError, request_id: &RequestId, path: &str) -> Response {
        let mut response = Response::new(axum::body::Body::empty());
        let (status, body) = self.render_into(error, request_id, path, response.headers_mut());
        *response.status_mut() = status;
        *response.body_mut() = axum::body::Body::from(body);
        response
    }

    /// The status and body of [`Contract::render`], its headers written into `headers`: for a
    /// writer below the HTTP stack (see [`crate::listener`]). The same bytes either way.
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
        let body = self.profile.render(error, &ctx);
        let status =
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static(self.profile.content_type()),
        );
        for (name, value) in error.headers() {
            if let (Ok(name), Ok(value)) =
                (HeaderName::try_from(name), HeaderValue::try_from(value))
            {
                headers.insert(name, value);
            }
        }
        headers.insert(self.request_id_header.clone(), request_id.header_value());
        (status, body)
    }

    /// Resolves an [`Error`] to the catalog error it stands for.
    pub fn resolve(&self, error: &Error) -> ApiError {
        match &*error.0 {
            Repr::Api(api) => clone_error(api),
            Repr::Internal(_) => self.bound(Situation::Internal),
            Repr::Bound {
                situation,
                problems,
                headers,
                details,
            } => {
                let mut api = self.bound(*situation);
                let spec = self.catalog.get(api.code());
                if let Some(details) = problems
                    .as_ref()
                    .zip(spec)
                    .and_then(|(p, s)| p.to_details(&s.details))
                {
                    api = api.with_details(details);
                }
                if let Some(details) = details {
                    api = api.with_details(details.clone());
                }
                for (name, value) in headers {
                    api = api.with_header(*name, value.clone());
                }
                api
            }
        }
    }
}

fn clone_error(api: &ApiError) -> ApiError {
    let mut copy = ApiError::from_parts(
        api.code().to_owned().into(),
        api.status(),
        api.title().to_owned().into(),
        api.message().to_owned().into(),
        api.retry(),
    );
    if let Some(details) = api.details() {
        copy = copy.with_details(details.clone());
    }
    for (name, value) in api.headers() {
        copy = copy.with_header(name.to_owned(), value);
    }
    copy
}

/// What a handler, layer or extractor returns to refuse a request.
///
/// Either a catalog error the application raised (from a generated constructor), or a standard
/// situation that the contract resolves to its bound code. Its `IntoResponse` only marks the
/// response; the faultline layer renders it, so the body always has the request id and the
/// served profile.
#[derive(Debug)]
pub struct Error(pub(crate) Box<Repr>);

#[derive(Debug)]
pub(crate) enum Repr {
    Api(ApiError),
    Bound {
        situation: Situation,
        problems: Option<Problems>,
        details: Option<Value>,
        headers: Vec<(&'static str, String)>,
    },
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// The code the catalog binds to `situation`.
    pub fn bound(situation: Situation) -> Self {
        Error(Box::new(Repr::Bound {
            situation,
            problems: None,
            details: None,
            headers: Vec::new(),
        }))
    }

    /// A validation situation with the problems found; they take the bound code's shape.
    pub fn invalid(situation: Situation, problems: Problems) -> Self {
        Error(Box::new(Repr::Bound {
            situation,
            problems: Some(problems),
            details: None,
            headers: Vec::new(),
        }))
    }

    /// Sets details on a bound situation (ignored for an application error, which has its own).
    #[must_use]
    pub fn with_details(mut self, value: impl IntoDetails) -> Self {
        if let Repr::Bound { details, .. } = &mut *self.0 {
            *details = Some(value.into_details());
        }
        self
    }

    /// Adds a header to a bound situation (an application error carries its own).
    #[must_use]
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        match &mut *self.0 {
            Repr::Bound { headers, .. } => headers.push((name, value.into())),
            Repr::Api(_) | Repr::Internal(_) => {}
        }
        self
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
            } if headers.is_empty() => Some(*situation),
            _ => None,
        }
    }

    /// The cause kept for logs, if any.
    pub fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.0 {
            Repr::Api(api) => std::error::Error::source(api),
            Repr::Internal(cause) => Some(cause.as_ref()),
            Repr::Bound { .. } => None,
        }
    }
}

impl From<ApiError> for Error {
    fn from(error: ApiError) -> Self {
        Error(Box::new(Repr::Api(error)))
    }
}

impl Error {
    /// The internal error, keeping `cause` for the log line; the body says nothing of it.
    ///
    /// ```
    /// fn parse(input: &str) -> Result<u32, faultline_axum::Error> {
    ///     input.parse().map_err(faultline_axum::Error::internal)
    /// }
    /// assert!(parse("x").is_err());
    /// ```
    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error(Box::new(Repr::Internal(cause.into())))
    }
}

/// The marker a response carries until the faultline layer renders it.
#[derive(Clone)]
pub(crate) struct Pending(pub(crate) Arc<Error>);

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
        response.extensions_mut().insert(Pending(Arc::new(self)));
        response
    }
}
