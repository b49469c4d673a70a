//! Envelope profiles: the wire shapes an error body can take, rendered and parsed.
//!
//! One catalog can be served in any profile, and [`parse_any`] reads all of them, so a client
//! does not need to know which one an API chose.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::ApiError;

crate::names::named_enum! {
    /// The wire shape of an error body.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Profile ("profile") {
        /// `{"error": code, "message", "request_id", "details"}`.
        Flat => "flat",
        /// `{"code", "message", "details", "request_id"}`.
        Code => "code",
        /// `{"error": {"code", "message", "request_id", "details"}}`.
        Nested => "nested",
        /// RFC 9457 `application/problem+json`: `type`, `title`, `status`, `detail`, `instance`,
        /// with `code`, `request_id` and `details` as extension members.
        Problem => "problem",
        /// `google.rpc.Status` as Google's JSON APIs send it, with standard `google.rpc`
        /// detail messages only: `{"error": {"code": 404, "message", "status": "NOT_FOUND",
        /// "details": [ErrorInfo, …]}}`.
        Google => "google",
    }
}

/// What a renderer needs to know about the request besides the error itself.
///
/// Built from [`RenderContext::new`] (or `Default`) and the `with_*` methods, so that new
/// inputs can be added without breaking callers.
///
/// ```
/// use faultline::RenderContext;
/// let ctx = RenderContext::new().with_request_id("req_1").with_instance("/v1/chatbots");
/// assert_eq!(ctx.request_id, Some("req_1"));
/// assert_eq!(ctx.docs_url, None);
/// ```
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct RenderContext<'a> {
    /// The request id, echoed in the body.
    pub request_id: Option<&'a str>,
    /// The problem+json `instance`: the path of the request that failed (percent-encoded when
    /// rendered, see [`uri_path_reference`]).
    pub instance: Option<&'a str>,
    /// A link to the code's documentation: the problem+json `type` and the Google `Help` link.
    pub docs_url: Option<&'a str>,
    /// The `ErrorInfo.domain` of the Google profile, e.g. the API's host name
    /// (see [`Catalog::google_domain`](crate::Catalog::google_domain)).
    pub domain: Option<&'a str>,
}

impl<'a> RenderContext<'a> {
    /// An empty context: no request id, path, docs link or domain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the request id.
    #[must_use]
    pub fn with_request_id(mut self, request_id: &'a str) -> Self {
        self.request_id = Some(request_id);
        self
    }

    /// Sets the path of the request that failed.
    #[must_use]
    pub fn with_instance(mut self, path: &'a str) -> Self {
        self.instance = Some(path);
        self
    }

    /// Sets the link to the code's documentation.
    #[must_use]
    pub fn with_docs_url(mut self, url: &'a str) -> Self {
        self.docs_url = Some(url);
        self
    }

    /// Sets the Google `ErrorInfo.domain`.
    #[must_use]
    pub fn with_domain(mut self, domain: &'a str) -> Self {
        self.domain = Some(domain);
        self
    }
}

/// An error body read back from the wire, in whatever profile it came.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Envelope {
    /// The machine code.
    pub code: String,
    /// The human message.
    pub message: String,
    /// The request id, when the body has one.
    pub request_id: Option<String>,
    /// The details, when present.
    pub details: Option<Value>,
    /// The HTTP status, when the body repeats it (problem+json, Google).
    pub status: Option<u16>,
}

/// Why a body could not be read as an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The body is not JSON.
    #[error("the body is not JSON")]
    NotJson,
    /// The body is JSON but not an error envelope of the profile.
    #[error("the body is not a {profile} error envelope: {reason}")]
    NotAnEnvelope {
        /// The profile that was expected.
        profile: Profile,
        /// What is missing or wrong.
        reason: &'static str,
    },
    /// The body is JSON but matches no known profile.
    #[error("the body matches no known error envelope")]
    Unrecognised,
}

const ERROR_INFO: &str = "type.googleapis.com/google.rpc.ErrorInfo";
const REQUEST_INFO: &str = "type.googleapis.com/google.rpc.RequestInfo";
const RETRY_INFO: &str = "type.googleapis.com/google.rpc.RetryInfo";
const BAD_REQUEST: &str = "type.googleapis.com/google.rpc.BadRequest";
const QUOTA_FAILURE: &str = "type.googleapis.com/google.rpc.QuotaFailure";
const PRECONDITION_FAILURE: &str = "type.googleapis.com/google.rpc.PreconditionFailure";
const RESOURCE_INFO: &str = "type.googleapis.com/google.rpc.ResourceInfo";
const HELP: &str = "type.googleapis.com/google.rpc.Help";

/// The `ErrorInfo.metadata` key holding the exact catalog code in the Google profile.
const META_CODE: &str = "code";
/// The `ErrorInfo.metadata` key holding details that are not a non-empty object, as JSON.
const META_DETAILS: &str = "details";

impl Profile {
    /// The `Content-Type` of a body in this profile.
    pub const fn content_type(self) -> &'static str {
        match self {
            Profile::Problem => "application/problem+json",
            _ => "application/json",
        }
    }

    /// Renders `error` as JSON bytes in this profile.
    ///
    /// This is the one place an error body is built; the server, the docs examples and the
    /// tests all go through it.
    pub fn render(self, error: &ApiError, ctx: &RenderContext<'_>) -> Vec<u8> {
        // Serialising borrowed structs of strings and `Value`s cannot fail: every map key is a
        // string.
        serde_json::to_vec(&Body::new(self, error, ctx)).expect("error bodies always serialise")
    }

    /// Renders `error` as a JSON value in this profile (same content as [`Profile::render`]).
    pub fn to_value(self, error: &ApiError, ctx: &RenderContext<'_>) -> Value {
        serde_json::to_value(Body::new(self, error, ctx)).expect("error bodies always serialise")
    }

    /// Renders `error` as indented JSON, for docs.
    pub fn render_pretty(self, error: &ApiError, ctx: &RenderContext<'_>) -> String {
        serde_json::to_string_pretty(&Body::new(self, error, ctx))
            .expect("error bodies always serialise")
    }

    /// Parses a body in this profile.
    pub fn parse(self, body: &[u8]) -> Result<Envelope, ParseError> {
        let value: Value = serde_json::from_slice(body).map_err(|_| ParseError::NotJson)?;
        self.parse_value(&value)
    }

    /// Parses an already decoded JSON body in this profile.
    pub fn parse_value(self, value: &Value) -> Result<Envelope, ParseError> {
        let not = |reason| ParseError::NotAnEnvelope {
            profile: self,
            reason,
        };
        let root = value.as_object().ok_or(not("the body is not an object"))?;
        match self {
            Profile::Flat => {
                let code = str_member(root, "error").ok_or(not("`error` is not a string"))?;
                Ok(flat_like(code, root))
            }
            Profile::Code => {
                let code = str_member(root, "code").ok_or(not("`code` is not a string"))?;
                Ok(flat_like(code, root))
            }
            Profile::Nested => {
                let inner = root
                    .get("error")
                    .and_then(Value::as_object)
                    .ok_or(not("`error` is not an object"))?;
                let code = str_member(inner, "code").ok_or(not("`error.code` is not a string"))?;
                Ok(flat_like(code, inner))
            }
            Profile::Problem => {
                let code =
                    str_member(root, "code").ok_or(not("the `code` extension is missing"))?;
                Ok(Envelope {
                    code: code.to_owned(),
                    message: str_member(root, "detail")
                        .or_else(|| str_member(root, "title"))
                        .unwrap_or_default()
                        .to_owned(),
                    request_id: str_member(root, "request_id").map(str::to_owned),
                    details: details_member(root),
                    status: status_member(root, "status"),
                })
            }
            Profile::Google => {
                let inner = root
                    .get("error")
                    .and_then(Value::as_object)
                    .ok_or(not("`error` is not an object"))?;
                let status =
                    status_member(inner, "code").ok_or(not("`error.code` is not a number"))?;
                let entries = inner
                    .get("details")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                let find = |ty: &str| {
                    entries
                        .iter()
                        .filter_map(Value::as_object)
                        .find(|e| str_member(e, "@type") == Some(ty))
                };
                let info = find(ERROR_INFO).ok_or(not("no ErrorInfo in `error.details`"))?;
                let metadata = info.get("metadata").and_then(Value::as_object);
                // Our own bodies keep the exact code in the metadata; another server's
                // ErrorInfo has only its UPPER_SNAKE reason.
                let code = metadata
                    .and_then(|m| str_member(m, META_CODE))
                    .or_else(|| str_member(info, "reason"))
                    .ok_or(not("ErrorInfo has no `reason`"))?;
                Ok(Envelope {
                    code: code.to_owned(),
                    message: str_member(inner, "message").unwrap_or_default().to_owned(),
                    request_id: find(REQUEST_INFO)
                        .and_then(|r| str_member(r, "requestId"))
                        .map(str::to_owned),
                    details: metadata.and_then(details_from_metadata),
                    status: Some(status),
                })
            }
        }
    }
}

/// Parses a body in whichever profile it is, trying the most specific shapes first.
///
/// ```
/// use faultline::{parse_any, Profile};
/// let (profile, envelope) = parse_any(br#"{"error":{"code":"NOT_FOUND","message":"No such prompt."}}"#).unwrap();
/// assert_eq!(profile, Profile::Nested);
/// assert_eq!(envelope.code, "NOT_FOUND");
/// ```
pub fn parse_any(body: &[u8]) -> Result<(Profile, Envelope), ParseError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| ParseError::NotJson)?;
    let root = value.as_object().ok_or(ParseError::Unrecognised)?;
    let profile = match root.get("error") {
        Some(Value::String(_)) => Profile::Flat,
        Some(Value::Object(inner)) if inner.get("code").is_some_and(Value::is_number) => {
            Profile::Google
        }
        Some(Value::Object(_)) => Profile::Nested,
        _ if root.contains_key("type")
            || root.contains_key("detail")
            || root.contains_key("title") =>
        {
            Profile::Problem
        }
        _ if root.get("code").is_some_and(Value::is_string) => Profile::Code,
        _ => return Err(ParseError::Unrecognised),
    };
    profile
        .parse_value(&value)
        .map(|envelope| (profile, envelope))
}

fn str_member<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

fn status_member(map: &Map<String, Value>, key: &str) -> Option<u16> {
    map.get(key)
        .and_then(Value::as_u64)
        .and_then(|n| u16::try_from(n).ok())
}

fn details_member(map: &Map<String, Value>) -> Option<Value> {
    map.get("details").filter(|d| !d.is_null()).cloned()
}

fn flat_like(code: &str, map: &Map<String, Value>) -> Envelope {
    Envelope {
        code: code.to_owned(),
        message: str_member(map, "message").unwrap_or_default().to_owned(),
        request_id: str_member(map, "request_id").map(str::to_owned),
        details: details_member(map),
        status: None,
    }
}

/// The canonical `google.rpc.Code` name for an HTTP status.
pub fn google_status_name(status: u16) -> &'static str {
    match status {
        400 | 413 | 415 | 422 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 | 410 => "NOT_FOUND",
        408 | 504 => "DEADLINE_EXCEEDED",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 | 405 => "UNIMPLEMENTED",
        503 | 502 => "UNAVAILABLE",
        400..=499 => "FAILED_PRECONDITION",
        _ => "INTERNAL",
    }
}

/// The `ErrorInfo.reason` for a code: UPPER_SNAKE as AIP-193 asks, every run of characters
/// other than ASCII letters and digits becoming one underscore.
///
/// ```
/// use faultline::profile::google_reason;
/// assert_eq!(google_reason("api_key.revoked"), "API_KEY_REVOKED");
/// assert_eq!(google_reason("NOT_FOUND"), "NOT_FOUND");
/// assert_eq!(google_reason("a-b..c_"), "A_B_C");
/// ```
pub fn google_reason(code: &str) -> String {
    let mut reason = String::with_capacity(code.len());
    for c in code.chars() {
        if c.is_ascii_alphanumeric() {
            reason.push(c.to_ascii_uppercase());
        } else if !reason.is_empty() && !reason.ends_with('_') {
            reason.push('_');
        }
    }
    if reason.ends_with('_') {
        reason.pop();
    }
    reason
}

/// A request path made into a valid URI reference, for the problem+json `instance`.
///
/// # Any path gives a valid URI reference to that path
///
/// Unreserved characters, sub-delimiters, `:`, `@`, `/` and valid `%XX` escapes are kept;
/// everything else (space, `{ } | ^ " \\` and the like, broken `%` escapes, non-ASCII as its
/// UTF-8 bytes) is percent-encoded. So that the reference cannot be read as something other
/// than a path, a leading `//` (an authority) becomes `/%2F`, and a `:` before the first `/` of
/// a relative path (a scheme) becomes `%3A`. A path that needs none of this comes back borrowed.
///
/// ```
/// use faultline::profile::uri_path_reference;
/// assert_eq!(uri_path_reference("/v1/chatbots/cb_1"), "/v1/chatbots/cb_1");
/// assert_eq!(uri_path_reference("/a b/{x}|^\"\\"), "/a%20b/%7Bx%7D%7C%5E%22%5C");
/// assert_eq!(uri_path_reference("/caf\u{e9}/%41/%zz"), "/caf%C3%A9/%41/%25zz");
/// assert_eq!(uri_path_reference("//evil.example/x"), "/%2Fevil.example/x");
/// assert_eq!(uri_path_reference("mailto:x/y:z"), "mailto%3Ax/y:z");
/// ```
pub fn uri_path_reference(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    let is_escape = |i: usize| {
        bytes.get(i) == Some(&b'%')
            && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    };
    // The first segment of a relative path ends at the first `/`; before it a `:` would
    // start a scheme.
    let first_segment_end = if bytes.first() == Some(&b'/') {
        0
    } else {
        bytes.iter().position(|&b| b == b'/').unwrap_or(bytes.len())
    };
    let keeps = |i: usize| {
        let b = bytes[i];
        (is_path_byte(b) || is_escape(i))
            && !(i == 1 && b == b'/' && bytes[0] == b'/')
            && !(i < first_segment_end && b == b':')
    };
    if (0..bytes.len()).all(keeps) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len() + 16);
    for (i, &b) in bytes.iter().enumerate() {
        if keeps(i) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    Cow::Owned(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// RFC 3986 `pchar` (without `%`) and `/`: what a path may hold as is.
fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b)
}

/// Reads details back from `ErrorInfo.metadata` (see [`metadata_entries`]).
fn details_from_metadata(metadata: &Map<String, Value>) -> Option<Value> {
    if let Some(whole) = metadata.get(META_DETAILS) {
        return Some(metadata_value(whole));
    }
    let mut members = Map::new();
    for (key, value) in metadata {
        if key == META_CODE {
            continue;
        }
        let name = key.strip_prefix('_').unwrap_or(key);
        members.insert(name.to_owned(), metadata_value(value));
    }
    (!members.is_empty()).then_some(Value::Object(members))
}

/// A metadata string that is valid JSON stands for that JSON value; any other is the string.
fn metadata_value(value: &Value) -> Value {
    match value {
        Value::String(text) => {
            serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
        }
        other => other.clone(),
    }
}

/// A details value written as a metadata string, read back exactly by [`metadata_value`]:
/// strings as they are (JSON-quoted only when they would read as another JSON value), every
/// other value as its JSON text.
struct MetadataText<'a>(&'a Value);

impl Serialize for MetadataText<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::String(text) if !reads_as_json(text) => serializer.serialize_str(text),
            // `Value`'s Display is its compact JSON, streamed into the string being written.
            other => serializer.collect_str(other),
        }
    }
}

/// Whether `text` is a JSON document. Most strings are ruled out by their first character
/// without running the parser.
fn reads_as_json(text: &str) -> bool {
    let first = text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .bytes()
        .next();
    matches!(
        first,
        Some(b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n')
    ) && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

/// The metadata key of a details member: reserved names and names starting with `_` get one
/// more `_` in front.
fn metadata_key(name: &str) -> Cow<'_, str> {
    if name == META_CODE || name == META_DETAILS || name.starts_with('_') {
        Cow::Owned(format!("_{name}"))
    } else {
        Cow::Borrowed(name)
    }
}

/// The `ErrorInfo.metadata` of an error, serialised straight from the error: its exact code
/// under `code`, then its details.
///
/// A non-empty details object gives one entry per member (a member named `code` or `details`,
/// or starting with `_`, is written with one more `_` in front so that it cannot be mistaken for
/// a reserved key); other details are written whole under `details`. A null
/// `details` is no details, as in the other profiles.
struct Metadata<'a> {
    code: &'a str,
    details: Option<&'a Value>,
}

impl Serialize for Metadata<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry(META_CODE, self.code)?;
        match self.details {
            None | Some(Value::Null) => {}
            Some(Value::Object(members)) if !members.is_empty() => {
                for (name, value) in members {
                    map.serialize_entry(&metadata_key(name), &MetadataText(value))?;
                }
            }
            Some(whole) => map.serialize_entry(META_DETAILS, &MetadataText(whole))?,
        }
        map.end()
    }
}

// ---- rendering: borrowed views serialised straight to bytes --------------------------------

#[derive(Serialize)]
#[serde(untagged)]
enum Body<'a> {
    Flat(FlatBody<'a>),
    Code(CodeBody<'a>),
    Nested { error: NestedBody<'a> },
    Problem(ProblemBody<'a>),
    Google { error: GoogleBody<'a> },
}

#[derive(Serialize)]
struct FlatBody<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a Value>,
}

#[derive(Serialize)]
struct CodeBody<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

#[derive(Serialize)]
struct NestedBody<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a Value>,
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    type_uri: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<Cow<'a, str>>,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a Value>,
}

#[derive(Serialize)]
struct GoogleBody<'a> {
    code: u16,
    message: &'a str,
    status: &'static str,
    details: Vec<GoogleDetail<'a>>,
}

/// One `google.rpc` detail message in its JSON form: an `Any` with its `@type`.
#[derive(Serialize)]
#[serde(untagged)]
enum GoogleDetail<'a> {
    ErrorInfo {
        #[serde(rename = "@type")]
        ty: &'static str,
        reason: String,
        domain: &'a str,
        metadata: Metadata<'a>,
    },
    RequestInfo {
        #[serde(rename = "@type")]
        ty: &'static str,
        #[serde(rename = "requestId")]
        request_id: &'a str,
    },
    RetryInfo {
        #[serde(rename = "@type")]
        ty: &'static str,
        #[serde(rename = "retryDelay")]
        retry_delay: String,
    },
    BadRequest {
        #[serde(rename = "@type")]
        ty: &'static str,
        #[serde(rename = "fieldViolations")]
        field_violations: Vec<GoogleFieldViolation<'a>>,
    },
    QuotaFailure {
        #[serde(rename = "@type")]
        ty: &'static str,
        violations: [GoogleSubjectViolation<'a>; 1],
    },
    PreconditionFailure {
        #[serde(rename = "@type")]
        ty: &'static str,
        violations: [GooglePreconditionViolation<'a>; 1],
    },
    ResourceInfo {
        #[serde(rename = "@type")]
        ty: &'static str,
        #[serde(rename = "resourceType")]
        resource_type: &'a str,
        description: &'a str,
    },
    Help {
        #[serde(rename = "@type")]
        ty: &'static str,
        links: [GoogleLink<'a>; 1],
    },
}

#[derive(Serialize)]
struct GoogleFieldViolation<'a> {
    field: &'a str,
    description: &'a str,
}

#[derive(Serialize)]
struct GoogleSubjectViolation<'a> {
    subject: &'a str,
    description: String,
}

#[derive(Serialize)]
struct GooglePreconditionViolation<'a> {
    #[serde(rename = "type")]
    ty: String,
    subject: &'a str,
    description: &'a str,
}

#[derive(Serialize)]
struct GoogleLink<'a> {
    description: String,
    url: &'a str,
}

impl<'a> Body<'a> {
    fn new(profile: Profile, error: &'a ApiError, ctx: &RenderContext<'a>) -> Self {
        let (code, message, details) = (error.code(), error.message(), error.details());
        let request_id = ctx.request_id;
        match profile {
            Profile::Flat => Body::Flat(FlatBody {
                error: code,
                message,
                request_id,
                details,
            }),
            Profile::Code => Body::Code(CodeBody {
                code,
                message,
                details,
                request_id,
            }),
            Profile::Nested => Body::Nested {
                error: NestedBody {
                    code,
                    message,
                    request_id,
                    details,
                },
            },
            Profile::Problem => Body::Problem(ProblemBody {
                type_uri: ctx.docs_url.unwrap_or("about:blank"),
                title: error.title(),
                status: error.status(),
                detail: message,
                instance: ctx.instance.map(uri_path_reference),
                code,
                request_id,
                details,
            }),
            Profile::Google => Body::Google {
                error: google_body(error, ctx),
            },
        }
    }
}

/// The Google body: only standard `google.rpc` detail messages, so that strict protobuf JSON
/// parsers accept it. `ErrorInfo.metadata` carries the exact code and details for
/// [`Profile::parse`]; the other messages restate what fits them for Google clients.
fn google_body<'a>(error: &'a ApiError, ctx: &RenderContext<'a>) -> GoogleBody<'a> {
    let status = google_status_name(error.status());
    let reason = google_reason(error.code());
    let details_value = error.details();
    let mut details = Vec::with_capacity(4);
    if let Some(request_id) = ctx.request_id {
        details.push(GoogleDetail::RequestInfo {
            ty: REQUEST_INFO,
            request_id,
        });
    }
    // RetryInfo holds a Duration; a Retry-After given as an HTTP date has no place there.
    if let Some(seconds) = error
        .header("Retry-After")
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
    {
        details.push(GoogleDetail::RetryInfo {
            ty: RETRY_INFO,
            retry_delay: format!("{seconds}s"),
        });
    }
    let detail_str = |key: &str| {
        details_value
            .and_then(|d| d.get(key))
            .and_then(Value::as_str)
    };
    let resource = detail_str("resource");
    // 412, 428 and the other 4xx without a closer gRPC code: a state the caller must change.
    if status == "FAILED_PRECONDITION" {
        details.push(GoogleDetail::PreconditionFailure {
            ty: PRECONDITION_FAILURE,
            violations: [GooglePreconditionViolation {
                ty: reason.clone(),
                subject: resource.unwrap_or_default(),
                description: detail_str("reason").unwrap_or(error.message()),
            }],
        });
    }
    if let Some(value) = details_value {
        let violations = google_field_violations(value);
        if !violations.is_empty() {
            details.push(GoogleDetail::BadRequest {
                ty: BAD_REQUEST,
                field_violations: violations,
            });
        }
        if let Some(description) = quota_description(value, error.status()) {
            details.push(GoogleDetail::QuotaFailure {
                ty: QUOTA_FAILURE,
                violations: [GoogleSubjectViolation {
                    subject: error.code(),
                    description,
                }],
            });
        }
        if let Some(resource_type) = resource {
            details.push(GoogleDetail::ResourceInfo {
                ty: RESOURCE_INFO,
                resource_type,
                description: error.message(),
            });
        }
    }
    if let Some(url) = ctx.docs_url {
        details.push(GoogleDetail::Help {
            ty: HELP,
            links: [GoogleLink {
                description: format!("{}: {}", error.title(), error.code()),
                url,
            }],
        });
    }
    // ErrorInfo first: clients look for it before anything else.
    details.insert(
        0,
        GoogleDetail::ErrorInfo {
            ty: ERROR_INFO,
            reason,
            domain: ctx.domain.unwrap_or("faultline"),
            metadata: Metadata {
                code: error.code(),
                details: details_value,
            },
        },
    );
    GoogleBody {
        code: error.status(),
        message: error.message(),
        status,
        details,
    }
}

/// What a quota-shaped details object says, in words: a [`Quota`](crate::details::Quota)
/// (`limit`, `used`, `resets_at`), or a [`Limit`](crate::details::Limit) (`max`) on a 429.
fn quota_description(details: &Value, status: u16) -> Option<String> {
    let number = |key: &str| details.get(key).and_then(Value::as_u64);
    if let (Some(limit), Some(used)) = (number("limit"), number("used")) {
        let mut description = format!("{used} of {limit} used");
        if let Some(resets_at) = details.get("resets_at").and_then(Value::as_str) {
            description.push_str("; resets at ");
            description.push_str(resets_at);
        }
        return Some(description);
    }
    match number("max") {
        Some(max) if status == 429 => Some(format!("limit of {max} reached")),
        _ => None,
    }
}

/// Field errors and field violations, restated as `google.rpc.BadRequest` for Google clients.
/// Errors about the whole request have the empty field, as they have the empty pointer in
/// `field_violations`.
fn google_field_violations(details: &Value) -> Vec<GoogleFieldViolation<'_>> {
    let mut out = Vec::new();
    for message in details
        .get("formErrors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        out.push(GoogleFieldViolation {
            field: "",
            description: message,
        });
    }
    if let Some(fields) = details.get("fieldErrors").and_then(Value::as_object) {
        for (field, messages) in fields {
            for message in messages
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                out.push(GoogleFieldViolation {
                    field,
                    description: message,
                });
            }
        }
    }
    if let Some(list) = details.get("fields").and_then(Value::as_array) {
        for item in list {
            if let (Some(field), Some(description)) = (
                item.get("pointer").and_then(Value::as_str),
                item.get("message").and_then(Value::as_str),
            ) {
                out.push(GoogleFieldViolation { field, description });
            }
        }
    }
    out
}
