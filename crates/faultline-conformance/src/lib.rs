//! # faultline-conformance
//!
//! The conformance battery: bad requests every faultline server must answer with a catalog
//! error, and the checks applied to each answer.
//!
//! The cases and the checks know nothing of how requests are sent (this crate depends on
//! `faultline` only), so the same battery drives the reference app in-process in the CLI's
//! tests and, later, a live API over HTTP (`faultline check`).

use faultline::{Catalog, Profile};

/// How a case sends its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseBody {
    /// No body.
    Empty,
    /// A body with a `Content-Length`.
    Bytes(Vec<u8>),
    /// A body streamed without `Content-Length` (chunked on the wire).
    Chunked(Vec<u8>),
}

/// One bad request and what it must produce.
#[derive(Debug, Clone)]
pub struct Case {
    /// A short name for reports.
    pub name: &'static str,
    /// HTTP method.
    pub method: &'static str,
    /// Path and query.
    pub path: String,
    /// Request headers (values as bytes: some cases send invalid ones).
    pub headers: Vec<(&'static str, Vec<u8>)>,
    /// The body.
    pub body: CaseBody,
    /// The code the answer must carry, when the case pins one.
    pub expect_code: Option<String>,
    /// Whether a client-sent request id must have been replaced.
    pub expect_fresh_request_id: bool,
}

/// A response as received.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// The request-id header.
    pub request_id: Option<String>,
    /// The `Allow` header.
    pub allow: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

const JSON: (&str, &[u8]) = ("content-type", b"application/json");

fn case(
    name: &'static str,
    method: &'static str,
    path: impl Into<String>,
    expect: Option<&str>,
) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        headers: Vec::new(),
        body: CaseBody::Empty,
        expect_code: expect.map(str::to_owned),
        expect_fresh_request_id: false,
    }
}

impl Case {
    fn json(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.headers.push((JSON.0, JSON.1.to_vec()));
        self.body = CaseBody::Bytes(body.into());
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, body: CaseBody) -> Self {
        self.body = body;
        self
    }

    fn fresh_id(mut self) -> Self {
        self.expect_fresh_request_id = true;
        self
    }
}

/// What the battery needs to know about the server under test.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The id of an existing chatbot of the key's organisation.
    pub chatbot: String,
    /// The server's body limit in bytes.
    pub max_body: usize,
    /// A valid key with every scope.
    pub key: String,
    /// A well-formed key (right prefix and checksum) that the server does not know.
    pub unknown_key: String,
    /// A valid key that holds only `chatbots:read`.
    pub read_only_key: String,
}

/// The battery for the chatbots reference API, with `catalog`'s bound codes as expectations.
///
/// Every case but the authentication ones carries `fixture.key`, so that each reaches the
/// part of the stack it is meant to test.
pub fn chatbot_cases(catalog: &Catalog, fixture: &Fixture) -> Vec<Case> {
    let bearer = format!("Bearer {}", fixture.key);
    let mut cases = request_cases(catalog, &fixture.chatbot, fixture.max_body);
    for case in &mut cases {
        case.headers
            .push(("authorization", bearer.clone().into_bytes()));
    }
    cases.extend(key_cases(catalog, fixture));
    cases
}

/// Bad credentials and bad key-management requests.
fn key_cases(catalog: &Catalog, fixture: &Fixture) -> Vec<Case> {
    use faultline::Situation as S;
    let bound = |s: S| catalog.bindings().get(&s).map(String::as_str);
    let missing = bound(S::MissingApiKey);
    let malformed = bound(S::MalformedApiKey);
    let key = fixture.key.as_str();
    let (lead, _) = key.split_at(key.rfind('_').map_or(0, |i| i + 1));
    let mut bad_checksum = key.to_owned();
    let last = if key.ends_with('A') { "B" } else { "A" };
    bad_checksum.replace_range(key.len() - 1.., last);
    let mut wrong_prefix = key.to_owned();
    wrong_prefix.replace_range(0..lead.len(), "zz_live_");
    let auth = |name, value: Vec<u8>, expect| {
        case(name, "GET", "/v1/chatbots", expect).header("authorization", value)
    };
    let bearer = |k: &str| format!("Bearer {k}").into_bytes();
    let manage = |name, body: &str, expect| {
        case(name, "POST", "/v1/api_keys", expect)
            .json(body.to_owned())
            .header("authorization", bearer(key))
    };
    let invalid = bound(S::ValidationFailed);
    vec![
        case("no authorization header", "GET", "/v1/chatbots", missing),
        case("no key on a write", "POST", "/v1/chatbots", missing).json(r#"{"name":"a"}"#),
        auth("empty authorization", Vec::new(), missing),
        auth("blank authorization", b"   ".to_vec(), missing),
        auth(
            "basic credentials",
            b"Basic dXNlcjpwYXNz".to_vec(),
            malformed,
        ),
        auth("bearer without key", b"Bearer".to_vec(), malformed),
        auth(
            "lower-case bearer, bad key",
            b"bearer not-a-key".to_vec(),
            malformed,
        ),
        auth(
            "token scheme",
            format!("Token {key}").into_bytes(),
            malformed,
        ),
        auth(
            "two tokens",
            format!("Bearer {key} {key}").into_bytes(),
            malformed,
        ),
        auth(
            "10 KB credential",
            bearer(&"k".repeat(10 * 1024)),
            malformed,
        ),
        auth(
            "non-ASCII key",
            "Bearer clé_live_ü".as_bytes().to_vec(),
            malformed,
        ),
        auth("wrong prefix", bearer(&wrong_prefix), malformed),
        auth("bad checksum", bearer(&bad_checksum), malformed),
        auth("truncated key", bearer(&key[..key.len() - 3]), malformed),
        auth(
            "unknown key",
            bearer(&fixture.unknown_key),
            bound(S::InvalidApiKey),
        ),
        case(
            "read-only key writes",
            "POST",
            "/v1/chatbots",
            bound(S::ScopeDenied),
        )
        .json(r#"{"name":"a"}"#)
        .header("authorization", bearer(&fixture.read_only_key)),
        case(
            "read-only key lists keys",
            "GET",
            "/v1/api_keys",
            bound(S::ScopeDenied),
        )
        .header("authorization", bearer(&fixture.read_only_key)),
        manage(
            "key name too long",
            &format!(
                r#"{{"name":"{}","scopes":["chatbots:read"]}}"#,
                "n".repeat(101)
            ),
            invalid,
        ),
        manage("key without scopes", r#"{"name":"a","scopes":[]}"#, invalid),
        manage(
            "key with unknown scope",
            r#"{"name":"a","scopes":["everything"]}"#,
            Some("unknown_scope"),
        ),
        manage(
            "key expiring in the past",
            r#"{"name":"a","scopes":["chatbots:read"],"expires_at":"2001-01-01T00:00:00+00:00"}"#,
            invalid,
        ),
        manage(
            "key expiry not a date",
            r#"{"name":"a","scopes":["chatbots:read"],"expires_at":"tomorrow"}"#,
            invalid,
        ),
        manage(
            "webhook not http",
            r#"{"name":"a","scopes":["chatbots:read"],"webhook_url":"ftp://example.com/x"}"#,
            Some("invalid_webhook_url"),
        ),
        manage(
            "webhook with credentials",
            r#"{"name":"a","scopes":["chatbots:read"],"webhook_url":"https://u:p@example.com/"}"#,
            Some("invalid_webhook_url"),
        ),
        case(
            "revoke unknown key",
            "POST",
            "/v1/api_keys/key_0000/revoke",
            bound(S::ResourceNotFound),
        )
        .header("authorization", bearer(key)),
    ]
}

/// Bad requests that have nothing to do with credentials.
fn request_cases(catalog: &Catalog, chatbot: &str, max_body: usize) -> Vec<Case> {
    use faultline::Situation as S;
    let bound = |s: S| catalog.bindings().get(&s).map(String::as_str);
    let nf = bound(S::RouteNotFound);
    let mna = bound(S::MethodNotAllowed);
    let bad_json = bound(S::MalformedJson);
    let invalid = bound(S::ValidationFailed);
    let query = bound(S::InvalidQuery);
    let id = bound(S::InvalidPathId);
    let media = bound(S::UnsupportedMediaType);
    let large = bound(S::PayloadTooLarge);
    let random = "0b0c4f5d-9e8a-4c3b-8a1d-0f9e8f3a9d2e";
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge = format!("{{\"name\": \"{}\"}}", "a".repeat(max_body + 10));
    vec![
        case("unknown path", "GET", "/v1/nope", nf),
        case("unknown deep path", "GET", "/v1/chatbots/a/b/c", nf),
        case("root", "GET", "/", nf),
        case("unknown path with query", "GET", "/v1/nope?x=1", nf),
        case("HEAD unknown path", "HEAD", "/v1/nope", nf),
        case("DELETE collection", "DELETE", "/v1/chatbots", mna),
        case("PUT item", "PUT", format!("/v1/chatbots/{chatbot}"), mna),
        case("POST item", "POST", format!("/v1/chatbots/{chatbot}"), mna),
        case("OPTIONS collection", "OPTIONS", "/v1/chatbots", mna),
        case("TRACE docs", "TRACE", "/docs", mna),
        case("unclosed object", "POST", "/v1/chatbots", bad_json).json("{"),
        case("truncated object", "POST", "/v1/chatbots", bad_json).json(r#"{"name": "a""#),
        case("trailing comma", "POST", "/v1/chatbots", bad_json).json(r#"{"name": "a",}"#),
        case("unquoted key", "POST", "/v1/chatbots", bad_json).json(r#"{name: "a"}"#),
        case("empty body", "POST", "/v1/chatbots", bad_json).json(""),
        case("invalid UTF-8", "POST", "/v1/chatbots", bad_json)
            .json(b"{\"name\": \"\xff\xfe\"}".to_vec()),
        case("deeply nested", "POST", "/v1/chatbots", bad_json).json(deep),
        case("null body", "POST", "/v1/chatbots", invalid).json("null"),
        case("array body", "POST", "/v1/chatbots", invalid).json("[]"),
        case("string body", "POST", "/v1/chatbots", invalid).json("\"chatbot\""),
        case("bad enum and missing name", "POST", "/v1/chatbots", invalid)
            .json(r#"{"status":"live"}"#),
        case("wrong type", "POST", "/v1/chatbots", invalid).json(r#"{"name": 5}"#),
        case("empty name", "POST", "/v1/chatbots", invalid).json(r#"{"name": ""}"#),
        case("name too long", "POST", "/v1/chatbots", invalid)
            .json(format!("{{\"name\": \"{}\"}}", "n".repeat(101))),
        case("unknown field", "POST", "/v1/chatbots", invalid)
            .json(r#"{"name": "a", "colour": "red"}"#),
        case("huge body", "POST", "/v1/chatbots", large).json(huge.clone()),
        case("huge chunked body", "POST", "/v1/chatbots", large)
            .header(JSON.0, JSON.1)
            .body(CaseBody::Chunked(huge.into_bytes())),
        case("text/plain", "POST", "/v1/chatbots", media)
            .header("content-type", "text/plain")
            .body(CaseBody::Bytes(b"name=a".to_vec())),
        case("no content type", "POST", "/v1/chatbots", media)
            .body(CaseBody::Bytes(br#"{"name":"a"}"#.to_vec())),
        case("xml", "POST", "/v1/chatbots", media)
            .header("content-type", "application/xml")
            .body(CaseBody::Bytes(b"<a/>".to_vec())),
        case("form", "POST", "/v1/chatbots", media)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(CaseBody::Bytes(b"name=a".to_vec())),
        case("id not a uuid", "GET", "/v1/chatbots/not-a-uuid", id),
        case("numeric id", "GET", "/v1/chatbots/123", id),
        case(
            "uuid with junk",
            "GET",
            format!("/v1/chatbots/{random}x"),
            id,
        ),
        case("percent garbage id", "GET", "/v1/chatbots/%FF%FE", id),
        case(
            "prefixed id",
            "DELETE",
            format!("/v1/chatbots/cb_{random}"),
            id,
        ),
        case("category id not a uuid", "DELETE", "/v1/categories/xyz", id),
        case(
            "random id",
            "GET",
            format!("/v1/chatbots/{random}"),
            catalog
                .bindings()
                .get(&S::ResourceNotFound)
                .map(|_| "not_found"),
        ),
        case(
            "tampered cursor",
            "GET",
            "/v1/chatbots?cursor=abc.def",
            Some("invalid_cursor"),
        ),
        case(
            "cursor without signature",
            "GET",
            "/v1/chatbots?cursor=MjAyNnxhYmM",
            Some("invalid_cursor"),
        ),
        case("limit not a number", "GET", "/v1/chatbots?limit=abc", query),
        case("limit zero", "GET", "/v1/chatbots?limit=0", query),
        case("limit too big", "GET", "/v1/chatbots?limit=100000", query),
        case("negative limit", "GET", "/v1/chatbots?limit=-1", query),
        case(
            "unknown query parameter",
            "GET",
            "/v1/chatbots?colour=red",
            query,
        ),
        case(
            "cascade not a boolean",
            "DELETE",
            format!("/v1/categories/{random}?cascade=maybe"),
            query,
        ),
        case(
            "bad status on patch",
            "PATCH",
            format!("/v1/chatbots/{chatbot}"),
            invalid,
        )
        .json(r#"{"status": "deleted"}"#),
        case(
            "malformed patch",
            "PATCH",
            format!("/v1/chatbots/{chatbot}"),
            bad_json,
        )
        .json("{]"),
        case("request id with spaces", "GET", "/v1/nope", nf)
            .header("x-request-id", "hello world")
            .fresh_id(),
        case("request id too long", "GET", "/v1/nope", nf)
            .header("x-request-id", "a".repeat(200))
            .fresh_id(),
        case("request id non-ASCII", "GET", "/v1/nope", nf)
            .header("x-request-id", b"r\xc3\xa9q".to_vec())
            .fresh_id(),
        case("request id with quotes", "GET", "/v1/nope", nf)
            .header("x-request-id", "\"<script>\"")
            .fresh_id(),
        case("oversized header", "GET", "/v1/nope", nf).header("x-padding", "p".repeat(16 * 1024)),
    ]
}

/// Text that must never reach a client: panic messages, paths, Rust type names, SQL.
const INTERNAL_MARKERS: [&str; 12] = [
    "panicked", ".rs:", "src/", "::", "rusqlite", "SELECT ", "sqlite", "thread '", "/root/",
    "serde", "Error(", "unwrap",
];

/// Checks one answer against the contract; returns every violation found.
pub fn check(catalog: &Catalog, profile: Profile, case: &Case, answer: &Answer) -> Vec<String> {
    let mut problems = Vec::new();
    if !(400..600).contains(&answer.status) {
        problems.push(format!("status {} is not an error", answer.status));
        return problems;
    }
    if answer.content_type.as_deref() != Some(profile.content_type()) {
        problems.push(format!(
            "content type {:?}, expected {}",
            answer.content_type,
            profile.content_type()
        ));
    }
    let envelope = match profile.parse(&answer.body) {
        Ok(envelope) => envelope,
        Err(e) => {
            problems.push(format!(
                "body does not parse in the {profile} profile: {e}: {}",
                String::from_utf8_lossy(&answer.body)
            ));
            return problems;
        }
    };
    match catalog.get(&envelope.code) {
        None => problems.push(format!("code `{}` is not in the catalog", envelope.code)),
        Some(spec) if spec.status != answer.status => {
            problems.push(format!(
                "code `{}` has status {} in the catalog, answered {}",
                spec.code, spec.status, answer.status
            ));
        }
        Some(_) => {}
    }
    if let Some(expected) = case.expect_code.as_ref().filter(|e| **e != envelope.code) {
        problems.push(format!("code `{}`, expected `{expected}`", envelope.code));
    }
    if envelope.request_id.is_none() || envelope.request_id != answer.request_id {
        problems.push(format!(
            "body request_id {:?} differs from header {:?}",
            envelope.request_id, answer.request_id
        ));
    }
    if case.expect_fresh_request_id {
        let prefix = &catalog.api.request_id_prefix;
        if !answer
            .request_id
            .as_deref()
            .is_some_and(|id| id.starts_with(prefix.as_str()))
        {
            problems.push(format!(
                "a hostile request id was not replaced: {:?}",
                answer.request_id
            ));
        }
    }
    let text = format!(
        "{} {}",
        envelope.message,
        envelope.details.map(|d| d.to_string()).unwrap_or_default()
    );
    for marker in INTERNAL_MARKERS {
        if text.contains(marker) {
            problems.push(format!(
                "the answer leaks internal text ({marker:?}): {text}"
            ));
        }
    }
    if envelope.code
        == catalog
            .bindings()
            .get(&faultline::Situation::MethodNotAllowed)
            .map_or("", String::as_str)
        && answer.allow.is_none()
    {
        problems.push("a 405 without an Allow header".to_owned());
    }
    problems
}

/// Checks the rate-limit headers of an answer (names compared case-insensitively): a 429 must
/// carry `Retry-After` in whole seconds (at least 1) and both IETF fields, `RateLimit-Policy`
/// and `RateLimit`, parsed by the same functions a client uses and naming the same policies;
/// any other answer that carries one of the two fields must carry both, in that agreement.
///
/// ```
/// use faultline_conformance::check_limit_headers;
/// let headers = [
///     ("retry-after".to_owned(), "6".to_owned()),
///     ("ratelimit-policy".to_owned(), r#""minute";q=10;w=60"#.to_owned()),
///     ("ratelimit".to_owned(), r#""minute";r=0;t=60"#.to_owned()),
/// ];
/// assert!(check_limit_headers(429, &headers).is_empty());
/// assert_eq!(check_limit_headers(429, &headers[1..]).len(), 1);
/// ```
pub fn check_limit_headers(status: u16, headers: &[(String, String)]) -> Vec<String> {
    use faultline::limits::{parse_policy_header, parse_retry_after, parse_state_header};
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let mut problems = Vec::new();
    let policy = get("RateLimit-Policy");
    let state = get("RateLimit");
    if status == 429 {
        match get("Retry-After").map(parse_retry_after) {
            None => problems.push("a 429 without Retry-After".to_owned()),
            Some(None) => problems.push("Retry-After is not whole seconds".to_owned()),
            Some(Some(0)) => problems.push("Retry-After is 0 on a 429".to_owned()),
            Some(Some(_)) => {}
        }
        if policy.is_none() || state.is_none() {
            problems.push("a 429 without both RateLimit-Policy and RateLimit".to_owned());
            return problems;
        }
    }
    match (policy, state) {
        (None, None) => {}
        (Some(policy), Some(state)) => {
            match (parse_policy_header(policy), parse_state_header(state)) {
                (Ok(policies), Ok(states)) => {
                    let named: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
                    let reported: Vec<&str> = states.iter().map(|s| s.name.as_str()).collect();
                    if named != reported {
                        problems.push(format!(
                            "RateLimit names {reported:?}, RateLimit-Policy {named:?}"
                        ));
                    }
                    for (p, s) in policies.iter().zip(&states) {
                        if s.remaining > p.quota {
                            problems.push(format!(
                                "policy `{}`: {} remaining of a quota of {}",
                                p.name, s.remaining, p.quota
                            ));
                        }
                    }
                }
                (Err(e), _) => problems.push(format!("RateLimit-Policy does not parse: {e}")),
                (_, Err(e)) => problems.push(format!("RateLimit does not parse: {e}")),
            }
        }
        _ => problems.push("only one of RateLimit-Policy and RateLimit".to_owned()),
    }
    problems
}
