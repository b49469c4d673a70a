//! Drop-in extractors whose every rejection is a catalog error.
//!
//! [`Json`] checks the content type and the size, tells malformed JSON from JSON that fails the
//! schema, and collects the problems of the whole body, not only the first. The schema comes
//! from `schemars::JsonSchema` (derive it next to `Deserialize`); rules beyond types (`length`,
//! `range`, `email`, `url`, `regex`/`pattern`, whether written as `#[schemars(...)]` or as
//! `#[garde(...)]`, which schemars also reads) are checked from the same schema, so they land
//! in the same details. `ValidJson` (feature `garde`) then runs garde's own rules, custom
//! ones included, and reports them in the same shape. [`Query`] checks a query string against
//! the same kind of schema; [`Path`] refuses a path parameter that does not parse.
//!
//! # What the schema check covers
//!
//! Every keyword of the generated schema is either checked or only annotates:
//!
//! - checked: `type` (with OpenAPI's `nullable`), `enum`, `const`, `anyOf`, `oneOf` (exactly
//!   one branch), `allOf`, `not`, `$ref` (local references, its siblings checked too);
//!   `properties`, `required`, `additionalProperties` (`false` or a schema),
//!   `patternProperties`, `minProperties`, `maxProperties`; `items`, `prefixItems`,
//!   `minItems`, `maxItems`, `uniqueItems`; `minLength`, `maxLength` (in characters),
//!   `pattern` (the `regex` crate, unanchored as JSON Schema says), `format`; `minimum`,
//!   `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `multipleOf`;
//! - formats: `uuid` (`8-4-4-4-12` hex digits), `email` (one `@`; a dot-atom local part of at
//!   most 64 characters; a domain of two or more letter-digit-hyphen labels of at most 63
//!   characters that neither start nor end with a hyphen; at most 254 characters), `uri` (an
//!   absolute URI: a scheme, `:`, URI characters only, no spaces), `date-time` and `date`
//!   (RFC 3339), `ipv4`, `ipv6`, `ip`; the integer formats schemars emits (`int8` …
//!   `int128`, `uint8` … `uint128`, `int`, `uint`: a whole number in the type's range),
//!   `float` (within `f32`'s range) and `double` (any number);
//! - annotations, which validate nothing: `$schema`, `$id`, `$comment`, `title`,
//!   `description`, `default`, `examples`, `example`, `deprecated`, `readOnly`, `writeOnly`,
//!   and the definitions under `$defs` or `definitions`.
//!
//! # A rule that cannot be checked is never skipped
//!
//! Any other keyword (`if`, `contains`, `unevaluatedProperties`, …), an unknown `format`, a
//! pattern the `regex` crate cannot compile (look-around, back-references) or a `$ref` that
//! does not resolve locally makes the schema unsupported. [`ensure_supported`] reports it, for
//! a router to call at start-up; at request time the extractor answers the catalog's internal
//! error, never the handler with an unchecked body, and logs the reason at error level once
//! per type.
//!
//! # Every problem, up to a hundred
//!
//! The problems of a body are collected in one pass, up to [`Problems::MAX_LISTED`]; the rest
//! are counted, never built, and one more form-level message says how many were not listed.
//! Parts of the input repeated in messages (an enum value received, unknown keys, map keys in
//! pointers) are cut to 40 characters and `…`, and at most five unknown keys are named: an
//! answer stays small whatever the body holds.

mod json;
mod path;
mod query;
mod schema;

pub use json::Json;
#[cfg(feature = "garde")]
pub use json::ValidJson;
pub use path::Path;
pub use query::Query;
pub use schema::{UnsupportedSchema, ensure_supported};

use faultline::Situation;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::contract::{Error, Problems};

/// Checks `value` against `T`'s schema, then deserializes it.
fn from_value<T: DeserializeOwned + JsonSchema + 'static>(
    value: Value,
    situation: Situation,
) -> Result<T, Error> {
    let schema = schema::schema_for::<T>();
    if let Err(unsupported) = schema.supported() {
        if schema.first_refusal() {
            tracing::error!(
                request_type = std::any::type_name::<T>(),
                error = %unsupported,
                "request refused: its type's JSON schema has a rule the extractors cannot check \
                 (see faultline_axum::ensure_supported)"
            );
        }
        return Err(Error::bound(Situation::Internal));
    }
    let problems = schema.check(&value);
    if !problems.is_empty() {
        return Err(Error::invalid(situation, problems));
    }
    serde_json::from_value(value).map_err(|_| {
        // The schema accepted what serde refused (a custom deserializer): say so without
        // echoing serde's text, which can name Rust types.
        let mut problems = Problems::default();
        problems.form_problem("The input does not have the expected shape.");
        Error::invalid(situation, problems)
    })
}
