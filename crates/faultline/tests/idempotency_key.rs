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
