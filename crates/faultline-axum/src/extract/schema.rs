//! The JSON-schema checker behind [`super::Json`] and [`super::Query`].
//!
//! A schema is generated once per type, then audited: every keyword is either one this module
//! checks, or an annotation that validates nothing. Anything else makes the schema
//! unsupported, so no rule is ever skipped in silence. Patterns are compiled during the audit
//! and kept with the schema.

use std::any::TypeId;
use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, OnceLock, RwLock};

use regex::Regex;
use schemars::JsonSchema;
use serde_json::{Map, Number, Value};

use crate::contract::Problems;

/// How many characters of the client's own input a message may repeat.
const ECHO_CHARS: usize = 40;
/// How many unknown keys a message names before it only counts the rest.
const UNKNOWN_KEYS_NAMED: usize = 5;

/// Keywords that describe a schema without constraining a value.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
    "example",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// The string formats this module checks; see [`string_format_holds`].
const STRING_FORMATS: &[&str] = &[
    "uuid",
    "email",
    "uri",
    "date-time",
    "date",
    "ipv4",
    "ipv6",
    "ip",
];

/// A schema uses a keyword (or a keyword value) the checker does not implement.
///
/// Call [`ensure_supported`] when building a router to find out at start-up; at request time
/// an extractor for such a type answers the internal error instead of trusting the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsupportedSchema {
    keyword: String,
    pointer: String,
    reason: &'static str,
}

impl UnsupportedSchema {
    /// The keyword that cannot be checked, e.g. `if` or `format`.
    pub fn keyword(&self) -> &str {
        &self.keyword
    }

    /// The JSON pointer of that keyword in the generated schema, e.g.
    /// `/properties/code/pattern`.
    pub fn pointer(&self) -> &str {
        &self.pointer
    }
}

impl std::fmt::Display for UnsupportedSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the JSON schema cannot be checked: keyword `{}` at `{}` {}",
            self.keyword, self.pointer, self.reason
        )
    }
}

impl std::error::Error for UnsupportedSchema {}

/// Whether every rule in `T`'s JSON schema is one the extractors check.
///
/// # Unsupported schemas are found before the first request
///
/// Call it for each request type while building the router: an `Err` names the first keyword
/// that would otherwise be refused at request time (the extractors fail closed on it).
///
/// ```
/// use schemars::JsonSchema;
///
/// #[derive(JsonSchema)]
/// struct Signup {
///     #[schemars(length(min = 1, max = 50), regex(pattern = r"^[a-z]+$"))]
///     name: String,
///     #[schemars(email)]
///     email: String,
/// }
///
/// #[derive(JsonSchema)]
/// struct Lookahead {
///     // The regex crate has no look-around, so this rule cannot be checked.
///     #[schemars(regex(pattern = r"^(?!admin).*$"))]
///     name: String,
/// }
///
/// assert!(faultline_axum::ensure_supported::<Signup>().is_ok());
/// let refused = faultline_axum::ensure_supported::<Lookahead>().unwrap_err();
/// assert_eq!(refused.keyword(), "pattern");
/// assert_eq!(refused.pointer(), "/properties/name/pattern");
/// ```
pub fn ensure_supported<T: JsonSchema + 'static>() -> Result<(), UnsupportedSchema> {
    schema_for::<T>().supported().map_err(Clone::clone)
}

/// A generated schema, audited, with its patterns compiled.
#[derive(Debug)]
pub(crate) struct CompiledSchema {
    root: Value,
    patterns: HashMap<String, Regex>,
    supported: Result<(), UnsupportedSchema>,
    /// Whether the refusal was logged already: once per type is enough.
    reported: AtomicBool,
}

/// The compiled schema of `T`, built once per type.
pub(crate) fn schema_for<T: JsonSchema + 'static>() -> Arc<CompiledSchema> {
    static CACHE: OnceLock<RwLock<HashMap<TypeId, Arc<CompiledSchema>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let id = TypeId::of::<T>();
    if let Some(schema) = cache.read().unwrap_or_else(|e| e.into_inner()).get(&id) {
        return Arc::clone(schema);
    }
    let schema = Arc::new(CompiledSchema::new(schemars::schema_for!(T).to_value()));
    cache
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(id)
        .or_insert(schema)
        .clone()
}

impl CompiledSchema {
    /// Audits `root` and compiles its patterns.
    pub(crate) fn new(root: Value) -> Self {
        let mut audit = Audit {
            root: &root,
            patterns: HashMap::new(),
            visited: HashSet::new(),
            pending: Vec::new(),
        };
        let supported = audit.run();
        let patterns = audit.patterns;
        CompiledSchema {
            root,
            patterns,
            supported,
            reported: AtomicBool::new(false),
        }
    }

    /// `Ok` when every keyword can be checked.
    pub(crate) fn supported(&self) -> Result<(), &UnsupportedSchema> {
        self.supported.as_ref().map(|_| ())
    }

    /// True the first time it is called: the caller logs the refusal then.
    pub(crate) fn first_refusal(&self) -> bool {
        !self.reported.swap(true, AtomicOrdering::Relaxed)
    }

    /// Every problem of `value` (up to the cap of [`Problems`]).
    pub(crate) fn check(&self, value: &Value) -> Problems {
        let mut problems = Problems::default();
        let mut at = String::new();
        self.check_at(&self.root, value, &mut at, &mut problems);
        problems
    }

    /// The JSON types the schema allows for top-level property `key` (for query strings).
    pub(crate) fn property_types(&self, key: &str) -> Vec<&str> {
        let root = self.resolve(&self.root);
        match root.get("properties").and_then(|p| p.get(key)) {
            Some(schema) => self.type_names(schema),
            None => Vec::new(),
        }
    }

    /// Follows a local `$ref`; the audit made sure each one resolves.
    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => lookup(&self.root, reference).unwrap_or(&FALSE),
            None => schema,
        }
    }

    fn type_names<'a>(&'a self, schema: &'a Value) -> Vec<&'a str> {
        let schema = self.resolve(schema);
        let mut out: Vec<&str> = match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        if !out.is_empty() && schema.get("nullable") == Some(&Value::Bool(true)) {
            out.push("null");
        }
        for key in ["anyOf", "oneOf"] {
            for branch in schema
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.extend(self.type_names(branch));
            }
        }
        out
    }

    /// Checks `value` against `schema`, recording every problem under the pointer `at`.
    fn check_at(&self, schema: &Value, value: &Value, at: &mut String, problems: &mut Problems) {
        let schema = match schema {
            Value::Bool(true) => return,
            Value::Object(schema) => schema,
            _ => {
                add(problems, at, || "This value is not allowed".to_owned());
                return;
            }
        };
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let target = lookup(&self.root, reference).unwrap_or(&FALSE);
            self.check_at(target, value, at, problems);
        }
        if !self.check_combinators(schema, value, at, problems) {
            return;
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array)
            && !options.iter().any(|option| json_equal(option, value))
        {
            add(problems, at, || {
                let expected: Vec<String> = options.iter().map(quote_schema).collect();
                format!(
                    "Invalid enum value. Expected {}, got {}.",
                    expected.join(" | "),
                    quote_input(value)
                )
            });
            return;
        }
        if let Some(constant) = schema.get("const")
            && !json_equal(constant, value)
        {
            add(problems, at, || {
                format!("Invalid literal value, expected {}", quote_schema(constant))
            });
            return;
        }
        if !self.check_type(schema, value, at, problems) {
            return;
        }
        match value {
            Value::String(text) => self.check_string(schema, text, at, problems),
            Value::Number(number) => check_number(schema, number, at, problems),
            Value::Array(items) => self.check_array(schema, items, at, problems),
            Value::Object(map) => self.check_object(schema, map, at, problems),
            Value::Null | Value::Bool(_) => {}
        }
    }

    /// `anyOf`, `oneOf`, `allOf` and `not`; false when the value fails one of them (the
    /// problems are recorded, and the caller stops there).
    fn check_combinators(
        &self,
        schema: &Map<String, Value>,
        value: &Value,
        at: &mut String,
        problems: &mut Problems,
    ) -> bool {
        for key in ["anyOf", "oneOf"] {
            let Some(branches) = schema.get(key).and_then(Value::as_array) else {
                continue;
            };
            let mut first_failure = None;
            let mut passed = 0;
            for branch in branches {
                let mut local = Problems::default();
                self.check_at(branch, value, at, &mut local);
                if local.is_empty() {
                    passed += 1;
                    if key == "anyOf" {
                        break;
                    }
                } else if first_failure.is_none()
                    && !(value.is_null() || self.type_names(branch) == ["null"])
                {
                    first_failure = Some(local);
                }
            }
            match (passed, first_failure) {
                (1, _) => {}
                (0, Some(local)) => {
                    problems.absorb(local);
                    return false;
                }
                (0, None) => {
                    add(problems, at, || {
                        format!(
                            "Expected {}, received {}",
                            self.expected_types(schema),
                            json_type(value)
                        )
                    });
                    return false;
                }
                _ if key == "anyOf" => {}
                _ => {
                    add(problems, at, || {
                        "Input matches more than one of the allowed shapes".to_owned()
                    });
                    return false;
                }
            }
        }
        if let Some(branches) = schema.get("allOf").and_then(Value::as_array) {
            let before = problems.found();
            for branch in branches {
                self.check_at(branch, value, at, problems);
            }
            if problems.found() != before {
                return false;
            }
        }
        if let Some(excluded) = schema.get("not") {
            let mut local = Problems::default();
            self.check_at(excluded, value, at, &mut local);
            if local.is_empty() {
                add(problems, at, || "This value is not allowed".to_owned());
                return false;
            }
        }
        true
    }

    /// `type` (and OpenAPI's `nullable`); false on a mismatch.
    fn check_type(
        &self,
        schema: &Map<String, Value>,
        value: &Value,
        at: &str,
        problems: &mut Problems,
    ) -> bool {
        let mut types: Vec<&str> = match schema.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ => return true,
        };
        if schema.get("nullable") == Some(&Value::Bool(true)) {
            types.push("null");
        }
        let actual = json_type(value);
        if types
            .iter()
            .any(|t| *t == actual || (*t == "number" && actual == "integer"))
        {
            return true;
        }
        // Like zod, a client is told it sent a number, whatever its kind.
        let received = if actual == "integer" {
            "number"
        } else {
            actual
        };
        add(problems, at, || {
            format!("Expected {}, received {received}", types.join(" | "))
        });
        false
    }

    fn check_string(
        &self,
        schema: &Map<String, Value>,
        text: &str,
        at: &str,
        problems: &mut Problems,
    ) {
        let chars = text.chars().count() as u64;
        if let Some(min) = schema
            .get("minLength")
            .and_then(Value::as_u64)
            .filter(|m| chars < *m)
        {
            add(problems, at, || {
                format!("String must contain at least {min} character(s)")
            });
        }
        if let Some(max) = schema
            .get("maxLength")
            .and_then(Value::as_u64)
            .filter(|m| chars > *m)
        {
            add(problems, at, || {
                format!("String must contain at most {max} character(s)")
            });
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            // The audit compiled every pattern; a missing one fails rather than passes.
            let holds = self
                .patterns
                .get(pattern)
                .is_some_and(|regex| regex.is_match(text));
            if !holds {
                add(problems, at, || {
                    "Invalid string: must match pattern".to_owned()
                });
            }
        }
        if let Some(format) = schema.get("format").and_then(Value::as_str)
            && STRING_FORMATS.contains(&format)
            && !string_format_holds(format, text)
        {
            add(problems, at, || {
                match format {
                    "uri" => "Invalid url",
                    "date-time" => "Invalid datetime",
                    "ipv4" | "ipv6" | "ip" => "Invalid ip",
                    _ => return format!("Invalid {format}"),
                }
                .to_owned()
            });
        }
    }

    fn check_array(
        &self,
        schema: &Map<String, Value>,
        items: &[Value],
        at: &mut String,
        problems: &mut Problems,
    ) {
        let count = items.len() as u64;
        if let Some(min) = schema
            .get("minItems")
            .and_then(Value::as_u64)
            .filter(|m| count < *m)
        {
            add(problems, at, || {
                format!("Array must contain at least {min} element(s)")
            });
        }
        let max_items = schema.get("maxItems").and_then(Value::as_u64);
        if let Some(max) = max_items.filter(|m| count > *m) {
            add(problems, at, || {
                format!("Array must contain at most {max} element(s)")
            });
        }
        if schema.get("uniqueItems") == Some(&Value::Bool(true))
            && let Some((first, repeat)) = first_duplicate(items)
        {
            add(problems, at, || {
                format!("Array items must be unique: item {repeat} repeats item {first}")
            });
        }
        let prefix = schema
            .get("prefixItems")
            .and_then(Value::as_array)
            .map_or(&[][..], Vec::as_slice);
        let rest = schema.get("items");
        if rest == Some(&Value::Bool(false)) && items.len() > prefix.len() {
            // A closed tuple: one problem for the extra items, unless maxItems said it.
            if max_items.is_none_or(|max| max > prefix.len() as u64) {
                add(problems, at, || {
                    format!("Array must contain at most {} element(s)", prefix.len())
                });
            }
        }
        for (i, item) in items.iter().enumerate() {
            let item_schema = match prefix.get(i) {
                Some(schema) => schema,
                None => match rest {
                    Some(Value::Bool(false)) | None => continue,
                    Some(schema) => schema,
                },
            };
            let len = at.len();
            push_index(at, i);
            self.check_at(item_schema, item, at, problems);
            at.truncate(len);
        }
    }

    fn check_object(
        &self,
        schema: &Map<String, Value>,
        map: &Map<String, Value>,
        at: &mut String,
        problems: &mut Problems,
    ) {
        let count = map.len() as u64;
        if let Some(min) = schema
            .get("minProperties")
            .and_then(Value::as_u64)
            .filter(|m| count < *m)
        {
            add(problems, at, || {
                format!("Object must contain at least {min} key(s)")
            });
        }
        if let Some(max) = schema
            .get("maxProperties")
            .and_then(Value::as_u64)
            .filter(|m| count > *m)
        {
            add(problems, at, || {
                format!("Object must contain at most {max} key(s)")
            });
        }
        for name in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|name| !map.contains_key(*name))
        {
            let len = at.len();
            push_key(at, name, false);
            add(problems, at, || "Required".to_owned());
            at.truncate(len);
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        let pattern_properties = schema.get("patternProperties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let mut unknown_named: Vec<String> = Vec::new();
        let mut unknown_count = 0usize;
        for (key, child) in map {
            let len = at.len();
            if let Some(child_schema) = properties.and_then(|p| p.get(key)) {
                push_key(at, key, false);
                self.check_at(child_schema, child, at, problems);
                at.truncate(len);
                continue;
            }
            let mut matched = false;
            for (pattern, child_schema) in pattern_properties.into_iter().flatten() {
                if self
                    .patterns
                    .get(pattern)
                    .is_some_and(|regex| regex.is_match(key))
                {
                    matched = true;
                    push_key(at, key, true);
                    self.check_at(child_schema, child, at, problems);
                    at.truncate(len);
                }
            }
            match additional {
                _ if matched => {}
                None | Some(Value::Bool(true)) => {}
                Some(Value::Bool(false)) => {
                    unknown_count += 1;
                    if unknown_named.len() < UNKNOWN_KEYS_NAMED {
                        unknown_named.push(format!("'{}'", bounded(key)));
                    }
                }
                Some(child_schema) => {
                    push_key(at, key, true);
                    self.check_at(child_schema, child, at, problems);
                    at.truncate(len);
                }
            }
        }
        if unknown_count > 0 {
            add(problems, at, || {
                let mut message = format!(
                    "Unrecognized key(s) in object: {}",
                    unknown_named.join(", ")
                );
                let rest = unknown_count - unknown_named.len();
                if rest > 0 {
                    message.push_str(&format!(" and {rest} more"));
                }
                message
            });
        }
    }

    fn expected_types(&self, schema: &Map<String, Value>) -> String {
        let mut names = Vec::new();
        for key in ["anyOf", "oneOf"] {
            for branch in schema
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                names.extend(self.type_names(branch));
            }
        }
        if names.is_empty() {
            "a valid value".to_owned()
        } else {
            names.join(" | ")
        }
    }
}

static FALSE: Value = Value::Bool(false);

/// Records a problem at `at`; the message is only built while the lists have room.
fn add(problems: &mut Problems, at: &str, message: impl FnOnce() -> String) {
    if problems.is_full() {
        problems.count_omitted();
    } else if at.is_empty() {
        problems.form_problem(message());
    } else {
        problems.field(&field_name(at), at, message());
    }
}

/// `/items/0/name` as `items.0.name`.
pub(super) fn field_name(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

fn push_index(at: &mut String, index: usize) {
    use std::fmt::Write as _;
    let _ = write!(at, "/{index}");
}

/// Appends `/key`, escaped; a key that came from the client (`from_input`) is cut to a short
/// prefix so that a huge key cannot be repeated in every pointer below it.
fn push_key(at: &mut String, key: &str, from_input: bool) {
    at.push('/');
    let key = if from_input { bounded(key) } else { key.into() };
    for c in key.chars() {
        match c {
            '~' => at.push_str("~0"),
            '/' => at.push_str("~1"),
            c => at.push(c),
        }
    }
}

/// At most [`ECHO_CHARS`] characters of `text`, with `…` when cut.
pub(super) fn bounded(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(ECHO_CHARS) {
        None => text.into(),
        Some((end, _)) => format!("{}…", &text[..end]).into(),
    }
}

/// A value of the schema, quoted for a message.
fn quote_schema(value: &Value) -> String {
    match value {
        Value::String(s) => format!("'{s}'"),
        other => other.to_string(),
    }
}

/// A value the client sent, quoted for a message and cut to a short prefix; a large value is
/// never written out whole.
fn quote_input(value: &Value) -> String {
    match value {
        Value::String(s) => format!("'{}'", bounded(s)),
        other => {
            let mut capped = Capped(String::new());
            // Stops (with an error) once the text is long enough.
            let _ = serde_json::to_writer(&mut capped, other);
            bounded(&capped.0).into_owned()
        }
    }
}

/// A writer that takes a few bytes more than [`ECHO_CHARS`] characters can need, then
/// refuses.
struct Capped(String);

impl std::io::Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() > ECHO_CHARS * 4 {
            return Err(std::io::Error::other("long enough"));
        }
        self.0.push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A whole number as `i128`, when it is one.
fn integer(number: &Number) -> Option<i128> {
    number
        .as_i64()
        .map(i128::from)
        .or_else(|| number.as_u64().map(i128::from))
}

/// Compares numbers exactly when both are integers (no rounding through `f64`).
fn compare(a: &Number, b: &Number) -> Option<Ordering> {
    match (integer(a), integer(b)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// JSON equality: numbers by value (`1` equals `1.0`), objects whatever their key order.
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => compare(a, b) == Some(Ordering::Equal),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| json_equal(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, a)| b.get(key).is_some_and(|b| json_equal(a, b)))
        }
        (a, b) => a == b,
    }
}

/// A hash that agrees with [`json_equal`].
fn json_hash(value: &Value, state: &mut impl Hasher, keys: &RandomState) {
    match value {
        Value::Null => 0u8.hash(state),
        Value::Bool(b) => (1u8, b).hash(state),
        Value::Number(n) => {
            2u8.hash(state);
            match integer(n) {
                Some(i) => i.hash(state),
                // A float that is a whole number hashes as that integer.
                None => match n.as_f64() {
                    Some(x) if x.fract() == 0.0 && x.abs() < 1e38 => (x as i128).hash(state),
                    Some(x) => x.to_bits().hash(state),
                    None => {}
                },
            }
        }
        Value::String(s) => (3u8, s).hash(state),
        Value::Array(items) => {
            (4u8, items.len()).hash(state);
            for item in items {
                json_hash(item, state, keys);
            }
        }
        Value::Object(map) => {
            // Key order does not matter: combine the entries' hashes with a sum.
            let mut sum = 0u64;
            for (key, value) in map {
                let mut entry = keys.build_hasher();
                key.hash(&mut entry);
                json_hash(value, &mut entry, keys);
                sum = sum.wrapping_add(entry.finish());
            }
            (5u8, map.len(), sum).hash(state);
        }
    }
}

/// The first item that repeats an earlier one, as `(earlier, repeat)` indexes. Items are
/// hashed with keys drawn for this call (a client cannot aim at collisions) and sorted by
/// hash: `n log n` time and 16 bytes per item, however long the array.
fn first_duplicate(items: &[Value]) -> Option<(usize, usize)> {
    let keys = RandomState::new();
    let mut hashed: Vec<(u64, usize)> = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let mut hasher = keys.build_hasher();
            json_hash(item, &mut hasher, &keys);
            (hasher.finish(), i)
        })
        .collect();
    hashed.sort_unstable();
    let mut first: Option<(usize, usize)> = None;
    for group in hashed.chunk_by(|a, b| a.0 == b.0) {
        // Each group is in index order: the first repeat found is the group's earliest.
        for (k, &(_, repeat)) in group.iter().enumerate().skip(1) {
            if first.is_some_and(|(_, best)| best <= repeat) {
                break;
            }
            if let Some(&(_, earlier)) = group[..k]
                .iter()
                .find(|(_, earlier)| json_equal(&items[*earlier], &items[repeat]))
            {
                first = Some((earlier, repeat));
                break;
            }
        }
    }
    first
}

fn check_number(schema: &Map<String, Value>, number: &Number, at: &str, problems: &mut Problems) {
    let bound = |key: &str| match schema.get(key) {
        Some(Value::Number(bound)) => Some(bound),
        _ => None,
    };
    let below = |bound: &Number| compare(number, bound) == Some(Ordering::Less);
    let above = |bound: &Number| compare(number, bound) == Some(Ordering::Greater);
    if let Some(min) = bound("minimum").filter(|m| below(m)) {
        add(problems, at, || {
            format!("Number must be greater than or equal to {min}")
        });
    }
    if let Some(max) = bound("maximum").filter(|m| above(m)) {
        add(problems, at, || {
            format!("Number must be less than or equal to {max}")
        });
    }
    if let Some(min) = bound("exclusiveMinimum").filter(|m| !above(m)) {
        add(problems, at, || {
            format!("Number must be greater than {min}")
        });
    }
    if let Some(max) = bound("exclusiveMaximum").filter(|m| !below(m)) {
        add(problems, at, || format!("Number must be less than {max}"));
    }
    if let Some(step) = bound("multipleOf").filter(|step| !is_multiple(number, step)) {
        add(problems, at, || {
            format!("Number must be a multiple of {step}")
        });
    }
    if let Some(format) = schema.get("format").and_then(Value::as_str) {
        if let Some((min, max)) = integer_format_range(format) {
            match integer(number) {
                None => add(problems, at, || {
                    "Expected integer, received number".to_owned()
                }),
                Some(n) if n < min => add(problems, at, || {
                    format!("Number must be greater than or equal to {min}")
                }),
                Some(n) if n > max => add(problems, at, || {
                    format!("Number must be less than or equal to {max}")
                }),
                Some(_) => {}
            }
        } else if format == "float"
            && number
                .as_f64()
                .is_some_and(|x| x.abs() > f64::from(f32::MAX))
        {
            add(problems, at, || {
                format!("Number must be less than or equal to {}", f32::MAX)
            });
        }
    }
}

fn is_multiple(number: &Number, step: &Number) -> bool {
    if let (Some(n), Some(step)) = (integer(number), integer(step)) {
        return step != 0 && n % step == 0;
    }
    match (number.as_f64(), step.as_f64()) {
        (Some(x), Some(step)) if step > 0.0 => {
            let quotient = x / step;
            (quotient - quotient.round()).abs() <= 1e-9 * quotient.abs().max(1.0)
        }
        _ => false,
    }
}

/// The range of an integer `format` that schemars emits for Rust's integer types.
fn integer_format_range(format: &str) -> Option<(i128, i128)> {
    Some(match format {
        "int8" => (i8::MIN.into(), i8::MAX.into()),
        "int16" => (i16::MIN.into(), i16::MAX.into()),
        "int32" => (i32::MIN.into(), i32::MAX.into()),
        "int64" | "int" => (i64::MIN.into(), i64::MAX.into()),
        "int128" => (i128::MIN, i128::MAX),
        "uint8" => (0, u8::MAX.into()),
        "uint16" => (0, u16::MAX.into()),
        "uint32" => (0, u32::MAX.into()),
        "uint64" | "uint" => (0, u64::MAX.into()),
        "uint128" => (0, i128::MAX),
        _ => return None,
    })
}

/// Whether `text` is in string format `format` (one of [`STRING_FORMATS`]).
fn string_format_holds(format: &str, text: &str) -> bool {
    match format {
        "uuid" => is_uuid(text),
        "email" => is_email(text),
        "uri" => is_absolute_uri(text),
        "date-time" => is_date_time(text),
        "date" => is_full_date(text),
        "ipv4" => text.parse::<Ipv4Addr>().is_ok(),
        "ipv6" => text.parse::<Ipv6Addr>().is_ok(),
        "ip" => text.parse::<IpAddr>().is_ok(),
        _ => false,
    }
}

/// `8-4-4-4-12` hexadecimal digits (RFC 9562's string form).
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A practical subset of RFC 5322 addresses: a dot-atom local part of at most 64 characters,
/// one `@`, a domain of at least two LDH labels of at most 63 characters each (none starting
/// or ending with a hyphen), at most 254 characters in all. Quoted local parts, comments and
/// address literals are refused.
fn is_email(s: &str) -> bool {
    const ATEXT_SYMBOLS: &[u8] = b"!#$%&'*+-/=?^_`{|}~";
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let atom_char = |b: u8| b.is_ascii_alphanumeric() || ATEXT_SYMBOLS.contains(&b);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    s.len() <= 254
        && (1..=64).contains(&local.len())
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(atom_char))
        && domain.contains('.')
        && domain.split('.').all(label_ok)
}

/// An absolute URI (RFC 3986): a scheme, `:`, then only URI characters (no spaces), with
/// every `%` starting a two-digit escape.
fn is_absolute_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    let bytes = rest.as_bytes();
    let rest_ok = bytes.iter().enumerate().all(|(i, &b)| match b {
        b'%' => bytes
            .get(i + 1..i + 3)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)),
        b if b.is_ascii_alphanumeric() => true,
        b => b"-._~:/?#[]@!$&'()*+,;=".contains(&b),
    });
    scheme_ok && rest_ok
}

/// Parses `digits` ASCII digits at the start of `s`.
fn digits(s: &str, count: usize) -> Option<(u32, &str)> {
    let head = s.get(..count)?;
    if !head.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((head.parse().ok()?, &s[count..]))
}

/// RFC 3339 `full-date`: `YYYY-MM-DD`, a real day of a real month.
fn is_full_date(s: &str) -> bool {
    parse_full_date(s).is_some_and(str::is_empty)
}

fn parse_full_date(s: &str) -> Option<&str> {
    let (year, s) = digits(s, 4)?;
    let s = s.strip_prefix('-')?;
    let (month, s) = digits(s, 2)?;
    let s = s.strip_prefix('-')?;
    let (day, s) = digits(s, 2)?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (1..=days).contains(&day).then_some(s)
}

/// RFC 3339 `date-time`: `full-date "T" HH:MM:SS[.frac]` then `Z` or `±HH:MM`.
fn is_date_time(s: &str) -> bool {
    let time = || -> Option<()> {
        let s = parse_full_date(s)?;
        let s = s.strip_prefix(['T', 't'])?;
        let (hour, s) = digits(s, 2)?;
        let (minute, s) = digits(s.strip_prefix(':')?, 2)?;
        let (second, mut s) = digits(s.strip_prefix(':')?, 2)?;
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        if let Some(fraction) = s.strip_prefix('.') {
            let end = fraction
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(fraction.len());
            if end == 0 {
                return None;
            }
            s = &fraction[end..];
        }
        if s == "Z" || s == "z" {
            return Some(());
        }
        let s = s.strip_prefix(['+', '-'])?;
        let (offset_hour, s) = digits(s, 2)?;
        let (offset_minute, s) = digits(s.strip_prefix(':')?, 2)?;
        (offset_hour <= 23 && offset_minute <= 59 && s.is_empty()).then_some(())
    };
    time().is_some()
}

/// Looks up a local reference (`#`, `#/$defs/Name`) in `root`.
fn lookup<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let path = reference.strip_prefix('#')?;
    if path.is_empty() {
        return Some(root);
    }
    path.strip_prefix('/')?
        .split('/')
        .try_fold(root, |node, token| {
            let token = token.replace("~1", "/").replace("~0", "~");
            match node {
                Value::Object(map) => map.get(&token),
                Value::Array(items) => items.get(token.parse::<usize>().ok()?),
                _ => None,
            }
        })
}

/// Walks a schema to make sure each keyword is checked or only annotates, compiling patterns.
struct Audit<'a> {
    root: &'a Value,
    patterns: HashMap<String, Regex>,
    /// Pointers of the subschemas audited already (a `$ref` target may be met again).
    visited: HashSet<String>,
    /// `$ref` targets still to audit.
    pending: Vec<String>,
}

impl Audit<'_> {
    fn run(&mut self) -> Result<(), UnsupportedSchema> {
        self.schema(self.root, "")?;
        while let Some(target) = self.pending.pop() {
            if let Some(schema) = lookup(self.root, &format!("#{target}")) {
                self.schema(schema, &target)?;
            }
        }
        Ok(())
    }

    fn schema(&mut self, schema: &Value, at: &str) -> Result<(), UnsupportedSchema> {
        if !self.visited.insert(at.to_owned()) {
            return Ok(());
        }
        let map = match schema {
            Value::Bool(_) => return Ok(()),
            Value::Object(map) => map,
            _ => {
                return Err(refuse("(schema)", at, "is neither an object nor a boolean"));
            }
        };
        for (keyword, value) in map {
            let here = format!("{at}/{}", escape(keyword));
            let bad = |reason| refuse(keyword, &here, reason);
            match keyword.as_str() {
                k if ANNOTATIONS.contains(&k) => {}
                "$defs" | "definitions" | "properties" | "patternProperties" => {
                    let Some(children) = value.as_object() else {
                        return Err(bad("is not an object of schemas"));
                    };
                    for (name, child) in children {
                        if keyword == "patternProperties" {
                            self.compile(name).map_err(|()| {
                                bad("holds a pattern the regex crate cannot compile")
                            })?;
                        }
                        self.schema(child, &format!("{here}/{}", escape(name)))?;
                    }
                }
                "$ref" => {
                    let target = value
                        .as_str()
                        .filter(|r| lookup(self.root, r).is_some())
                        .ok_or_else(|| bad("is not a local reference that resolves"))?;
                    self.pending.push(target[1..].to_owned());
                }
                "anyOf" | "oneOf" | "allOf" | "prefixItems" => {
                    let branches = value
                        .as_array()
                        .filter(|b| !b.is_empty())
                        .ok_or_else(|| bad("is not a list of schemas"))?;
                    for (i, branch) in branches.iter().enumerate() {
                        self.schema(branch, &format!("{here}/{i}"))?;
                    }
                }
                "not" | "items" | "additionalProperties" => {
                    if !(value.is_object() || value.is_boolean()) {
                        return Err(bad("is not a schema"));
                    }
                    self.schema(value, &here)?;
                }
                "type" => {
                    const TYPES: [&str; 7] = [
                        "null", "boolean", "integer", "number", "string", "array", "object",
                    ];
                    let known = |t: &Value| t.as_str().is_some_and(|t| TYPES.contains(&t));
                    let ok = match value {
                        Value::Array(types) => types.iter().all(known),
                        single => known(single),
                    };
                    if !ok {
                        return Err(bad("names a type that does not exist"));
                    }
                }
                "enum" if !value.is_array() => return Err(bad("is not a list")),
                "enum" | "const" => {}
                "required" => {
                    let ok = value
                        .as_array()
                        .is_some_and(|names| names.iter().all(Value::is_string));
                    if !ok {
                        return Err(bad("is not a list of names"));
                    }
                }
                "minLength" | "maxLength" | "minItems" | "maxItems" | "minProperties"
                | "maxProperties" => {
                    if !value.is_u64() {
                        return Err(bad("is not a whole number"));
                    }
                }
                "minimum" | "maximum" | "exclusiveMinimum" | "exclusiveMaximum" => {
                    if !value.is_number() {
                        return Err(bad("is not a number"));
                    }
                }
                "multipleOf" => {
                    if !value.as_f64().is_some_and(|step| step > 0.0) {
                        return Err(bad("is not a positive number"));
                    }
                }
                "uniqueItems" | "nullable" => {
                    if !value.is_boolean() {
                        return Err(bad("is not a boolean"));
                    }
                }
                "pattern" => {
                    let pattern = value.as_str().ok_or_else(|| bad("is not a string"))?;
                    self.compile(pattern)
                        .map_err(|()| bad("holds a pattern the regex crate cannot compile"))?;
                }
                "format" => {
                    let known = value.as_str().is_some_and(|format| {
                        STRING_FORMATS.contains(&format)
                            || integer_format_range(format).is_some()
                            || format == "float"
                            || format == "double"
                    });
                    if !known {
                        return Err(bad("names a format the checker does not know"));
                    }
                }
                _ => return Err(bad("is not one the checker implements")),
            }
        }
        Ok(())
    }

    fn compile(&mut self, pattern: &str) -> Result<(), ()> {
        if !self.patterns.contains_key(pattern) {
            let regex = Regex::new(pattern).map_err(|_| ())?;
            self.patterns.insert(pattern.to_owned(), regex);
        }
        Ok(())
    }
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn refuse(keyword: &str, pointer: &str, reason: &'static str) -> UnsupportedSchema {
    UnsupportedSchema {
        keyword: keyword.to_owned(),
        pointer: pointer.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// `(pointer, message)` for each problem; form problems have the empty pointer.
    fn problems_of(schema: &Value, value: &Value) -> Vec<(String, String)> {
        let compiled = CompiledSchema::new(schema.clone());
        if let Err(unsupported) = compiled.supported() {
            panic!("{schema} should be supported: {unsupported}");
        }
        let problems = compiled.check(value);
        assert_eq!(problems.omitted(), 0, "{schema} {value}");
        let form = problems.form.iter().map(|m| (String::new(), m.clone()));
        let fields = problems
            .fields
            .iter()
            .map(|(_, p, m)| (p.clone(), m.clone()));
        form.chain(fields).collect()
    }

    /// A row: its name, the schema, the value, the `(pointer, message)` problems expected.
    type Row = (
        &'static str,
        Value,
        Value,
        Vec<(&'static str, &'static str)>,
    );

    /// One row per keyword and case.
    #[test]
    fn each_keyword_reports_exactly_its_problems() {
        let long = "x".repeat(100);
        let rows: Vec<Row> = vec![
            // type
            ("type ok", json!({"type": "string"}), json!("a"), vec![]),
            (
                "type mismatch",
                json!({"type": "string"}),
                json!(5),
                vec![("", "Expected string, received number")],
            ),
            (
                "number takes an integer",
                json!({"type": "number"}),
                json!(5),
                vec![],
            ),
            (
                "integer refuses a fraction",
                json!({"type": "integer"}),
                json!(1.5),
                vec![("", "Expected integer, received number")],
            ),
            (
                "type list",
                json!({"type": ["string", "null"]}),
                json!(null),
                vec![],
            ),
            (
                "type list mismatch",
                json!({"type": ["string", "null"]}),
                json!(true),
                vec![("", "Expected string | null, received boolean")],
            ),
            (
                "nullable",
                json!({"type": "string", "nullable": true}),
                json!(null),
                vec![],
            ),
            (
                "not nullable",
                json!({"type": "string", "nullable": false}),
                json!(null),
                vec![("", "Expected string, received null")],
            ),
            // enum and const
            ("enum ok", json!({"enum": ["a", "b"]}), json!("b"), vec![]),
            (
                "enum compares numbers by value",
                json!({"enum": [1]}),
                json!(1.0),
                vec![],
            ),
            (
                "enum mismatch",
                json!({"enum": ["a", "b"]}),
                json!("c"),
                vec![("", "Invalid enum value. Expected 'a' | 'b', got 'c'.")],
            ),
            (
                "enum echoes a short prefix of a long string",
                json!({"enum": ["a"]}),
                json!(long),
                vec![(
                    "",
                    "Invalid enum value. Expected 'a', got 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…'.",
                )],
            ),
            (
                "enum echoes a short prefix of a large value",
                json!({"enum": ["a"]}),
                json!([long, long]),
                vec![(
                    "",
                    "Invalid enum value. Expected 'a', got [\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx….",
                )],
            ),
            ("const ok", json!({"const": "a"}), json!("a"), vec![]),
            (
                "const mismatch",
                json!({"const": "a"}),
                json!("b"),
                vec![("", "Invalid literal value, expected 'a'")],
            ),
            // anyOf, oneOf, allOf, not
            (
                "anyOf passes on any branch",
                json!({"anyOf": [{"type": "string"}, {"type": "null"}]}),
                json!(null),
                vec![],
            ),
            (
                "anyOf reports the first non-null branch",
                json!({"anyOf": [{"type": "string", "minLength": 2}, {"type": "null"}]}),
                json!("a"),
                vec![("", "String must contain at least 2 character(s)")],
            ),
            (
                "anyOf with no branch that fits",
                json!({"anyOf": [{"type": "null"}]}),
                json!(1),
                vec![("", "Expected null, received integer")],
            ),
            (
                "anyOf siblings are checked too",
                json!({"anyOf": [{"type": "string"}, {"type": "integer"}], "minLength": 3}),
                json!("ab"),
                vec![("", "String must contain at least 3 character(s)")],
            ),
            (
                "oneOf with exactly one match",
                json!({"oneOf": [{"type": "string"}, {"type": "integer"}]}),
                json!(3),
                vec![],
            ),
            (
                "oneOf with two matches",
                json!({"oneOf": [{"type": "number"}, {"type": "integer"}]}),
                json!(3),
                vec![("", "Input matches more than one of the allowed shapes")],
            ),
            (
                "oneOf with none",
                json!({"oneOf": [{"type": "string"}, {"type": "integer"}]}),
                json!(true),
                vec![("", "Expected string, received boolean")],
            ),
            (
                "allOf checks every branch",
                json!({"allOf": [{"minLength": 2}, {"maxLength": 1}]}),
                json!("abc"),
                vec![("", "String must contain at most 1 character(s)")],
            ),
            (
                "allOf passes",
                json!({"allOf": [{"type": "string"}, {"minLength": 1}]}),
                json!("a"),
                vec![],
            ),
            (
                "not refuses what matches",
                json!({"type": "integer", "not": {"const": 0}}),
                json!(0),
                vec![("", "This value is not allowed")],
            ),
            (
                "not lets the rest through",
                json!({"not": {"const": 0}}),
                json!(1),
                vec![],
            ),
            // boolean schemas
            ("true schema", json!(true), json!({"any": 1}), vec![]),
            (
                "false schema",
                json!(false),
                json!(1),
                vec![("", "This value is not allowed")],
            ),
            // $ref
            (
                "$ref is followed",
                json!({"$ref": "#/$defs/Name", "$defs": {"Name": {"type": "string"}}}),
                json!(1),
                vec![("", "Expected string, received number")],
            ),
            (
                "$ref siblings are checked",
                json!({"$ref": "#/$defs/N", "minimum": 5, "$defs": {"N": {"type": "integer"}}}),
                json!(3),
                vec![("", "Number must be greater than or equal to 5")],
            ),
            // objects
            (
                "properties and required",
                json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "b"]}),
                json!({"a": 1}),
                vec![
                    ("/b", "Required"),
                    ("/a", "Expected string, received number"),
                ],
            ),
            (
                "additionalProperties false",
                json!({"type": "object", "properties": {"a": {}}, "additionalProperties": false}),
                json!({"a": 1, "b": 2, "c": 3}),
                vec![("", "Unrecognized key(s) in object: 'b', 'c'")],
            ),
            (
                "additionalProperties false names five keys and a short prefix of each",
                json!({"type": "object", "additionalProperties": false}),
                json!({"a": 1, "b": 1, "c": 1, "d": 1, long.clone(): 1, "f": 1, "g": 1}),
                vec![(
                    "",
                    "Unrecognized key(s) in object: 'a', 'b', 'c', 'd', \
                     'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…' and 2 more",
                )],
            ),
            (
                "additionalProperties as a schema checks every value",
                json!({"type": "object", "additionalProperties": {"type": "integer"}}),
                json!({"a": 1, "b/c": "x"}),
                vec![("/b~1c", "Expected integer, received string")],
            ),
            (
                "a long map key is cut in the pointer",
                json!({"type": "object", "additionalProperties": {"type": "integer"}}),
                json!({long: "x"}),
                vec![(
                    "/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx…",
                    "Expected integer, received string",
                )],
            ),
            (
                "patternProperties",
                json!({"type": "object", "patternProperties": {"^\\d+$": {"type": "string"}}, "additionalProperties": false}),
                json!({"1": "a", "2": 2, "x": "a"}),
                vec![
                    ("", "Unrecognized key(s) in object: 'x'"),
                    ("/2", "Expected string, received number"),
                ],
            ),
            (
                "minProperties",
                json!({"type": "object", "minProperties": 2}),
                json!({"a": 1}),
                vec![("", "Object must contain at least 2 key(s)")],
            ),
            (
                "maxProperties",
                json!({"type": "object", "maxProperties": 1}),
                json!({"a": 1, "b": 2}),
                vec![("", "Object must contain at most 1 key(s)")],
            ),
            // arrays
            (
                "items",
                json!({"type": "array", "items": {"type": "string"}}),
                json!(["a", 1, "b", true]),
                vec![
                    ("/1", "Expected string, received number"),
                    ("/3", "Expected string, received boolean"),
                ],
            ),
            (
                "prefixItems and closed items",
                json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": false}),
                json!([1, 2, 3]),
                vec![
                    ("", "Array must contain at most 2 element(s)"),
                    ("/0", "Expected string, received number"),
                ],
            ),
            (
                "closed items with maxItems says it once",
                json!({"type": "array", "prefixItems": [{}], "items": false, "maxItems": 1}),
                json!([1, 2]),
                vec![("", "Array must contain at most 1 element(s)")],
            ),
            (
                "minItems",
                json!({"type": "array", "minItems": 1}),
                json!([]),
                vec![("", "Array must contain at least 1 element(s)")],
            ),
            (
                "maxItems",
                json!({"type": "array", "maxItems": 1}),
                json!([1, 2]),
                vec![("", "Array must contain at most 1 element(s)")],
            ),
            (
                "uniqueItems",
                json!({"type": "array", "uniqueItems": true}),
                json!([{"a": 1, "b": 2}, 1, {"b": 2, "a": 1.0}]),
                vec![("", "Array items must be unique: item 2 repeats item 0")],
            ),
            (
                "uniqueItems ok",
                json!({"type": "array", "uniqueItems": true}),
                json!([1, "1", [1], {"a": 1}, {"a": 2}]),
                vec![],
            ),
            // strings
            (
                "minLength counts characters",
                json!({"type": "string", "minLength": 2}),
                json!("é"),
                vec![("", "String must contain at least 2 character(s)")],
            ),
            (
                "maxLength counts characters",
                json!({"maxLength": 2}),
                json!("éé"),
                vec![],
            ),
            (
                "maxLength",
                json!({"maxLength": 2}),
                json!("abc"),
                vec![("", "String must contain at most 2 character(s)")],
            ),
            (
                "pattern is unanchored",
                json!({"pattern": "b+"}),
                json!("abbc"),
                vec![],
            ),
            (
                "pattern mismatch",
                json!({"pattern": "^[a-z]+$"}),
                json!("abc1"),
                vec![("", "Invalid string: must match pattern")],
            ),
            // string formats
            (
                "uuid",
                json!({"format": "uuid"}),
                json!("67e55044-10b1-426f-9247-bb680e5fe0c8"),
                vec![],
            ),
            (
                "bad uuid",
                json!({"format": "uuid"}),
                json!("67e55044"),
                vec![("", "Invalid uuid")],
            ),
            (
                "email",
                json!({"format": "email"}),
                json!("ada@example.com"),
                vec![],
            ),
            (
                "bad email",
                json!({"format": "email"}),
                json!("ada@"),
                vec![("", "Invalid email")],
            ),
            (
                "uri",
                json!({"format": "uri"}),
                json!("urn:isbn:0451450523"),
                vec![],
            ),
            (
                "bad uri",
                json!({"format": "uri"}),
                json!("/relative"),
                vec![("", "Invalid url")],
            ),
            (
                "date-time",
                json!({"format": "date-time"}),
                json!("2026-11-28T23:59:60.5+01:00"),
                vec![],
            ),
            (
                "bad date-time",
                json!({"format": "date-time"}),
                json!("2026-11-28 23:59"),
                vec![("", "Invalid datetime")],
            ),
            (
                "date",
                json!({"format": "date"}),
                json!("2024-02-29"),
                vec![],
            ),
            (
                "bad date",
                json!({"format": "date"}),
                json!("2023-02-29"),
                vec![("", "Invalid date")],
            ),
            (
                "ipv4",
                json!({"format": "ipv4"}),
                json!("192.0.2.1"),
                vec![],
            ),
            (
                "bad ipv4",
                json!({"format": "ipv4"}),
                json!("::1"),
                vec![("", "Invalid ip")],
            ),
            (
                "ipv6",
                json!({"format": "ipv6"}),
                json!("2001:db8::1"),
                vec![],
            ),
            (
                "bad ipv6",
                json!({"format": "ipv6"}),
                json!("192.0.2.1"),
                vec![("", "Invalid ip")],
            ),
            ("ip", json!({"format": "ip"}), json!("::1"), vec![]),
            (
                "bad ip",
                json!({"format": "ip"}),
                json!("localhost"),
                vec![("", "Invalid ip")],
            ),
            (
                "a format applies to strings only",
                json!({"format": "email"}),
                json!(5),
                vec![],
            ),
            // numbers
            (
                "minimum",
                json!({"minimum": 1}),
                json!(0),
                vec![("", "Number must be greater than or equal to 1")],
            ),
            (
                "maximum",
                json!({"maximum": 1.5}),
                json!(2),
                vec![("", "Number must be less than or equal to 1.5")],
            ),
            (
                "maximum compares large integers exactly",
                json!({"maximum": 9_007_199_254_740_992_u64}),
                json!(9_007_199_254_740_993_u64),
                vec![("", "Number must be less than or equal to 9007199254740992")],
            ),
            (
                "bounds included",
                json!({"minimum": 1, "maximum": 1}),
                json!(1),
                vec![],
            ),
            (
                "exclusiveMinimum",
                json!({"exclusiveMinimum": 1}),
                json!(1),
                vec![("", "Number must be greater than 1")],
            ),
            (
                "exclusiveMaximum",
                json!({"exclusiveMaximum": 1}),
                json!(1.0),
                vec![("", "Number must be less than 1")],
            ),
            (
                "multipleOf integer",
                json!({"multipleOf": 3}),
                json!(9),
                vec![],
            ),
            (
                "not a multipleOf",
                json!({"multipleOf": 3}),
                json!(10),
                vec![("", "Number must be a multiple of 3")],
            ),
            (
                "multipleOf fraction",
                json!({"multipleOf": 0.1}),
                json!(0.3),
                vec![],
            ),
            (
                "not a multipleOf fraction",
                json!({"multipleOf": 0.25}),
                json!(0.3),
                vec![("", "Number must be a multiple of 0.25")],
            ),
            // numeric formats
            (
                "uint8 range",
                json!({"type": "integer", "format": "uint8"}),
                json!(256),
                vec![("", "Number must be less than or equal to 255")],
            ),
            (
                "uint32 is not negative",
                json!({"type": "integer", "format": "uint32"}),
                json!(-1),
                vec![("", "Number must be greater than or equal to 0")],
            ),
            (
                "int32 range",
                json!({"type": "integer", "format": "int32"}),
                json!(2_147_483_648_i64),
                vec![("", "Number must be less than or equal to 2147483647")],
            ),
            (
                "an integer format refuses a fraction",
                json!({"format": "int64"}),
                json!(1.5),
                vec![("", "Expected integer, received number")],
            ),
            (
                "float range",
                json!({"type": "number", "format": "float"}),
                json!(1e39),
                vec![(
                    "",
                    "Number must be less than or equal to 340282350000000000000000000000000000000",
                )],
            ),
            (
                "double takes any number",
                json!({"type": "number", "format": "double"}),
                json!(1e300),
                vec![],
            ),
        ];
        for (name, schema, value, expected) in rows {
            let expected: Vec<(String, String)> = expected
                .into_iter()
                .map(|(p, m)| (p.to_owned(), m.to_owned()))
                .collect();
            assert_eq!(problems_of(&schema, &value), expected, "row: {name}");
        }
    }

    /// Keywords and keyword values the checker cannot honour, with where they are reported.
    #[test]
    fn a_rule_that_cannot_be_checked_makes_the_schema_unsupported() {
        let rows: Vec<(Value, &str, &str)> = vec![
            (json!({"if": {"type": "string"}}), "if", "/if"),
            (
                json!({"properties": {"a": {"contains": {}}}}),
                "contains",
                "/properties/a/contains",
            ),
            (
                json!({"unevaluatedProperties": false}),
                "unevaluatedProperties",
                "/unevaluatedProperties",
            ),
            (
                json!({"propertyNames": {"maxLength": 3}}),
                "propertyNames",
                "/propertyNames",
            ),
            (json!({"format": "hostname"}), "format", "/format"),
            (json!({"pattern": "^(?!admin)"}), "pattern", "/pattern"),
            (
                json!({"patternProperties": {"(": {}}}),
                "patternProperties",
                "/patternProperties",
            ),
            (
                json!({"$ref": "https://example.com/schema"}),
                "$ref",
                "/$ref",
            ),
            (json!({"$ref": "#/$defs/Missing"}), "$ref", "/$ref"),
            (json!({"items": [{}]}), "items", "/items"),
            (
                json!({"exclusiveMinimum": true}),
                "exclusiveMinimum",
                "/exclusiveMinimum",
            ),
            (json!({"type": "text"}), "type", "/type"),
            (json!({"minLength": -1}), "minLength", "/minLength"),
            (json!({"multipleOf": 0}), "multipleOf", "/multipleOf"),
            (json!({"anyOf": []}), "anyOf", "/anyOf"),
            (
                json!({"$defs": {"a/b": {"x-custom": 1}}}),
                "x-custom",
                "/$defs/a~1b/x-custom",
            ),
            (
                json!({"$ref": "#/$defs/A", "$defs": {"A": {"items": {"dependentRequired": {}}}}}),
                "dependentRequired",
                "/$defs/A/items/dependentRequired",
            ),
        ];
        for (schema, keyword, pointer) in rows {
            let compiled = CompiledSchema::new(schema.clone());
            let Err(unsupported) = compiled.supported() else {
                panic!("{schema} should be unsupported");
            };
            assert_eq!(
                (unsupported.keyword(), unsupported.pointer()),
                (keyword, pointer),
                "{schema}"
            );
            assert!(unsupported.to_string().contains(keyword));
        }
    }

    #[test]
    fn annotations_validate_nothing() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "x", "$comment": "c", "title": "T", "description": "D", "default": 1,
            "examples": [1], "example": 1, "deprecated": true, "readOnly": true,
            "writeOnly": false, "definitions": {}, "$defs": {}
        });
        assert_eq!(problems_of(&schema, &json!({"anything": [1, "2"]})), vec![]);
    }

    #[test]
    fn a_pattern_is_compiled_once_per_schema() {
        let schema = json!({"properties": {
            "a": {"pattern": "^x"}, "b": {"pattern": "^x"}, "c": {"pattern": "^y"}
        }});
        assert_eq!(CompiledSchema::new(schema).patterns.len(), 2);
    }

    #[test]
    fn problems_past_the_cap_are_counted_not_built() {
        let schema = json!({"type": "array", "items": {"type": "string"}});
        let problems = CompiledSchema::new(schema).check(&json!(vec![0; 250]));
        assert_eq!(problems.fields.len(), Problems::MAX_LISTED);
        assert_eq!(problems.omitted(), 150);
    }

    #[test]
    fn emails() {
        let local64 = format!("{}@example.com", "a".repeat(64));
        let label63 = format!("ada@{}.com", "a".repeat(63));
        let total254 = format!(
            "ada@{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(58)
        );
        assert_eq!(total254.len(), 254);
        let valid = [
            "ada@example.com",
            "a.b.c@example.co.uk",
            "first+tag@sub-domain.example",
            "!#$%&'*+-/=?^_`{|}~@example.com",
            "x@a.b",
            "1@123.example",
            local64.as_str(),
            label63.as_str(),
            total254.as_str(),
        ];
        for address in valid {
            assert!(is_email(address), "{address} should be valid");
        }
        let local65 = format!("{}@example.com", "a".repeat(65));
        let label64 = format!("ada@{}.com", "a".repeat(64));
        let total255 = format!("{total254}d");
        let invalid = [
            "",
            "plain",
            "@example.com",
            "ada@",
            "ada@@example.com",
            "ada@b@example.com",
            "ada@localhost",
            ".ada@example.com",
            "ada.@example.com",
            "a..da@example.com",
            "ada@.example.com",
            "ada@example.com.",
            "ada@example..com",
            "ada@-example.com",
            "ada@example-.com",
            "ada@exa_mple.com",
            "a da@example.com",
            "\"ada\"@example.com",
            "ada(comment)@example.com",
            "ada@[192.0.2.1]",
            "adé@example.com",
            "ada@exämple.com",
            local65.as_str(),
            label64.as_str(),
            total255.as_str(),
        ];
        for address in invalid {
            assert!(!is_email(address), "{address} should be invalid");
        }
    }

    #[test]
    fn the_earliest_repeat_is_reported() {
        let items: Vec<Value> = [3, 1, 2, 1, 3].into_iter().map(Value::from).collect();
        assert_eq!(first_duplicate(&items), Some((1, 3)));
        let mixed = vec![
            json!(1),
            json!({"a": [1, 2]}),
            json!(1.5),
            json!({"a": [1, 2.0]}),
        ];
        assert_eq!(first_duplicate(&mixed), Some((1, 3)));
        let distinct: Vec<Value> = (0..100_000).map(Value::from).collect();
        assert_eq!(first_duplicate(&distinct), None);
    }

    #[test]
    fn uuids() {
        for text in [
            "67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67E55044-10B1-426F-9247-BB680E5FE0C8",
            "00000000-0000-0000-0000-000000000000",
        ] {
            assert!(is_uuid(text), "{text} should be valid");
        }
        for text in [
            "",
            "67e5504410b1426f9247bb680e5fe0c8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb680e5fe0c",
            "67e55044-10b1-426f-9247-bb680e5fe0c8a",
            "67e5504-410b1-426f-9247-bb680e5fe0c8",
            "g7e55044-10b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb68-0e5fe0c8",
        ] {
            assert!(!is_uuid(text), "{text} should be invalid");
        }
    }

    #[test]
    fn uris() {
        for uri in [
            "https://example.com/a?b=c#d",
            "mailto:ada@example.com",
            "urn:isbn:0451450523",
            "a+b-c.d:",
            "http://example.com/%20x",
            "http://[2001:db8::1]:80/",
        ] {
            assert!(is_absolute_uri(uri), "{uri} should be valid");
        }
        for uri in [
            "",
            "example.com",
            "/path",
            "//example.com",
            "1http://example.com",
            "ht tp://example.com",
            "http://exa mple.com",
            "http://example.com/%2",
            "http://example.com/%zz",
            "http://example.com/<x>",
            "http://exämple.com",
            ":no-scheme",
        ] {
            assert!(!is_absolute_uri(uri), "{uri} should be invalid");
        }
    }

    #[test]
    fn date_times() {
        for text in [
            "2026-11-28T23:55:00Z",
            "2026-11-28t23:55:00z",
            "2026-11-28T23:55:00.123456+05:30",
            "2024-02-29T00:00:00-00:00",
            "2016-12-31T23:59:60Z",
        ] {
            assert!(is_date_time(text), "{text} should be valid");
        }
        for text in [
            "2026-11-28",
            "2026-11-28T23:55:00",
            "2026-11-28 23:55:00Z",
            "2026-11-28T24:00:00Z",
            "2026-11-28T23:60:00Z",
            "2026-11-28T23:55:61Z",
            "2026-13-01T00:00:00Z",
            "2026-04-31T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2026-11-28T23:55:00.Z",
            "2026-11-28T23:55:00+0530",
            "2026-11-28T23:55:00+24:00",
            "26-11-28T23:55:00Z",
            "2026-11-28T23:55:00Zjunk",
        ] {
            assert!(!is_date_time(text), "{text} should be invalid");
        }
    }

    proptest::proptest! {
        #[test]
        fn every_real_date_time_is_accepted(
            year in 0u32..10000, month in 1u32..13, day in 1u32..29,
            hour in 0u32..24, minute in 0u32..60, second in 0u32..61,
            fraction in proptest::option::of(0u32..1_000_000),
            offset in proptest::option::of((proptest::bool::ANY, 0u32..24, 0u32..60)),
        ) {
            let mut text = format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}");
            if let Some(fraction) = fraction {
                text.push_str(&format!(".{fraction}"));
            }
            match offset {
                None => text.push('Z'),
                Some((east, h, m)) => text.push_str(&format!("{}{h:02}:{m:02}", if east { '+' } else { '-' })),
            }
            proptest::prop_assert!(is_date_time(&text), "{}", text);
        }

        #[test]
        fn the_format_checks_never_panic(text in "\\PC{0,80}") {
            for format in STRING_FORMATS {
                let _ = string_format_holds(format, &text);
            }
        }

        #[test]
        fn an_address_built_from_the_grammar_is_accepted(
            local in "[a-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(\\.[a-z0-9_-]{1,10}){0,3}",
            labels in proptest::collection::vec("[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", 2..5),
        ) {
            let address = format!("{local}@{}", labels.join("."));
            proptest::prop_assert!(is_email(&address), "{}", address);
        }
    }
}
