//! Validation problems found in a request, before they take the bound code's details shape.

use faultline::details::{DetailsShape, FieldErrors, FieldViolations, IntoDetails};
use serde_json::Value;

/// Validation problems found by an extractor, before they take the bound code's details shape.
///
/// # At most [`Problems::MAX_LISTED`] problems are kept
///
/// [`Problems::field`] and [`Problems::form_problem`] keep the first hundred problems and
/// only count the rest, so a large body full of mistakes cannot make a large answer (or hold
/// much memory while it is checked). The count of the rest reaches the client as one more
/// form-level message, "…and N more problems were not listed." (in the field-violations shape,
/// a violation with the empty pointer). Pushing onto the public vectors directly bypasses the
/// cap: keep that for a handful of problems a handler finds itself.
///
/// ```
/// use faultline_axum::Problems;
///
/// let mut problems = Problems::default();
/// for i in 0..150 {
///     problems.field(&format!("items.{i}"), &format!("/items/{i}"), "Required");
/// }
/// assert_eq!(problems.fields.len(), Problems::MAX_LISTED);
/// assert_eq!(problems.omitted(), 50);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems {
    /// Problems about the whole input.
    pub form: Vec<String>,
    /// `(field, json pointer, message)` for each field problem, in the order found.
    pub fields: Vec<(String, String, String)>,
    /// Problems found once the lists were full: counted, never built.
    omitted: usize,
}

impl Problems {
    /// How many problems are listed at most; the rest are only counted.
    pub const MAX_LISTED: usize = 100;

    /// Adds a field problem (only counted once [`Problems::MAX_LISTED`] are listed).
    pub fn field(&mut self, field: &str, pointer: &str, message: impl Into<String>) {
        if self.is_full() {
            self.omitted += 1;
        } else {
            self.fields
                .push((field.to_owned(), pointer.to_owned(), message.into()));
        }
    }

    /// Adds a problem about the whole input (only counted once [`Problems::MAX_LISTED`] are
    /// listed).
    pub fn form_problem(&mut self, message: impl Into<String>) {
        if self.is_full() {
            self.omitted += 1;
        } else {
            self.form.push(message.into());
        }
    }

    /// Whether [`Problems::MAX_LISTED`] problems are listed, so that more are only counted:
    /// a checker asks this before it spends anything on a message.
    pub fn is_full(&self) -> bool {
        self.form.len() + self.fields.len() >= Self::MAX_LISTED
    }

    /// Counts a problem without listing it; for a checker that found the lists full.
    pub fn count_omitted(&mut self) {
        self.omitted += 1;
    }

    /// How many problems were found beyond the listed ones.
    pub fn omitted(&self) -> usize {
        self.omitted
    }

    /// How many problems were found, listed or not.
    pub(crate) fn found(&self) -> usize {
        self.form.len() + self.fields.len() + self.omitted
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.form.is_empty() && self.fields.is_empty() && self.omitted == 0
    }

    /// Moves `other`'s problems into these, keeping the cap.
    pub(crate) fn absorb(&mut self, other: Problems) {
        for message in other.form {
            self.form_problem(message);
        }
        for (field, pointer, message) in other.fields {
            if self.is_full() {
                self.omitted += 1;
            } else {
                self.fields.push((field, pointer, message));
            }
        }
        self.omitted += other.omitted;
    }

    /// The form-level message that tells how many problems were left out, if any were.
    fn omitted_message(&self) -> Option<String> {
        match self.omitted {
            0 => None,
            1 => Some("…and 1 more problem was not listed.".to_owned()),
            n => Some(format!(
                "…and {} more problems were not listed.",
                group_thousands(n)
            )),
        }
    }

    /// The problems in `shape`, if the shape is a validation shape.
    pub(crate) fn to_details(&self, shape: &DetailsShape) -> Option<Value> {
        let rest = self.omitted_message();
        match shape {
            DetailsShape::FieldErrors => {
                let mut details = FieldErrors::new();
                details.form_errors.clone_from(&self.form);
                details.form_errors.extend(rest);
                for (field, _, message) in &self.fields {
                    details.push_field(field.clone(), message.clone());
                }
                Some(details.into_details())
            }
            DetailsShape::FieldViolations => {
                let mut details = FieldViolations::default();
                for message in &self.form {
                    details = details.violation("", message.clone());
                }
                for (_, pointer, message) in &self.fields {
                    details = details.violation(pointer.clone(), message.clone());
                }
                if let Some(rest) = rest {
                    details = details.violation("", rest);
                }
                Some(details.into_details())
            }
            _ => None,
        }
    }
}

/// `479900` as `479,900`.
fn group_thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_by_thousands() {
        for (n, text) in [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (479_900, "479,900"),
            (1_234_567, "1,234,567"),
        ] {
            assert_eq!(group_thousands(n), text);
        }
    }

    #[test]
    fn problems_past_the_cap_are_counted_and_reported_once() {
        let mut problems = Problems::default();
        problems.form_problem("whole");
        for i in 0..120 {
            problems.field("f", &format!("/f/{i}"), "bad");
        }
        assert_eq!(problems.form.len() + problems.fields.len(), 100);
        assert_eq!(problems.omitted(), 21);
        let Some(Value::Object(details)) = problems.to_details(&DetailsShape::FieldViolations)
        else {
            panic!("a validation shape has details");
        };
        let fields = details["fields"].as_array().map(Vec::len);
        assert_eq!(fields, Some(101));
        assert_eq!(
            details["fields"][100]["message"],
            "…and 21 more problems were not listed."
        );
        assert_eq!(details["fields"][100]["pointer"], "");
    }

    #[test]
    fn absorbing_keeps_the_cap_and_the_count() {
        let mut inner = Problems::default();
        for _ in 0..90 {
            inner.field("a", "/a", "bad");
        }
        inner.omitted = 7;
        let mut outer = Problems::default();
        for _ in 0..20 {
            outer.form_problem("x");
        }
        outer.absorb(inner);
        assert_eq!(outer.fields.len(), 80);
        assert_eq!(outer.omitted(), 10 + 7);
        let mut one = Problems::default();
        one.count_omitted();
        assert!(!one.is_empty());
        let details = one.to_details(&DetailsShape::FieldErrors);
        assert_eq!(
            details.map(|d| d["formErrors"].clone()),
            Some(serde_json::json!(["…and 1 more problem was not listed."]))
        );
    }
}
