//! Idempotency keys on the wire, and the fingerprint of a request, shared by servers and
//! clients. No I/O: stores and middleware live in `faultline-axum`.
//!
//! - [`IdempotencyKey`]: the `Idempotency-Key` header, read either as a bare token (what
//!   Stripe's client libraries send) or as a structured-field string (`"…"`, the form of the
//!   IETF draft `draft-ietf-httpapi-idempotency-key-header`), and written back as the latter;
//! - [`Fingerprint`]: SHA-256 digests of a request's method, path and query, and of its body,
//!   kept apart so that a conflict can say which of the two changed ([`Difference`]).

use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The header that carries the key.
pub const HEADER: &str = "Idempotency-Key";

/// The header a server adds to a response it replays from its store.
pub const REPLAYED_HEADER: &str = "Idempotent-Replayed";

/// The longest key accepted, in characters (after a quoted form is unescaped).
pub const MAX_KEY_LEN: usize = 255;

/// A valid idempotency key: 1 to [`MAX_KEY_LEN`] printable ASCII characters (`0x20`–`0x7E`).
///
/// # Both header forms name the same key
///
/// A bare token and the quoted structured-field string with the same characters parse to the
/// same key, so a client may switch forms between retries.
///
/// ```
/// use faultline::idempotency::IdempotencyKey;
/// let bare = IdempotencyKey::parse(b"8e03978e-40d5-43e8-bc93-6894a57f9324").unwrap();
/// let quoted = IdempotencyKey::parse(b"\"8e03978e-40d5-43e8-bc93-6894a57f9324\"").unwrap();
/// assert_eq!(bare, quoted);
/// assert_eq!(bare.as_str(), "8e03978e-40d5-43e8-bc93-6894a57f9324");
/// ```
///
/// # Written as a structured-field string
///
/// [`IdempotencyKey::to_header_value`] quotes the key and escapes `"` and `\`, and parsing the
/// result gives the key back.
///
/// ```
/// use faultline::idempotency::IdempotencyKey;
/// let key = IdempotencyKey::new(r#"say "hi" \o/"#).unwrap();
/// assert_eq!(key.to_header_value(), r#""say \"hi\" \\o/""#);
/// assert_eq!(IdempotencyKey::parse(key.to_header_value().as_bytes()).unwrap(), key);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

/// Why an `Idempotency-Key` header value is not a key. Its [`fmt::Display`] text is meant for
/// the `reason` in the error's details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The value (or the quoted string) holds no character.
    #[error("the key is empty")]
    Empty,
    /// More than [`MAX_KEY_LEN`] characters.
    #[error("the key has {length} characters; at most 255 are allowed")]
    TooLong {
        /// How many characters the key has (counted up to a bound, for huge values).
        length: usize,
    },
    /// A byte outside printable ASCII (a control character, DEL or a non-ASCII byte).
    #[error("the key holds a byte that is not printable ASCII at position {position}")]
    InvalidByte {
        /// The byte's position in the header value, from 0.
        position: usize,
    },
    /// A space inside a bare token (quote the key to include spaces).
    #[error("an unquoted key cannot contain spaces; quote it as a string")]
    Space,
    /// A `"` that does not open or close a quoted string, or a string that is not closed.
    #[error("the key has an unbalanced double quote")]
    UnbalancedQuote,
    /// A `\` in a quoted string that is not followed by `"` or `\`.
    #[error("a backslash in a quoted key must be followed by a double quote or a backslash")]
    BadEscape,
}

fn printable(b: u8) -> bool {
    (0x20..=0x7e).contains(&b)
}

impl IdempotencyKey {
    /// Parses a header value: optional surrounding spaces or tabs, then either a bare token
    /// (printable ASCII without spaces or `"`) or a structured-field string (`"` … `"` with
    /// `\"` and `\\` escapes).
    ///
    /// # Errors
    ///
    /// A [`KeyError`] that says what is wrong.
    pub fn parse(value: &[u8]) -> Result<Self, KeyError> {
        let start = value
            .iter()
            .position(|b| *b != b' ' && *b != b'\t')
            .unwrap_or(value.len());
        let end = value
            .iter()
            .rposition(|b| *b != b' ' && *b != b'\t')
            .map_or(start, |i| i + 1);
        let trimmed = &value[start..end];
        match trimmed.first() {
            None => Err(KeyError::Empty),
            Some(b'"') => Self::parse_quoted(trimmed, start),
            Some(_) => Self::parse_bare(trimmed, start),
        }
    }

    fn parse_bare(token: &[u8], offset: usize) -> Result<Self, KeyError> {
        for (i, &b) in token.iter().enumerate() {
            match b {
                b'"' => return Err(KeyError::UnbalancedQuote),
                b' ' => return Err(KeyError::Space),
                b if !printable(b) => {
                    return Err(KeyError::InvalidByte {
                        position: offset + i,
                    });
                }
                _ => {}
            }
        }
        if token.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong {
                length: token.len(),
            });
        }
        // Every byte is printable ASCII, so this is one character per byte.
        Ok(IdempotencyKey(String::from_utf8_lossy(token).into_owned()))
    }

    fn parse_quoted(quoted: &[u8], offset: usize) -> Result<Self, KeyError> {
        let mut key = String::with_capacity(quoted.len().min(MAX_KEY_LEN));
        let mut i = 1;
        loop {
            let Some(&b) = quoted.get(i) else {
                return Err(KeyError::UnbalancedQuote);
            };
            match b {
                b'"' => break,
                b'\\' => match quoted.get(i + 1) {
                    Some(&e @ (b'"' | b'\\')) => {
                        key.push(char::from(e));
                        i += 1;
                    }
                    None => return Err(KeyError::UnbalancedQuote),
                    Some(_) => return Err(KeyError::BadEscape),
                },
                b if !printable(b) => {
                    return Err(KeyError::InvalidByte {
                        position: offset + i,
                    });
                }
                b => key.push(char::from(b)),
            }
            i += 1;
        }
        if i + 1 != quoted.len() {
            // Something after the closing quote: a second string, a parameter or a stray quote.
            return Err(KeyError::UnbalancedQuote);
        }
        Self::new(key)
    }

    /// A key from its characters, as a client that generates keys builds it.
    ///
    /// # Errors
    ///
    /// [`KeyError::Empty`], [`KeyError::TooLong`] or [`KeyError::InvalidByte`].
    pub fn new(key: impl Into<String>) -> Result<Self, KeyError> {
        let key = key.into();
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if let Some(position) = key.bytes().position(|b| !printable(b)) {
            return Err(KeyError::InvalidByte { position });
        }
        if key.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong { length: key.len() });
        }
        Ok(IdempotencyKey(key))
    }

    /// The key's characters (unquoted, unescaped).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The header value a client sends: a structured-field string.
    pub fn to_header_value(&self) -> String {
        let mut out = String::with_capacity(self.0.len() + 2);
        out.push('"');
        for c in self.0.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// How long a completed response is replayed by default: 24 hours.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a claim holds by default before another request may take it over: 60 seconds.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// The methods that honour a key by default.
pub const DEFAULT_METHODS: [&str; 2] = ["POST", "PATCH"];

/// How a server keeps idempotency keys: the catalog's `[idempotency]` table, or the defaults.
///
/// Built with [`Settings::default`] and changed through its public fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// How long a completed response is replayed ([`DEFAULT_RETENTION`]).
    pub retention: Duration,
    /// How long a claim holds before a retry may take it over ([`DEFAULT_LEASE`]).
    pub lease: Duration,
    /// The methods that honour a key, upper case ([`DEFAULT_METHODS`]).
    pub methods: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            retention: DEFAULT_RETENTION,
            lease: DEFAULT_LEASE,
            methods: DEFAULT_METHODS.iter().map(|m| (*m).to_owned()).collect(),
        }
    }
}

impl Settings {
    /// Whether requests with `method` honour a key.
    pub fn applies_to(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }
}

/// The keys of a catalog's `[idempotency]` table.
pub const SECTION_KEYS: [&str; 3] = ["retention_seconds", "lease_seconds", "methods"];

/// One problem found in an `[idempotency]` table: the byte offset it is at, a rule name and a
/// message (the catalog parser turns the offset into a line).
pub(crate) type SectionProblem = (usize, &'static str, String);

/// Reads a catalog's `[idempotency]` table: every key is optional and defaults to
/// [`Settings::default`]. Problems are collected, not fatal, so the catalog reports them all.
pub(crate) fn parse_section(
    table: &std::collections::BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>>,
) -> (Settings, Vec<SectionProblem>) {
    let mut settings = Settings::default();
    let mut problems = Vec::new();
    for (key, value) in table {
        let at = value.span().start;
        match key.get_ref().as_str() {
            name @ ("retention_seconds" | "lease_seconds") => match value.get_ref() {
                toml::Value::Integer(n) if *n > 0 => {
                    let duration = Duration::from_secs(n.unsigned_abs());
                    if name == "retention_seconds" {
                        settings.retention = duration;
                    } else {
                        settings.lease = duration;
                    }
                }
                _ => problems.push((
                    at,
                    "idempotency-duration",
                    format!("`{name}` must be a whole number of seconds above zero"),
                )),
            },
            "methods" => {
                let methods: Option<Vec<String>> = match value.get_ref() {
                    toml::Value::Array(items) => items
                        .iter()
                        .map(|item| {
                            item.as_str()
                                .filter(|m| {
                                    !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic())
                                })
                                .map(str::to_ascii_uppercase)
                        })
                        .collect(),
                    _ => None,
                };
                match methods {
                    Some(methods) if !methods.is_empty() => settings.methods = methods,
                    _ => problems.push((
                        at,
                        "idempotency-methods",
                        "`methods` must be a non-empty list of HTTP method names, e.g. [\"POST\"]"
                            .to_owned(),
                    )),
                }
            }
            other => problems.push((
                key.span().start,
                "unknown-key",
                format!(
                    "unknown key `{other}` in [idempotency]; expected one of {}",
                    SECTION_KEYS.join(", ")
                ),
            )),
        }
    }
    (settings, problems)
}

/// A duration for people: whole days, hours, minutes or seconds (`24 hours`, `90 seconds`).
pub fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (n, unit) = match seconds {
        s if s > 0 && s % 86_400 == 0 && s / 86_400 != 1 => (s / 86_400, "days"),
        s if s > 0 && s % 3_600 == 0 => (s / 3_600, "hours"),
        s if s > 0 && s % 60 == 0 => (s / 60, "minutes"),
        s => (s, "seconds"),
    };
    if n == 1 {
        format!("1 {}", unit.trim_end_matches('s'))
    } else {
        format!("{n} {unit}")
    }
}

/// The code a catalog binds to `situation`, with its status, for prose.
fn bound_code(catalog: &crate::Catalog, situation: crate::Situation) -> Option<(String, u16)> {
    catalog
        .bound(situation)
        .map(|spec| (spec.code.clone(), spec.status))
}

/// The rules of idempotency keys as docs bullets (Markdown inline code in backticks), from
/// the catalog's settings and bindings.
fn rules(catalog: &crate::Catalog, settings: &Settings) -> (String, Vec<String>) {
    use crate::Situation;
    let methods = settings
        .methods
        .iter()
        .map(|m| format!("`{m}`"))
        .collect::<Vec<_>>();
    let methods = match methods.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => "no".to_owned(),
    };
    let code = |situation| {
        bound_code(catalog, situation)
            .map(|(code, status)| format!("`{code}` ({status})"))
            .unwrap_or_else(|| "an error".to_owned())
    };
    let intro = format!(
        "{methods} requests may carry an `{HEADER}` header, so that a retry after a timeout or a \
         dropped connection cannot take effect twice. A key is 1 to {MAX_KEY_LEN} printable ASCII \
         characters, sent as a bare token or as a quoted string (a fresh UUID per operation is a \
         good choice). Keys belong to the caller: the same key sent with another API key is \
         another key."
    );
    let retention = human_duration(settings.retention);
    let lease = human_duration(settings.lease);
    let bullets = vec![
        format!(
            "The first answer with a status below 500 is kept for {retention} and returned to \
             every retry with the same key and the same request (method, path, query and body), \
             byte for byte, with `{REPLAYED_HEADER}: true` and a new request id."
        ),
        format!(
            "A retry while the first request is still running gets {} with `Retry-After`; retry \
             after it to receive the result.",
            code(Situation::IdempotencyInProgress)
        ),
        format!(
            "The same key with a different request gets {}; `details.differs` says what changed \
             (`request` for the method, path or query, `body`, or `both`). Use a new key for a \
             new request.",
            code(Situation::IdempotencyConflict)
        ),
        format!(
            "A malformed key gets {}; `details.reason` says why.",
            code(Situation::IdempotencyKeyInvalid)
        ),
        format!(
            "An answer of 500 or above is not kept, so the same key may be retried. If the server \
             stops while it holds a key, the key is freed after {lease}."
        ),
        format!("After {retention}, a key may be used again for anything."),
    ];
    (intro, bullets)
}

/// The docs page's section on idempotency keys, as Markdown: the window and the rules, from
/// the catalog's `[idempotency]` settings and its bindings.
pub fn docs_markdown(catalog: &crate::Catalog, settings: &Settings) -> String {
    let (intro, bullets) = rules(catalog, settings);
    let mut out = format!("## Idempotency keys\n\n{intro}\n\n");
    for bullet in bullets {
        out.push_str("- ");
        out.push_str(&bullet);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// [`docs_markdown`] as HTML, each piece passed through `prose` (the page's escaping, which
/// turns backticks into code).
pub(crate) fn docs_html(
    catalog: &crate::Catalog,
    settings: &Settings,
    prose: impl Fn(&str) -> String,
) -> String {
    let (intro, bullets) = rules(catalog, settings);
    let mut out = format!(
        "<h2 id=\"idempotency\">Idempotency keys</h2>\n<p>{}</p>\n<ul>\n",
        prose(&intro)
    );
    for bullet in bullets {
        out.push_str(&format!("<li>{}</li>\n", prose(&bullet)));
    }
    out.push_str("</ul>\n");
    out
}

/// The length of [`Fingerprint::to_bytes`].
pub const FINGERPRINT_LEN: usize = 64;

/// What identifies a request under an idempotency key: a SHA-256 digest of its method, path
/// and query, and one of its body bytes.
///
/// # Any change to method, path, query or body changes it, and says which
///
/// ```
/// use faultline::idempotency::{Difference, Fingerprint};
/// let first = Fingerprint::new("POST", "/v1/chatbots", "", br#"{"name":"a"}"#);
/// assert_eq!(first.difference(&first.clone()), None);
/// let other_body = Fingerprint::new("POST", "/v1/chatbots", "", br#"{"name":"b"}"#);
/// assert_eq!(first.difference(&other_body), Some(Difference::Body));
/// let other_query = Fingerprint::new("POST", "/v1/chatbots", "dry_run=1", br#"{"name":"a"}"#);
/// assert_eq!(first.difference(&other_query), Some(Difference::Request));
/// let other_both = Fingerprint::new("PATCH", "/v1/chatbots", "", b"");
/// assert_eq!(first.difference(&other_both), Some(Difference::Both));
/// ```
///
/// # Fields cannot run into each other
///
/// Each field is hashed after its length, so moving a byte from the path to the query gives
/// another fingerprint.
///
/// ```
/// use faultline::idempotency::Fingerprint;
/// assert_ne!(
///     Fingerprint::new("POST", "/a", "b=1", b""),
///     Fingerprint::new("POST", "/ab", "=1", b""),
/// );
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    request: [u8; 32],
    body: [u8; 32],
}

/// What differs between two requests that carry the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Difference {
    /// The method, path or query.
    Request,
    /// The body.
    Body,
    /// Both.
    Both,
}

impl Difference {
    /// A word for error details: `request` (method, path or query), `body` or `both`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Difference::Request => "request",
            Difference::Body => "body",
            Difference::Both => "both",
        }
    }

    /// A sentence for people.
    pub const fn describe(self) -> &'static str {
        match self {
            Difference::Request => "the method, path or query differs from the first request",
            Difference::Body => "the body differs from the first request",
            Difference::Both => {
                "the method, path or query and the body differ from the first request"
            }
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn field(hash: &mut Sha256, bytes: &[u8]) {
    hash.update((bytes.len() as u64).to_be_bytes());
    hash.update(bytes);
}

impl Fingerprint {
    /// The fingerprint of a request: `method` (as sent, e.g. `POST`), `path` (the request's
    /// path, not a route template), `query` (the raw query string without `?`, empty if none)
    /// and the body bytes.
    pub fn new(method: &str, path: &str, query: &str, body: &[u8]) -> Self {
        let mut request = Sha256::new();
        field(&mut request, method.as_bytes());
        field(&mut request, path.as_bytes());
        field(&mut request, query.as_bytes());
        Fingerprint {
            request: request.finalize().into(),
            body: Sha256::digest(body).into(),
        }
    }

    /// What differs from `other`, or `None` when they are the same request.
    pub fn difference(&self, other: &Fingerprint) -> Option<Difference> {
        match (self.request == other.request, self.body == other.body) {
            (true, true) => None,
            (false, true) => Some(Difference::Request),
            (true, false) => Some(Difference::Body),
            (false, false) => Some(Difference::Both),
        }
    }

    /// The digest of method, path and query.
    pub fn request_digest(&self) -> &[u8; 32] {
        &self.request
    }

    /// The digest of the body.
    pub fn body_digest(&self) -> &[u8; 32] {
        &self.body
    }

    /// The two digests, request first: what a store keeps.
    pub fn to_bytes(&self) -> [u8; FINGERPRINT_LEN] {
        let mut out = [0; FINGERPRINT_LEN];
        out[..32].copy_from_slice(&self.request);
        out[32..].copy_from_slice(&self.body);
        out
    }

    /// Reads [`Fingerprint::to_bytes`] back; `None` unless `bytes` is exactly
    /// [`FINGERPRINT_LEN`] long.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != FINGERPRINT_LEN {
            return None;
        }
        let mut request = [0; 32];
        let mut body = [0; 32];
        request.copy_from_slice(&bytes[..32]);
        body.copy_from_slice(&bytes[32..]);
        Some(Fingerprint { request, body })
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = |d: &[u8; 32]| {
            d[..6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        f.debug_struct("Fingerprint")
            .field("request", &format_args!("{}…", hex(&self.request)))
            .field("body", &format_args!("{}…", hex(&self.body)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_keys_say_why() {
        let long = "a".repeat(256);
        let cases: &[(&[u8], KeyError)] = &[
            (b"", KeyError::Empty),
            (b"   ", KeyError::Empty),
            (b"\"\"", KeyError::Empty),
            (long.as_bytes(), KeyError::TooLong { length: 256 }),
            (b"ab\x01c", KeyError::InvalidByte { position: 2 }),
            (b"ab\x7f", KeyError::InvalidByte { position: 2 }),
            ("clé".as_bytes(), KeyError::InvalidByte { position: 2 }),
            (b"\"a\nb\"", KeyError::InvalidByte { position: 2 }),
            (b"\"abc", KeyError::UnbalancedQuote),
            (b"abc\"", KeyError::UnbalancedQuote),
            (b"\"a\"b\"", KeyError::UnbalancedQuote),
            (b"\"abc\\\"", KeyError::UnbalancedQuote),
            (b"\"a\\nb\"", KeyError::BadEscape),
            (b"a b", KeyError::Space),
        ];
        for (value, expected) in cases {
            assert_eq!(
                IdempotencyKey::parse(value).as_ref(),
                Err(expected),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        let quoted_long = format!("\"{long}\"");
        assert_eq!(
            IdempotencyKey::parse(quoted_long.as_bytes()),
            Err(KeyError::TooLong { length: 256 })
        );
    }

    #[test]
    fn the_longest_keys_and_quoted_spaces_are_accepted() {
        let longest = "k".repeat(MAX_KEY_LEN);
        assert_eq!(
            IdempotencyKey::parse(longest.as_bytes()).map(|k| k.as_str().len()),
            Ok(MAX_KEY_LEN)
        );
        let spaced = IdempotencyKey::parse(b" \t\"a b\" ").expect("a quoted key with a space");
        assert_eq!(spaced.as_str(), "a b");
    }

    #[test]
    fn fingerprint_bytes_round_trip() {
        let fp = Fingerprint::new("POST", "/x", "a=1", b"body");
        assert_eq!(Fingerprint::from_bytes(&fp.to_bytes()), Some(fp));
        assert_eq!(Fingerprint::from_bytes(&[0; 63]), None);
    }
}
