//! The catalog: one API's errors, parsed from TOML and validated.
//!
//! See `docs/catalog-format.md` in the repository for the file format.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use toml::Spanned;

use crate::details::{DetailsShape, FieldSpec, FieldType};
use crate::error::ApiError;
use crate::names::UnknownName;
use crate::profile::Profile;
use crate::retry::RetryAdvice;
use crate::situation::Situation;
use crate::style::CodeStyle;

/// One API's error catalog: settings, bindings and codes. The single source of truth.
///
/// ```
/// let catalog = faultline::Catalog::from_toml_str(r#"
/// [api]
/// name = "Tiny API"
/// profile = "flat"
/// code_style = "snake_case"
///
/// [bindings]
/// internal = "internal_error"
///
/// [[errors]]
/// code = "internal_error"
/// status = 500
/// category = "Server errors"
/// title = "Internal error"
/// message = "Something went wrong on our side."
/// when = "An unexpected failure on the server."
/// recovery = "Retry later; quote the request id to support if it persists."
/// retry = "with_idempotency_key"
/// "#).unwrap();
/// assert_eq!(catalog.get("internal_error").unwrap().status, 500);
/// ```
///
/// # The index cannot go stale
///
/// The codes and bindings are read through [`Catalog::errors`], [`Catalog::get`],
/// [`Catalog::bindings`] and [`Catalog::bound`] only: nothing outside the parser can edit them,
/// so a lookup always agrees with the list.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// API-wide settings. No index depends on them.
    pub api: ApiSettings,
    /// The `[idempotency]` table: how `Idempotency-Key` is honoured (none when absent).
    pub idempotency: Option<crate::idempotency::Settings>,
    bindings: BTreeMap<Situation, String>,
    errors: Vec<ErrorSpec>,
    index: HashMap<String, usize>,
    limits: crate::limits::LimitSettings,
}

/// The `[api]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApiSettings {
    /// Display name.
    pub name: String,
    /// Envelope profile of error bodies.
    pub profile: Profile,
    /// How codes are spelt.
    pub code_style: CodeStyle,
    /// Header carrying the request id.
    pub request_id_header: String,
    /// Prefix of generated request ids.
    pub request_id_prefix: String,
    /// Documentation link template containing `{code}`.
    pub docs_url: Option<String>,
    /// One paragraph about the API.
    pub description: Option<String>,
    /// The `ErrorInfo.domain` of the Google profile, e.g. `chatbots.example.com`.
    pub domain: Option<String>,
}

/// One `[[errors]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErrorSpec {
    /// The stable machine code.
    pub code: String,
    /// Its one HTTP status.
    pub status: u16,
    /// The docs' group heading.
    pub category: String,
    /// Short name.
    pub title: String,
    /// Default message sent to callers.
    pub message: String,
    /// What causes it.
    pub when: String,
    /// What the caller should do.
    pub recovery: String,
    /// What a client may do.
    pub retry: RetryAdvice,
    /// Shape of `details`.
    pub details: DetailsShape,
    /// Headers it always carries.
    pub headers: Vec<String>,
    /// Kept for old clients, no longer raised.
    pub deprecated: bool,
    /// The line of the entry's `code` in the source (1-based), for reports.
    pub line: usize,
}

impl ErrorSpec {
    /// A fresh occurrence of this code with its default message.
    pub fn to_error(&self) -> ApiError {
        ApiError::from_parts(
            Cow::Owned(self.code.clone()),
            self.status,
            Cow::Owned(self.title.clone()),
            Cow::Owned(self.message.clone()),
            self.retry,
        )
    }

    /// Whether this code always carries `header` (case-insensitive).
    pub fn carries(&self, header: &str) -> bool {
        self.headers.iter().any(|h| h.eq_ignore_ascii_case(header))
    }
}

impl Catalog {
    /// Parses and validates a catalog, reporting every problem found.
    pub fn from_toml_str(source: &str) -> Result<Catalog, CatalogErrors> {
        Parser {
            source,
            problems: Vec::new(),
        }
        .parse()
    }

    /// Every code, in file order.
    pub fn errors(&self) -> &[ErrorSpec] {
        &self.errors
    }

    /// The code bound to each standard situation.
    pub fn bindings(&self) -> &BTreeMap<Situation, String> {
        &self.bindings
    }

    /// The entry for `code`.
    pub fn get(&self, code: &str) -> Option<&ErrorSpec> {
        self.index.get(code).map(|&i| &self.errors[i])
    }

    /// The entry bound to `situation`, if the catalog binds one.
    pub fn bound(&self, situation: Situation) -> Option<&ErrorSpec> {
        self.bindings
            .get(&situation)
            .and_then(|code| self.get(code))
    }

    /// The `[limits]` section: tiers and rate, quota and concurrency policies (empty when the
    /// catalog has none).
    pub fn limits(&self) -> &crate::limits::LimitSettings {
        &self.limits
    }

    /// The documentation link of `code`, from the `docs_url` template.
    pub fn docs_url_for(&self, code: &str) -> Option<String> {
        self.api
            .docs_url
            .as_ref()
            .map(|t| t.replace("{code}", code))
    }

    /// The `ErrorInfo.domain` of the Google profile: the `[api]` `domain`, else the host of
    /// `docs_url`, else the API name in lower case with dashes for anything but letters and
    /// digits (`Chatbots API` gives `chatbots-api`).
    ///
    /// ```
    /// let catalog = faultline::Catalog::from_toml_str(r#"
    /// [api]
    /// name = "Tiny API"
    /// profile = "google"
    /// code_style = "snake_case"
    /// docs_url = "https://docs.tiny.example/errors#{code}"
    /// [[errors]]
    /// code = "internal_error"
    /// status = 500
    /// category = "Server"
    /// title = "Internal error"
    /// message = "Something went wrong."
    /// when = "A failure."
    /// recovery = "Retry later."
    /// retry = "backoff"
    /// "#).unwrap();
    /// assert_eq!(catalog.google_domain(), "docs.tiny.example");
    /// ```
    pub fn google_domain(&self) -> Cow<'_, str> {
        if let Some(domain) = &self.api.domain {
            return Cow::Borrowed(domain);
        }
        let docs_host = self.api.docs_url.as_deref().and_then(|url| {
            let rest = url.split_once("://")?.1;
            let host = rest.split(['/', '?', '#', '{']).next()?;
            let host = host.rsplit('@').next()?;
            (!host.is_empty()).then_some(host)
        });
        if let Some(host) = docs_host {
            return Cow::Borrowed(host);
        }
        let mut slug = String::new();
        for c in self.api.name.chars() {
            if c.is_ascii_alphanumeric() {
                slug.push(c.to_ascii_lowercase());
            } else if !slug.is_empty() && !slug.ends_with('-') {
                slug.push('-');
            }
        }
        let slug = slug.trim_end_matches('-');
        Cow::Owned(if slug.is_empty() {
            "faultline".to_owned()
        } else {
            slug.to_owned()
        })
    }

    /// Categories in the order they first appear in the file.
    pub fn categories(&self) -> Vec<&str> {
        let mut seen: Vec<&str> = Vec::new();
        for e in &self.errors {
            if !seen.contains(&e.category.as_str()) {
                seen.push(&e.category);
            }
        }
        seen
    }

    /// One line describing the catalog, for `faultline lint`.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} codes in {} categories, {} bindings, profile {}, style {}",
            self.api.name,
            self.errors.len(),
            self.categories().len(),
            self.bindings.len(),
            self.api.profile,
            self.api.code_style,
        )
    }
}

/// One problem found in a catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line in the source.
    pub line: usize,
    /// The code concerned, when the problem is about one entry.
    pub code: Option<String>,
    /// A stable rule name, e.g. `duplicate-code`.
    pub rule: &'static str,
    /// What is wrong, in words.
    pub message: String,
}

/// Every problem found in a catalog, in line order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} problem(s) in the catalog", problems.len())]
pub struct CatalogErrors {
    /// The problems, sorted by line.
    pub problems: Vec<Problem>,
}

impl CatalogErrors {
    /// Formats every problem as `FILE:LINE: [rule] code `x`: message`, one per line.
    pub fn report(&self, file: &str) -> String {
        let mut out = String::new();
        for p in &self.problems {
            out.push_str(&format!("{file}:{}: error[{}]", p.line, p.rule));
            if let Some(code) = &p.code {
                out.push_str(&format!(" code `{code}`"));
            }
            out.push_str(&format!(": {}\n", p.message));
        }
        out
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: [{}] {}", self.line, self.rule, self.message)
    }
}

// ---- parsing --------------------------------------------------------------------------------

type RawTable = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDoc {
    api: Option<Spanned<RawTable>>,
    bindings: Option<Spanned<RawTable>>,
    errors: Option<Vec<Spanned<RawTable>>>,
    limits: Option<Spanned<crate::limits::RawLimits>>,
    idempotency: Option<Spanned<RawTable>>,
}

const API_KEYS: [&str; 8] = [
    "name",
    "profile",
    "code_style",
    "request_id_header",
    "request_id_prefix",
    "docs_url",
    "description",
    "domain",
];
const ERROR_KEYS: [&str; 12] = [
    "code",
    "status",
    "category",
    "title",
    "message",
    "when",
    "recovery",
    "retry",
    "details",
    "headers",
    "deprecated",
    "since",
];

struct Parser<'s> {
    source: &'s str,
    problems: Vec<Problem>,
}

/// A table being read: looks values up by key and reports what is wrong with them.
struct Entry<'t> {
    table: &'t RawTable,
    line: usize,
    code: Option<String>,
}

impl<'s> Parser<'s> {
    fn line(&self, offset: usize) -> usize {
        let end = offset.min(self.source.len());
        self.source.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn problem(
        &mut self,
        line: usize,
        code: Option<&str>,
        rule: &'static str,
        message: impl Into<String>,
    ) {
        self.problems.push(Problem {
            line,
            code: code.map(str::to_owned),
            rule,
            message: message.into(),
        });
    }

    fn parse(mut self) -> Result<Catalog, CatalogErrors> {
        let raw: RawDoc = match toml::from_str(self.source) {
            Ok(raw) => raw,
            Err(e) => {
                let line = e.span().map_or(1, |s| self.line(s.start));
                let message = e.message().trim().to_owned();
                self.problem(line, None, "toml-syntax", message);
                return Err(self.finish_err());
            }
        };

        let api = self.api(raw.api.as_ref());
        let errors = self.errors(
            raw.errors.as_deref().unwrap_or(&[]),
            api.as_ref().map(|a| a.code_style),
        );
        let mut index = HashMap::new();
        for (i, e) in errors.iter().enumerate() {
            index.entry(e.code.clone()).or_insert(i);
        }
        let bindings = self.bindings(raw.bindings.as_ref(), &index);
        let limits = crate::limits::parse_section(
            self.source,
            raw.limits.as_ref(),
            &errors,
            &bindings,
            &mut self.problems,
        );
        let idempotency = raw.idempotency.as_ref().map(|table| {
            let (settings, problems) = crate::idempotency::parse_section(table.get_ref());
            for (at, rule, message) in problems {
                let line = self.line(at);
                self.problem(line, None, rule, message);
            }
            settings
        });

        match api {
            Some(api) if self.problems.is_empty() => Ok(Catalog {
                api,
                idempotency,
                bindings,
                errors,
                index,
                limits,
            }),
            _ => Err(self.finish_err()),
        }
    }

    fn finish_err(mut self) -> CatalogErrors {
        self.problems.sort_by_key(|p| p.line);
        CatalogErrors {
            problems: self.problems,
        }
    }

    fn entry<'t>(&self, table: &'t Spanned<RawTable>) -> Entry<'t> {
        Entry {
            table: table.get_ref(),
            line: self.line(table.span().start),
            code: None,
        }
    }

    fn api(&mut self, table: Option<&Spanned<RawTable>>) -> Option<ApiSettings> {
        let Some(table) = table else {
            self.problem(1, None, "missing-api", "the catalog has no [api] table");
            return None;
        };
        let entry = self.entry(table);
        self.unknown_keys(&entry, &API_KEYS, "[api]");
        let name = self.required_str(&entry, "name");
        let profile = self
            .required_str(&entry, "profile")
            .and_then(|(p, line)| self.parse_name::<Profile>(&p, line, None, "unknown-profile"));
        let code_style = self
            .required_str(&entry, "code_style")
            .and_then(|(s, line)| {
                self.parse_name::<CodeStyle>(&s, line, None, "unknown-code-style")
            });
        let request_id_header = self
            .optional_str(&entry, "request_id_header")
            .map_or_else(|| "X-Request-Id".to_owned(), |(h, _)| h);
        if !is_header_name(&request_id_header) {
            let line = self.key_line(&entry, "request_id_header");
            self.problem(
                line,
                None,
                "invalid-header",
                format!("`{request_id_header}` is not a valid header name"),
            );
        }
        let request_id_prefix = self
            .optional_str(&entry, "request_id_prefix")
            .map_or_else(|| "req_".to_owned(), |(p, _)| p);
        if request_id_prefix.len() > 16 || !request_id_prefix.bytes().all(is_request_id_byte) {
            let line = self.key_line(&entry, "request_id_prefix");
            self.problem(
                line,
                None,
                "invalid-request-id-prefix",
                "request_id_prefix must be at most 16 characters of [A-Za-z0-9._-]",
            );
        }
        let docs_url = self.optional_str(&entry, "docs_url").map(|(url, line)| {
            if !url.contains("{code}") {
                self.problem(
                    line,
                    None,
                    "docs-url-template",
                    "docs_url must contain `{code}`",
                );
            }
            url
        });
        let description = self.optional_str(&entry, "description").map(|(d, _)| d);
        let domain = self.optional_str(&entry, "domain").map(|(domain, line)| {
            if !is_domain(&domain) {
                self.problem(
                    line,
                    None,
                    "invalid-domain",
                    "domain must be a host name: letters, digits, dots and dashes",
                );
            }
            domain
        });
        Some(ApiSettings {
            name: name?.0,
            profile: profile?,
            code_style: code_style?,
            request_id_header,
            request_id_prefix,
            docs_url,
            description,
            domain,
        })
    }

    fn errors(&mut self, tables: &[Spanned<RawTable>], style: Option<CodeStyle>) -> Vec<ErrorSpec> {
        if tables.is_empty() {
            self.problem(1, None, "no-errors", "the catalog defines no [[errors]]");
        }
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::new();
        for table in tables {
            let mut entry = self.entry(table);
            let code = self.required_str(&entry, "code");
            if let Some((code, line)) = &code {
                entry.line = *line;
                entry.code = Some(code.clone());
                if let Some(style) = style.filter(|s| !s.matches(code)) {
                    self.problem(
                        *line,
                        Some(code),
                        "code-style",
                        format!(
                            "breaks the declared style {style} (e.g. `{}`)",
                            style.example()
                        ),
                    );
                }
                if let Some(first) = first_line.get(code) {
                    self.problem(
                        *line,
                        Some(code),
                        "duplicate-code",
                        format!("defined twice; first defined on line {first}"),
                    );
                } else {
                    first_line.insert(code.clone(), *line);
                }
            }
            if let Some(spec) = self.error_entry(&entry) {
                out.push(spec);
            }
        }
        out
    }

    fn error_entry(&mut self, entry: &Entry<'_>) -> Option<ErrorSpec> {
        self.unknown_keys(entry, &ERROR_KEYS, "an [[errors]] entry");
        let code = entry.code.clone();
        let status = self.status(entry);
        let category = self.required_str(entry, "category");
        let title = self.required_str(entry, "title");
        let message = self.required_str(entry, "message");
        let when = self.required_str(entry, "when");
        let recovery = self.required_str(entry, "recovery");
        let retry = self.required_str(entry, "retry").and_then(|(r, line)| {
            self.parse_name::<RetryAdvice>(&r, line, entry.code.as_deref(), "unknown-retry")
        });
        let details = self.details(entry);
        let headers = self.headers(entry);
        let deprecated = match entry.get("deprecated") {
            None => Some(false),
            Some(v) => match v.get_ref() {
                toml::Value::Boolean(b) => Some(*b),
                _ => {
                    let line = self.line(v.span().start);
                    self.problem(
                        line,
                        entry.code.as_deref(),
                        "wrong-type",
                        "`deprecated` must be true or false",
                    );
                    None
                }
            },
        };

        if let (Some(status), Some(headers)) = (status, &headers) {
            let has_retry_after = headers
                .iter()
                .any(|h| h.eq_ignore_ascii_case("Retry-After"));
            if retry == Some(RetryAdvice::Never) {
                // A wait would tell the client that retrying helps, which `never` denies.
                if has_retry_after {
                    self.problem(
                        entry.line,
                        entry.code.as_deref(),
                        "retry-after-on-never",
                        "retry = \"never\" contradicts headers = [\"Retry-After\"]: drop the header or change the advice",
                    );
                }
            } else if matches!(status, 429 | 503) && !has_retry_after {
                self.problem(
                    entry.line,
                    entry.code.as_deref(),
                    "missing-retry-after",
                    format!(
                        "a {status} code must carry Retry-After: add headers = [\"Retry-After\"]"
                    ),
                );
            } else if retry == Some(RetryAdvice::AfterRetryAfter) && !has_retry_after {
                self.problem(
                    entry.line,
                    entry.code.as_deref(),
                    "missing-retry-after",
                    "retry = \"after_retry_after\" needs headers = [\"Retry-After\"]",
                );
            }
        }

        Some(ErrorSpec {
            code: code?,
            status: status?,
            category: category?.0,
            title: title?.0,
            message: message?.0,
            when: when?.0,
            recovery: recovery?.0,
            retry: retry?,
            details: details?,
            headers: headers?,
            deprecated: deprecated?,
            line: entry.line,
        })
    }

    fn status(&mut self, entry: &Entry<'_>) -> Option<u16> {
        let Some(value) = entry.get("status") else {
            self.problem(
                entry.line,
                entry.code.as_deref(),
                "missing-field",
                "`status` is required",
            );
            return None;
        };
        let line = self.line(value.span().start);
        match value.get_ref() {
            toml::Value::Integer(n) if (400..=599).contains(n) => u16::try_from(*n).ok(),
            toml::Value::Integer(n) => {
                self.problem(
                    line,
                    entry.code.as_deref(),
                    "status-range",
                    format!("status {n} is outside 400–599: only errors belong in a catalog"),
                );
                None
            }
            _ => {
                self.problem(
                    line,
                    entry.code.as_deref(),
                    "wrong-type",
                    "`status` must be an integer",
                );
                None
            }
        }
    }

    fn details(&mut self, entry: &Entry<'_>) -> Option<DetailsShape> {
        let Some(value) = entry.get("details") else {
            return Some(DetailsShape::None);
        };
        let line = self.line(value.span().start);
        let code = entry.code.as_deref();
        match value.get_ref() {
            toml::Value::String(name) => match name.parse::<DetailsShape>() {
                Ok(shape) => Some(shape),
                Err(unknown) => {
                    self.problem(
                        line,
                        code,
                        "unknown-details",
                        format!("{unknown} or an inline table"),
                    );
                    None
                }
            },
            toml::Value::Table(fields) => {
                let mut specs = Vec::new();
                let mut ok = true;
                if fields.is_empty() {
                    self.problem(
                        line,
                        code,
                        "unknown-details",
                        "an inline details table needs at least one field",
                    );
                    ok = false;
                }
                for (name, ty) in fields {
                    let ty_name = ty.as_str().unwrap_or_default();
                    let (base, optional) = match ty_name.strip_suffix('?') {
                        Some(base) => (base, true),
                        None => (ty_name, false),
                    };
                    let valid_name = !name.is_empty()
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        && !name.as_bytes()[0].is_ascii_digit();
                    if !valid_name {
                        self.problem(
                            line,
                            code,
                            "unknown-details",
                            format!(
                                "details field `{name}` must be letters, digits and underscores"
                            ),
                        );
                        ok = false;
                    }
                    match FieldType::from_name(base) {
                        Some(ty) => specs.push(FieldSpec {
                            name: name.clone(),
                            ty,
                            optional,
                        }),
                        None => {
                            self.problem(line, code, "unknown-details", format!("details field `{name}` has unknown type `{ty}`; expected one of {} (with `?` for optional)", FieldType::INLINE_NAMES.join(", ")));
                            ok = false;
                        }
                    }
                }
                ok.then_some(DetailsShape::Object(specs))
            }
            _ => {
                self.problem(
                    line,
                    code,
                    "unknown-details",
                    "`details` must be a shape name or an inline table",
                );
                None
            }
        }
    }

    fn headers(&mut self, entry: &Entry<'_>) -> Option<Vec<String>> {
        let Some(value) = entry.get("headers") else {
            return Some(Vec::new());
        };
        let line = self.line(value.span().start);
        let code = entry.code.as_deref();
        let Some(items) = value.get_ref().as_array() else {
            self.problem(
                line,
                code,
                "wrong-type",
                "`headers` must be an array of header names",
            );
            return None;
        };
        let mut out = Vec::new();
        for item in items {
            match item.as_str() {
                Some(h) if is_header_name(h) => out.push(h.to_owned()),
                _ => {
                    self.problem(
                        line,
                        code,
                        "invalid-header",
                        format!("`{item}` is not a valid header name"),
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    fn bindings(
        &mut self,
        table: Option<&Spanned<RawTable>>,
        index: &HashMap<String, usize>,
    ) -> BTreeMap<Situation, String> {
        let mut out = BTreeMap::new();
        let Some(table) = table else {
            return out;
        };
        for (key, value) in table.get_ref() {
            let line = self.line(key.span().start);
            let Some(situation) =
                self.parse_name::<Situation>(key.get_ref(), line, None, "unknown-binding")
            else {
                continue;
            };
            let Some(code) = value.get_ref().as_str() else {
                self.problem(
                    line,
                    None,
                    "wrong-type",
                    format!("binding `{situation}` must name a code as a string"),
                );
                continue;
            };
            if !index.contains_key(code) {
                self.problem(
                    line,
                    Some(code),
                    "unknown-code",
                    format!("binding `{situation}` names a code that is not in the catalog"),
                );
                continue;
            }
            out.insert(situation, code.to_owned());
        }
        out
    }

    fn unknown_keys(&mut self, entry: &Entry<'_>, known: &[&str], what: &str) {
        for key in entry.table.keys() {
            if !known.contains(&key.get_ref().as_str()) {
                let line = self.line(key.span().start);
                self.problem(
                    line,
                    entry.code.as_deref(),
                    "unknown-key",
                    format!(
                        "unknown key `{}` in {what}; expected one of {}",
                        key.get_ref(),
                        known.join(", ")
                    ),
                );
            }
        }
    }

    /// Parses a name of an enum spelt as words, reporting an unknown one under `rule`.
    fn parse_name<T: FromStr<Err = UnknownName>>(
        &mut self,
        name: &str,
        line: usize,
        code: Option<&str>,
        rule: &'static str,
    ) -> Option<T> {
        name.parse()
            .map_err(|unknown: UnknownName| self.problem(line, code, rule, unknown.to_string()))
            .ok()
    }

    fn key_line(&self, entry: &Entry<'_>, key: &str) -> usize {
        entry
            .get(key)
            .map_or(entry.line, |v| self.line(v.span().start))
    }

    /// A required, non-empty string, with its line.
    fn required_str(&mut self, entry: &Entry<'_>, key: &str) -> Option<(String, usize)> {
        if entry.get(key).is_none() {
            self.problem(
                entry.line,
                entry.code.as_deref(),
                "missing-field",
                format!("`{key}` is required"),
            );
            return None;
        }
        self.optional_str(entry, key)
    }

    /// An optional string: absent is fine; present must be a non-blank string.
    fn optional_str(&mut self, entry: &Entry<'_>, key: &str) -> Option<(String, usize)> {
        let value = entry.get(key)?;
        let line = self.line(value.span().start);
        match value.get_ref() {
            toml::Value::String(s) if !s.trim().is_empty() => Some((s.clone(), line)),
            toml::Value::String(_) => {
                self.problem(
                    line,
                    entry.code.as_deref(),
                    "missing-field",
                    format!("`{key}` must not be empty"),
                );
                None
            }
            _ => {
                self.problem(
                    line,
                    entry.code.as_deref(),
                    "wrong-type",
                    format!("`{key}` must be a string"),
                );
                None
            }
        }
    }
}

impl Entry<'_> {
    fn get(&self, key: &str) -> Option<&Spanned<toml::Value>> {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| v)
    }
}

/// An HTTP header name: an RFC 9110 token.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A host name: dot-separated labels of letters, digits and inner dashes.
fn is_domain(domain: &str) -> bool {
    domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The characters allowed in request ids (and their prefixes).
pub fn is_request_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}
