//! Envelope profiles: the wire shapes an error body can take, rendered and parsed.
//!
//! One catalog can be served in any profile, and [`parse_any`] reads all of them, so a client
//! does not need to know which one an API chose.



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
#[derive(Debug, Clone, Copy, Default)]
pub struct RenderContext<'a> {
    /// The request id, echoed in the body.
    pub request_id: Option<&'a str>,
    /// The problem+json `instance`: the path of the request that failed.
    pub instance: Option<&'a str>,
    /// A link to the code's documentation: the problem+json `type`.
    pub type_uri: Option<&'a str>,
    /// The `ErrorInfo.domain` of the Google profile, e.g. the API's host name.
    pub domain: Option<&'a str>,
}

/// An error body read back from the wire, in whatever profile it came.
#[derive(Debug, Clone, PartialEq, Default)]
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
/// The Any type that carries faultline details verbatim in the Google profile.
pub const GOOGLE_DETAILS_TYPE: &str = "type.faultline.dev/faultline.v1.Details";

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
                let code = str_member(info, "reason").ok_or(not("ErrorInfo has no `reason`"))?;
                Ok(Envelope {
                    code: code.to_owned(),
                    message: str_member(inner, "message").unwrap_or_default().to_owned(),
                    request_id: find(REQUEST_INFO)
                        .and_then(|r| str_member(r, "requestId"))
                        .map(str::to_owned),
                    details: find(GOOGLE_DETAILS_TYPE)
                        .and_then(|d| d.get("value"))
                        .cloned(),
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
    instance: Option<&'a str>,
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

#[derive(Serialize)]
#[serde(untagged)]
enum GoogleDetail<'a> {
    ErrorInfo {
        #[serde(rename = "@type")]
        ty: &'static str,
        reason: &'a str,
        domain: &'a str,
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
    Details {
        #[serde(rename = "@type")]
        ty: &'static str,
        value: &'a Value,
    },
}

#[derive(Serialize)]
struct GoogleFieldViolation<'a> {
    field: &'a str,
    description: &'a str,
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
                type_uri: ctx.type_uri.unwrap_or("about:blank"),
                title: error.title(),
                status: error.status(),
                detail: message,
                instance: ctx.instance,
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

fn google_body<'a>(error: &'a ApiError, ctx: &RenderContext<'a>) -> GoogleBody<'a> {
    let mut details = vec![GoogleDetail::ErrorInfo {
        ty: ERROR_INFO,
        reason: error.code(),
        domain: ctx.domain.unwrap_or("faultline"),
    }];
    if let Some(request_id) = ctx.request_id {
        details.push(GoogleDetail::RequestInfo {
            ty: REQUEST_INFO,
            request_id,
        });
    }
    if let Some(seconds) = error.header("Retry-After") {
        details.push(GoogleDetail::RetryInfo {
            ty: RETRY_INFO,
            retry_delay: format!("{seconds}s"),
        });
    }
    if let Some(value) = error.details() {
        let violations = google_field_violations(value);
        if !violations.is_empty() {
            details.push(GoogleDetail::BadRequest {
                ty: BAD_REQUEST,
                field_violations: violations,
            });
        }
        details.push(GoogleDetail::Details {
            ty: GOOGLE_DETAILS_TYPE,
            value,
        });
    }
    GoogleBody {
        code: error.status(),
        message: error.message(),
        status: google_status_name(error.status()),
        details,
    }
}

/// Field errors and field violations, restated as `google.rpc.BadRequest` for Google clients.
fn google_field_violations(details: &Value) -> Vec<GoogleFieldViolation<'_>> {
    let mut out = Vec::new();
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
