//! Details: the per-code structured part of an error body.
//!
//! A catalog declares the shape of each code's `details`, either one of the built-in shapes
//! ([`DetailsShape`]) or an inline object schema. The types in this module are the typed form
//! of the built-in shapes; generated constructors take them as arguments so that a code's
//! details cannot be given the wrong shape.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

/// Converts typed details into the JSON value sent on the wire.
///
/// Implemented by every built-in shape and by the structs `catalog!` generates for inline
/// shapes. Conversion cannot fail, so raising an error never needs a fallback path.
pub trait IntoDetails {
    /// The JSON form of these details.
    fn into_details(self) -> Value;
}

impl IntoDetails for Value {
    fn into_details(self) -> Value {
        self
    }
}

/// Validation failures keyed by field: `{"formErrors": [...], "fieldErrors": {field: [...]}}`.
///
/// Form errors are not tied to one field; field errors map each offending field to its messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldErrors {
    /// Errors about the request as a whole.
    pub form_errors: Vec<String>,
    /// Each offending field, mapped to its messages, in field order.
    pub field_errors: BTreeMap<String, Vec<String>>,
}

impl FieldErrors {
    /// No errors yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a message for `field`.
    pub fn field(mut self, field: impl Into<String>, message: impl Into<String>) -> Self {
        self.push_field(field, message);
        self
    }

    /// Adds a message for `field` in place.
    pub fn push_field(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.field_errors
            .entry(field.into())
            .or_default()
            .push(message.into());
    }

    /// Adds a message about the whole request.
    pub fn form(mut self, message: impl Into<String>) -> Self {
        self.form_errors.push(message.into());
        self
    }

    /// Whether no error was recorded.
    pub fn is_empty(&self) -> bool {
        self.form_errors.is_empty() && self.field_errors.is_empty()
    }
}

impl IntoDetails for FieldErrors {
    fn into_details(self) -> Value {
        let mut fields = Map::new();
        for (field, messages) in self.field_errors {
            fields.insert(field, strings(messages));
        }
        let mut map = Map::new();
        map.insert("formErrors".into(), strings(self.form_errors));
        map.insert("fieldErrors".into(), Value::Object(fields));
        Value::Object(map)
    }
}

/// One field violation: a JSON pointer into the request and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// JSON pointer (RFC 6901) to the offending value, e.g. `/creators/0/name`.
    pub pointer: String,
    /// What is wrong with it.
    pub message: String,
}

/// Validation failures as a list of JSON pointers: `{"fields": [{"pointer", "message"}]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldViolations {
    /// The violations, in the order they were found.
    pub fields: Vec<FieldViolation>,
}

impl FieldViolations {
    /// Adds a violation.
    pub fn violation(mut self, pointer: impl Into<String>, message: impl Into<String>) -> Self {
        self.fields.push(FieldViolation {
            pointer: pointer.into(),
            message: message.into(),
        });
        self
    }
}

impl IntoDetails for FieldViolations {
    fn into_details(self) -> Value {
        let fields = self
            .fields
            .into_iter()
            .map(|v| {
                object([
                    ("pointer", Value::String(v.pointer)),
                    ("message", Value::String(v.message)),
                ])
            })
            .collect();
        object([("fields", Value::Array(fields))])
    }
}

macro_rules! single_field_details {
    ($(#[$doc:meta] $name:ident { $field:ident : $ty:ty => $wire:literal })*) => {$(
        #[$doc]
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            #[doc = concat!("The `", $wire, "` member.")]
            pub $field: $ty,
        }

        impl IntoDetails for $name {
            fn into_details(self) -> Value {
                object([($wire, Value::from(self.$field))])
            }
        }
    )*};
}

single_field_details! {
    /// The scope the route requires: `{"required": "chatbots:write"}`.
    RequiredScope { required: String => "required" }
    /// The kind of resource concerned: `{"resource": "chatbot"}`.
    Resource { resource: String => "resource" }
    /// Why the request was refused, in words safe for end users: `{"reason": "..."}`.
    Reason { reason: String => "reason" }
    /// The offending value, echoed back: `{"value": "..."}`.
    Echo { value: String => "value" }
    /// A count limit that was reached: `{"max": 10}`.
    Limit { max: u64 => "max" }
}

/// A usage quota: `{"limit": 1000, "used": 1000, "resets_at": "2026-12-01T00:00:00+00:00"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    /// The quota for the period.
    pub limit: u64,
    /// How much of it is used.
    pub used: u64,
    /// When the quota resets: ISO-8601 with an explicit `+00:00` offset.
    pub resets_at: String,
}

impl IntoDetails for Quota {
    fn into_details(self) -> Value {
        object([
            ("limit", Value::from(self.limit)),
            ("used", Value::from(self.used)),
            ("resets_at", Value::String(self.resets_at)),
        ])
    }
}

/// A body that is too large: `{"size_bytes": 2097152, "max_bytes": 1048576}`.
///
/// `size_bytes` is `None` when the size is unknown (a chunked body cut off at the limit); it is
/// then sent as `null`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Size {
    /// The size received, when known.
    pub size_bytes: Option<u64>,
    /// The largest size accepted.
    pub max_bytes: u64,
}

impl IntoDetails for Size {
    fn into_details(self) -> Value {
        object([
            ("size_bytes", Value::from(self.size_bytes)),
            ("max_bytes", Value::from(self.max_bytes)),
        ])
    }
}

fn strings(items: Vec<String>) -> Value {
    Value::Array(items.into_iter().map(Value::String).collect())
}

/// Builds a JSON object from pairs; used by the built-in shapes and generated code.
pub fn object<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    let mut map = Map::new();
    for (key, value) in pairs {
        map.insert(key.to_owned(), value);
    }
    Value::Object(map)
}

/// The shape of a code's details, as declared in the catalog.
///
/// A built-in shape parses from its catalog name; an inline table gives [`DetailsShape::Object`].
///
/// ```
/// use faultline::DetailsShape;
/// assert_eq!("quota".parse(), Ok(DetailsShape::Quota));
/// assert_eq!(DetailsShape::Quota.to_string(), "quota");
/// assert!("none".parse::<DetailsShape>().is_err(), "only shapes a catalog may name parse");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DetailsShape {
    /// The code carries no details.
    None,
    /// [`FieldErrors`].
    FieldErrors,
    /// [`FieldViolations`].
    FieldViolations,
    /// [`RequiredScope`].
    RequiredScope,
    /// [`Quota`].
    Quota,
    /// [`Size`].
    Size,
    /// [`Resource`].
    Resource,
    /// [`Reason`].
    Reason,
    /// [`Echo`] (`value` in catalogs).
    Value,
    /// [`Limit`].
    Limit,
    /// An inline object schema.
    Object(Vec<FieldSpec>),
}

impl DetailsShape {
    /// The built-in shapes a catalog can name, each with its name: the one list of them.
    pub const BUILT_IN: [(&'static str, DetailsShape); 9] = [
        ("field_errors", Self::FieldErrors),
        ("field_violations", Self::FieldViolations),
        ("required_scope", Self::RequiredScope),
        ("quota", Self::Quota),
        ("size", Self::Size),
        ("resource", Self::Resource),
        ("reason", Self::Reason),
        ("value", Self::Value),
        ("limit", Self::Limit),
    ];

    /// The catalog name of a built-in shape, `none` for [`DetailsShape::None`]; `None` for an
    /// inline object.
    pub fn name(&self) -> Option<&'static str> {
        if *self == Self::None {
            return Some("none");
        }
        Self::BUILT_IN
            .iter()
            .find(|(_, shape)| shape == self)
            .map(|(name, _)| *name)
    }

    /// The fields of this shape, as they appear on the wire.
    pub fn fields(&self) -> Vec<FieldSpec> {
        let f = |name: &str, ty| FieldSpec {
            name: name.to_owned(),
            ty,
            optional: false,
        };
        match self {
            Self::None => vec![],
            Self::FieldErrors => vec![
                f("formErrors", FieldType::StringList),
                f("fieldErrors", FieldType::FieldMap),
            ],
            Self::FieldViolations => vec![f("fields", FieldType::ViolationList)],
            Self::RequiredScope => vec![f("required", FieldType::String)],
            Self::Quota => vec![
                f("limit", FieldType::Integer),
                f("used", FieldType::Integer),
                f("resets_at", FieldType::Timestamp),
            ],
            Self::Size => vec![
                FieldSpec {
                    name: "size_bytes".into(),
                    ty: FieldType::Integer,
                    optional: true,
                },
                f("max_bytes", FieldType::Integer),
            ],
            Self::Resource => vec![f("resource", FieldType::String)],
            Self::Reason => vec![f("reason", FieldType::String)],
            Self::Value => vec![f("value", FieldType::String)],
            Self::Limit => vec![f("max", FieldType::Integer)],
            Self::Object(fields) => fields.clone(),
        }
    }
}

impl std::str::FromStr for DetailsShape {
    type Err = crate::names::UnknownName;

    /// Parses the name of a built-in shape.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::BUILT_IN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, shape)| shape.clone())
            .ok_or_else(|| {
                crate::names::UnknownName::new(
                    "details shape",
                    name,
                    Self::BUILT_IN.iter().map(|(n, _)| *n),
                )
            })
    }
}

impl fmt::Display for DetailsShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Object(fields) => {
                f.write_str("{ ")?;
                for (i, field) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(
                        f,
                        "{}: {}{}",
                        field.name,
                        field.ty,
                        if field.optional { "?" } else { "" }
                    )?;
                }
                f.write_str(" }")
            }
            shape => f.write_str(shape.name().unwrap_or_default()),
        }
    }
}

/// One field of a details shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    /// The member name on the wire.
    pub name: String,
    /// Its type.
    pub ty: FieldType,
    /// Whether it may be absent or null.
    pub optional: bool,
}

/// The type of a details field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// A JSON string.
    String,
    /// A JSON integer.
    Integer,
    /// A JSON number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// An ISO-8601 string with an explicit `+00:00` offset.
    Timestamp,
    /// An array of strings.
    StringList,
    /// An object mapping field names to arrays of strings (built-in shapes only).
    FieldMap,
    /// An array of `{pointer, message}` (built-in shapes only).
    ViolationList,
}

impl FieldType {
    /// Parses an inline-schema type name such as `string` or `string[]`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "string" => Self::String,
            "integer" => Self::Integer,
            "number" => Self::Number,
            "boolean" => Self::Boolean,
            "timestamp" => Self::Timestamp,
            "string[]" => Self::StringList,
            _ => return None,
        })
    }

    /// The type names accepted in inline schemas.
    pub const INLINE_NAMES: [&'static str; 6] = [
        "string",
        "integer",
        "number",
        "boolean",
        "timestamp",
        "string[]",
    ];
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::String => "string",
            Self::Integer => "integer",
            Self::Number => "number",
            Self::Boolean => "boolean",
            Self::Timestamp => "timestamp",
            Self::StringList => "string[]",
            Self::FieldMap => "{field: string[]}",
            Self::ViolationList => "[{pointer, message}]",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_errors_wire_shape() {
        let details = FieldErrors::new()
            .field("name", "Required")
            .field("status", "Invalid enum value.")
            .into_details();
        assert_eq!(
            details,
            json!({"formErrors": [], "fieldErrors": {"name": ["Required"], "status": ["Invalid enum value."]}})
        );
    }

    #[test]
    fn single_field_shapes() {
        assert_eq!(
            RequiredScope {
                required: "a:b".into()
            }
            .into_details(),
            json!({"required": "a:b"})
        );
        assert_eq!(Limit { max: 10 }.into_details(), json!({"max": 10}));
        assert_eq!(
            Size {
                size_bytes: None,
                max_bytes: 5
            }
            .into_details(),
            json!({"size_bytes": null, "max_bytes": 5})
        );
        assert_eq!(
            FieldViolations::default()
                .violation("/a", "bad")
                .into_details(),
            json!({"fields": [{"pointer": "/a", "message": "bad"}]})
        );
    }

    #[test]
    fn every_built_in_name_parses() {
        for (name, shape) in DetailsShape::BUILT_IN {
            assert_eq!(name.parse(), Ok(shape.clone()));
            assert_eq!(shape.to_string(), name);
        }
        assert_eq!(DetailsShape::None.to_string(), "none");
        let error = "bogus".parse::<DetailsShape>().unwrap_err();
        assert!(
            error.to_string().contains("field_errors, field_violations"),
            "{error}"
        );
    }
}
