//! Drop-in extractors whose every rejection is a catalog error.
//!
//! [`Json`] checks the content type and the size, tells malformed JSON from JSON that fails the
//! schema, and collects **every** problem of the body, not only the first. The schema comes from
//! `schemars::JsonSchema` (derive it next to `Deserialize`); rules beyond types (`length`,
//! `range`, `email`, `url`, `pattern`, whether written as `#[schemars(...)]` or as
//! `#[garde(...)]`, which schemars also reads) are checked from the same schema, so they land
//! in the same details. [`ValidJson`] (feature `garde`) then runs garde's own rules, custom
//! ones included, and reports them in the same shape.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use faultline::Situation;
use faultline::details::Size;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::contract::{Error, Problems};
use crate::layer::{BodyLimit, DEFAULT_BODY_LIMIT};

/// A JSON body, validated against `T`'s schema. Rejections: unsupported media type, payload too
/// large, malformed JSON, validation failed (with every field problem).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned + JsonSchema + 'static,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Error> {
        let value = read_json(request).await?;
        from_value(value, Situation::ValidationFailed).map(Json)
    }
}

/// A JSON body checked against `T`'s schema, then against its garde rules (feature `garde`).
///
/// Both stages report in the same details shape, so a client cannot tell which library found
/// a problem. Type and schema problems (wrong types, missing fields, `length`/`range`/`format`
/// in the schema) are all collected first; garde's rules run on a body that has the right
/// shape, and all of their violations are collected too.
#[cfg(feature = "garde")]
#[derive(Debug, Clone, Copy, Default)]
pub struct ValidJson<T>(pub T);

#[cfg(feature = "garde")]
impl<T, S> FromRequest<S> for ValidJson<T>
where
    T: DeserializeOwned + JsonSchema + garde::Validate + 'static,
    T::Context: Default,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Error> {
        let value = read_json(request).await?;
        let input: T = from_value(value, Situation::ValidationFailed)?;
        if let Err(report) = input.validate() {
            let mut problems = Problems::default();
            for (path, error) in report.iter() {
                let pointer = garde_pointer(&path.to_string());
                if pointer.is_empty() {
                    problems.form.push(error.message().to_owned());
                } else {
                    problems.field(&field_name(&pointer), &pointer, error.message());
                }
            }
            return Err(Error::invalid(Situation::ValidationFailed, problems));
        }
        Ok(ValidJson(input))
    }
}

/// garde's path (`items[0].name`) as a JSON pointer (`/items/0/name`).
#[cfg(feature = "garde")]
fn garde_pointer(path: &str) -> String {
    path.replace('[', ".")
        .replace(']', "")
        .split('.')
        .filter(|part| !part.is_empty())
        .fold(String::new(), |mut pointer, part| {
            pointer.push('/');
            pointer.push_str(&part.replace('~', "~0").replace('/', "~1"));
            pointer
        })
}

/// Reads a JSON body: content type, size (declared or streamed), syntax.
async fn read_json(request: Request) -> Result<Value, Error> {
    let is_json = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| mime.trim().to_ascii_lowercase())
        .is_some_and(|mime| {
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
    if !is_json {
        return Err(Error::bound(Situation::UnsupportedMediaType));
    }
    let limit = request
        .extensions()
        .get::<BodyLimit>()
        .map_or(DEFAULT_BODY_LIMIT, |l| l.0);
    let declared = request
        .headers()
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
    let bytes = match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(too_large(None));
        }
        Err(_) => return Err(Error::bound(Situation::MalformedJson)),
    };
    serde_json::from_slice(&bytes).map_err(|_| Error::bound(Situation::MalformedJson))
}

/// A query string, validated against `T`'s schema; numbers and booleans are read from text.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned + JsonSchema + 'static,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        let query = parts.uri.query().unwrap_or_default();
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).map_err(|_| {
            let mut problems = Problems::default();
            problems
                .form
                .push("The query string could not be decoded.".to_owned());
            Error::invalid(Situation::InvalidQuery, problems)
        })?;
        let schema = schema_of::<T>();
        let mut object = Map::new();
        for (key, text) in pairs {
            let expected = property_schema(&schema, &key);
            object.insert(key, coerce(&schema, expected, text));
        }
        from_value(Value::Object(object), Situation::InvalidQuery).map(Query)
    }
}

/// Path parameters; a value that does not parse (e.g. an id that is not a UUID) is the
/// catalog's invalid path id.
#[derive(Debug, Clone, Copy, Default)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|_| Error::bound(Situation::InvalidPathId))
    }
}

fn from_value<T: DeserializeOwned + JsonSchema + 'static>(
    value: Value,
    situation: Situation,
) -> Result<T, Error> {
    let schema = schema_of::<T>();
    let mut problems = Problems::default();
    check(&schema, &schema, &value, "", &mut problems);
    if !problems.is_empty() {
        return Err(Error::invalid(situation, problems));
    }
    serde_json::from_value(value).map_err(|_| {
        // The schema accepted what serde refused (a custom deserializer): say so without
        // echoing serde's text, which can name Rust types.
        let mut problems = Problems::default();
        problems
            .form
            .push("The input does not have the expected shape.".to_owned());
        Error::invalid(situation, problems)
    })
}

/// The JSON schema of `T`, generated once per type.
fn schema_of<T: JsonSchema + 'static>() -> Arc<Value> {
    static CACHE: OnceLock<RwLock<HashMap<TypeId, Arc<Value>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let id = TypeId::of::<T>();
    if let Some(schema) = cache.read().unwrap_or_else(|e| e.into_inner()).get(&id) {
        return Arc::clone(schema);
    }
    let schema = Arc::new(schemars::schema_for!(T).to_value());
    cache
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, Arc::clone(&schema));
    schema
}

/// Follows a local `$ref` (`#/$defs/Name`).
fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    match schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/"))
    {
        Some(path) => path
            .split('/')
            .try_fold(root, |node, key| node.get(key))
            .unwrap_or(schema),
        None => schema,
    }
}

fn property_schema<'a>(root: &'a Value, key: &str) -> Option<&'a Value> {
    resolve(root, root)
        .get("properties")
        .and_then(|p| p.get(key))
        .map(|s| resolve(root, s))
}

/// Reads a query value as the type its schema expects, leaving it a string when it is not one.
fn coerce(root: &Value, schema: Option<&Value>, text: String) -> Value {
    let types = schema.map(|s| type_names(root, s)).unwrap_or_default();
    if types.contains(&"integer") {
        if let Ok(n) = text.parse::<i64>() {
            return Value::from(n);
        }
    } else if types.contains(&"number") {
        if let Some(n) = text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
        {
            return Value::Number(n);
        }
    } else if types.contains(&"boolean") {
        match text.as_str() {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
    }
    Value::String(text)
}

fn type_names<'a>(root: &'a Value, schema: &'a Value) -> Vec<&'a str> {
    let schema = resolve(root, schema);
    let mut out: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    for key in ["anyOf", "oneOf"] {
        for branch in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.extend(type_names(root, branch));
        }
    }
    out
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

fn field_name(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

/// Checks `value` against `schema`, recording every problem under `pointer`.
fn check(root: &Value, schema: &Value, value: &Value, pointer: &str, problems: &mut Problems) {
    let schema = resolve(root, schema);
    let mut add = |message: String| {
        if pointer.is_empty() {
            problems.form.push(message);
        } else {
            problems.field(&field_name(pointer), pointer, message);
        }
    };

    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = schema.get(key).and_then(Value::as_array) {
            let mut first_failure = None;
            for branch in branches {
                let mut local = Problems::default();
                check(root, branch, value, pointer, &mut local);
                if local.is_empty() {
                    return;
                }
                if first_failure.is_none()
                    && !(value.is_null() || type_names(root, branch) == ["null"])
                {
                    first_failure = Some(local);
                }
            }
            if let Some(local) = first_failure {
                problems.form.extend(local.form);
                problems.fields.extend(local.fields);
            } else {
                add(format!(
                    "Expected {}, received {}",
                    expected_types(root, schema),
                    json_type(value)
                ));
            }
            return;
        }
    }

    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            let expected: Vec<String> = options.iter().map(quote).collect();
            add(format!(
                "Invalid enum value. Expected {}, got {}.",
                expected.join(" | "),
                quote(value)
            ));
        }
        return;
    }
    if let Some(constant) = schema.get("const") {
        if constant != value {
            add(format!(
                "Invalid literal value, expected {}",
                quote(constant)
            ));
        }
        return;
    }

    let types = type_names(root, schema);
    let actual = json_type(value);
    if !types.is_empty()
        && !types
            .iter()
            .any(|t| *t == actual || (*t == "number" && actual == "integer"))
    {
        // Like zod, a client is told it sent a number, whatever its kind.
        let received = if actual == "integer" {
            "number"
        } else {
            actual
        };
        add(format!(
            "Expected {}, received {received}",
            types.join(" | ")
        ));
        return;
    }

    match value {
        Value::String(s) => {
            let chars = s.chars().count() as u64;
            if let Some(min) = schema
                .get("minLength")
                .and_then(Value::as_u64)
                .filter(|m| chars < *m)
            {
                add(format!("String must contain at least {min} character(s)"));
            }
            if let Some(max) = schema
                .get("maxLength")
                .and_then(Value::as_u64)
                .filter(|m| chars > *m)
            {
                add(format!("String must contain at most {max} character(s)"));
            }
            match schema.get("format").and_then(Value::as_str) {
                Some("uuid") if !is_uuid(s) => add("Invalid uuid".to_owned()),
                Some("email") if !s.contains('@') => add("Invalid email".to_owned()),
                Some("uri") if !(s.starts_with("http://") || s.starts_with("https://")) => {
                    add("Invalid url".to_owned());
                }
                _ => {}
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if let Some(min) = schema
                .get("minimum")
                .and_then(Value::as_f64)
                .filter(|m| x < *m)
            {
                add(format!("Number must be greater than or equal to {min}"));
            }
            if let Some(max) = schema
                .get("maximum")
                .and_then(Value::as_f64)
                .filter(|m| x > *m)
            {
                add(format!("Number must be less than or equal to {max}"));
            }
        }
        Value::Array(items) => {
            if let Some(min) = schema
                .get("minItems")
                .and_then(Value::as_u64)
                .filter(|m| (items.len() as u64) < *m)
            {
                add(format!("Array must contain at least {min} element(s)"));
            }
            if let Some(max) = schema
                .get("maxItems")
                .and_then(Value::as_u64)
                .filter(|m| (items.len() as u64) > *m)
            {
                add(format!("Array must contain at most {max} element(s)"));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(root, item_schema, item, &format!("{pointer}/{i}"), problems);
                }
            }
        }
        Value::Object(map) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            for required in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(name) = required.as_str().filter(|n| !map.contains_key(*n)) {
                    let child = format!("{pointer}/{}", escape_pointer(name));
                    problems.field(&field_name(&child), &child, "Required");
                }
            }
            let closed = schema.get("additionalProperties") == Some(&Value::Bool(false));
            let mut unknown = Vec::new();
            for (key, child_value) in map {
                match properties.and_then(|p| p.get(key)) {
                    Some(child_schema) => {
                        let child = format!("{pointer}/{}", escape_pointer(key));
                        check(root, child_schema, child_value, &child, problems);
                    }
                    None if closed => unknown.push(format!("'{key}'")),
                    None => {}
                }
            }
            if !unknown.is_empty() {
                let message = format!("Unrecognized key(s) in object: {}", unknown.join(", "));
                if pointer.is_empty() {
                    problems.form.push(message);
                } else {
                    problems.field(&field_name(pointer), pointer, message);
                }
            }
        }
        _ => {}
    }
}

fn expected_types(root: &Value, schema: &Value) -> String {
    let names = type_names(root, schema);
    if names.is_empty() {
        "a valid value".to_owned()
    } else {
        names.join(" | ")
    }
}

fn quote(value: &Value) -> String {
    match value {
        Value::String(s) => format!("'{s}'"),
        other => other.to_string(),
    }
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// `8-4-4-4-12` hexadecimal digits.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}
