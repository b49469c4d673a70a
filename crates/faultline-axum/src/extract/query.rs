//! [`Query`]: a query string checked against its type's schema.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use faultline::Situation;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::contract::{Error, Problems};

use super::from_value;
use super::schema::schema_for;

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
            problems.form_problem("The query string could not be decoded.");
            Error::invalid(Situation::InvalidQuery, problems)
        })?;
        let schema = schema_for::<T>();
        let mut object = Map::new();
        for (key, text) in pairs {
            let value = coerce(&schema.property_types(&key), text);
            object.insert(key, value);
        }
        from_value(Value::Object(object), Situation::InvalidQuery).map(Query)
    }
}

/// Reads a query value as the type its schema expects, leaving it a string when it is not one.
fn coerce(types: &[&str], text: String) -> Value {
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
