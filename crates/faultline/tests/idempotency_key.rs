//! Property tests for the `Idempotency-Key` header and the request fingerprint.

use faultline::idempotency::{Difference, Fingerprint, IdempotencyKey, KeyError, MAX_KEY_LEN};
use proptest::prelude::*;

fn key_chars() -> impl Strategy<Value = String> {
    proptest::collection::vec(0x20u8..=0x7e, 1..=MAX_KEY_LEN)
        .prop_map(|bytes| bytes.into_iter().map(char::from).collect())
}

proptest! {
    /// Every valid key survives formatting as a structured-field string and parsing back.
    #[test]
    fn formatted_keys_parse_back(chars in key_chars()) {
        let key = IdempotencyKey::new(chars.clone()).expect("printable ASCII of a valid length");
        let value = key.to_header_value();
        prop_assert_eq!(IdempotencyKey::parse(value.as_bytes()), Ok(key.clone()));
        prop_assert_eq!(key.as_str(), chars.as_str());
    }

    /// A bare token is its own key.
    #[test]
    fn bare_tokens_are_the_key(token in "[!#-~]{1,255}") {
        let key = IdempotencyKey::parse(token.as_bytes()).expect("a bare token");
        prop_assert_eq!(key.as_str(), token.as_str());
    }

    /// No byte string panics the parser, and whatever it accepts is 1–255 printable ASCII.
    #[test]
    fn parsing_never_panics_and_accepts_only_valid_keys(
        bytes in proptest::collection::vec(any::<u8>(), 0..400)
    ) {
        if let Ok(key) = IdempotencyKey::parse(&bytes) {
            let len = key.as_str().len();
            prop_assert!((1..=MAX_KEY_LEN).contains(&len));
            prop_assert!(key.as_str().bytes().all(|b| (0x20..=0x7e).contains(&b)));
        }
    }

    /// Any control byte makes a key invalid, wherever it sits.
    #[test]
    fn control_bytes_are_refused(
        prefix in "[a-z]{0,20}",
        control in prop_oneof![0u8..0x09, 0x0au8..0x20, Just(0x7fu8)],
        suffix in "[a-z]{0,20}",
        quoted in any::<bool>(),
    ) {
        let mut value = Vec::new();
        if quoted { value.push(b'"'); }
        value.extend_from_slice(prefix.as_bytes());
        value.push(control);
        value.extend_from_slice(suffix.as_bytes());
        if quoted { value.push(b'"'); }
        let position = prefix.len() + usize::from(quoted);
        prop_assert_eq!(IdempotencyKey::parse(&value), Err(KeyError::InvalidByte { position }));
    }

    /// Two fingerprints are equal exactly when all four parts are, and the difference names
    /// the part that changed.
    #[test]
    fn fingerprints_tell_what_changed(
        a in ("(POST|PATCH)", "/[a-z/]{0,12}", "[a-z=&]{0,8}", proptest::collection::vec(any::<u8>(), 0..32)),
        b in ("(POST|PATCH)", "/[a-z/]{0,12}", "[a-z=&]{0,8}", proptest::collection::vec(any::<u8>(), 0..32)),
    ) {
        let fa = Fingerprint::new(&a.0, &a.1, &a.2, &a.3);
        let fb = Fingerprint::new(&b.0, &b.1, &b.2, &b.3);
        let same_request = (&a.0, &a.1, &a.2) == (&b.0, &b.1, &b.2);
        let same_body = a.3 == b.3;
        let expected = match (same_request, same_body) {
            (true, true) => None,
            (false, true) => Some(Difference::Request),
            (true, false) => Some(Difference::Body),
            (false, false) => Some(Difference::Both),
        };
        prop_assert_eq!(fa.difference(&fb), expected);
        prop_assert_eq!(Fingerprint::from_bytes(&fa.to_bytes()), Some(fa));
    }
}

/// A catalog with `extra` appended to a minimal valid catalog binding the idempotency codes.
fn catalog_with(extra: &str) -> Result<faultline::Catalog, faultline::CatalogErrors> {
    faultline::Catalog::from_toml_str(&source(extra))
}

/// The source of [`catalog_with`].
fn source(extra: &str) -> String {
    format!(
        r#"
[api]
name = "Tiny API"
profile = "flat"
code_style = "snake_case"

[bindings]
idempotency_conflict = "key_reused"

[[errors]]
code = "internal_error"
status = 500
category = "Server"
title = "Internal error"
message = "Something went wrong."
when = "A failure."
recovery = "Retry later."
retry = "backoff"

[[errors]]
code = "key_reused"
status = 422
category = "Conflict"
title = "Key reused"
message = "This key was used for another request."
when = "A key came back with another request."
recovery = "Use a new key."
retry = "never"
{extra}
"#
    )
}

#[test]
fn a_catalog_without_the_table_has_no_settings_and_no_docs_section() {
    let catalog = catalog_with("").unwrap();
    assert_eq!(catalog.idempotency, None);
    assert!(!faultline::docs::markdown(&catalog).contains("## Idempotency keys"));
}

#[test]
fn the_table_sets_the_window_and_the_docs_state_it() {
    let catalog = catalog_with(
        "[idempotency]\nretention_seconds = 7200\nlease_seconds = 90\nmethods = [\"post\", \"put\"]",
    )
    .unwrap();
    let settings = catalog.idempotency.clone().expect("the table");
    assert_eq!(settings.retention, std::time::Duration::from_secs(7200));
    assert_eq!(settings.lease, std::time::Duration::from_secs(90));
    assert_eq!(settings.methods, ["POST", "PUT"]);
    assert!(settings.applies_to("put") && !settings.applies_to("PATCH"));
    let page = faultline::docs::markdown(&catalog);
    assert!(page.contains("## Idempotency keys"), "{page}");
    assert!(page.contains("`POST` and `PUT` requests"), "{page}");
    assert!(page.contains("kept for 2 hours"), "{page}");
    assert!(page.contains("freed after 90 seconds"), "{page}");
    // The conflict code and its status come from the bindings (422 here, the IETF's choice).
    assert!(page.contains("`key_reused` (422)"), "{page}");
    let html = faultline::docs::html(&catalog);
    assert!(html.contains("<h2 id=\"idempotency\">Idempotency keys</h2>"));
    assert!(html.contains("<code>key_reused</code> (422)"), "{html}");
    // Every key is optional.
    let defaults = catalog_with("[idempotency]").unwrap();
    assert_eq!(
        defaults.idempotency,
        Some(faultline::idempotency::Settings::default())
    );
}

#[test]
fn bad_values_in_the_table_are_reported_with_their_lines() {
    let extra =
        "[idempotency]\nretention_seconds = 0\nlease_seconds = \"60\"\nmethods = []\nwindow = 3";
    let errors = catalog_with(extra).unwrap_err();
    let found: Vec<(usize, &str)> = errors.problems.iter().map(|p| (p.line, p.rule)).collect();
    let base = source(extra)
        .lines()
        .position(|l| l == "[idempotency]")
        .expect("the table")
        + 1;
    assert_eq!(
        found,
        [
            (base + 1, "idempotency-duration"),
            (base + 2, "idempotency-duration"),
            (base + 3, "idempotency-methods"),
            (base + 4, "unknown-key"),
        ]
    );
}

#[test]
fn durations_read_well() {
    use faultline::idempotency::human_duration;
    use std::time::Duration;
    let cases = [
        (86_400, "24 hours"),
        (172_800, "2 days"),
        (3_600, "1 hour"),
        (60, "1 minute"),
        (90, "90 seconds"),
        (1, "1 second"),
    ];
    for (seconds, text) in cases {
        assert_eq!(human_duration(Duration::from_secs(seconds)), text);
    }
}
