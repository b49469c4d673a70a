//! [`Json`] and [`ValidJson`]: JSON bodies checked against their type's schema.

use axum::extract::{FromRequest, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use faultline::Situation;
use faultline::details::Size;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::contract::Error;
#[cfg(feature = "garde")]
use crate::contract::Problems;
use crate::layer::{BodyLimit, DEFAULT_BODY_LIMIT};

use super::from_value;
#[cfg(feature = "garde")]
use super::schema::{bounded, field_name};

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
                if problems.is_full() {
                    problems.count_omitted();
                    continue;
                }
                let pointer = garde_pointer(&path.to_string());
                if pointer.is_empty() {
                    problems.form_problem(error.message());
                } else {
                    problems.field(&field_name(&pointer), &pointer, error.message());
                }
            }
            return Err(Error::invalid(Situation::ValidationFailed, problems));
        }
        Ok(ValidJson(input))
    }
}

/// garde's path (`items[0].name`) as a JSON pointer (`/items/0/name`); a segment longer than
/// a short prefix (a map key the client chose) is cut like every echoed input.
#[cfg(feature = "garde")]
fn garde_pointer(path: &str) -> String {
    path.replace('[', ".")
        .replace(']', "")
        .split('.')
        .filter(|part| !part.is_empty())
        .fold(String::new(), |mut pointer, part| {
            pointer.push('/');
            pointer.push_str(&bounded(part).replace('~', "~0").replace('/', "~1"));
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

#[cfg(all(test, feature = "garde"))]
mod tests {
    use super::garde_pointer;

    #[test]
    fn garde_paths_become_pointers_with_long_keys_cut() {
        assert_eq!(garde_pointer("items[0].name"), "/items/0/name");
        assert_eq!(garde_pointer("a/b.c~d"), "/a~1b/c~0d");
        let long = "k".repeat(100);
        assert_eq!(
            garde_pointer(&format!("map[{long}]")),
            format!("/map/{}…", "k".repeat(40))
        );
    }
}
