//! Property test: the problem+json `instance` is a valid URI reference to the request's path,
//! whatever bytes the path holds.

use faultline::profile::uri_path_reference;
use faultline::{ApiError, ErrorDef, Profile, RenderContext, RetryAdvice};
use proptest::prelude::*;

const NOT_FOUND: ErrorDef = ErrorDef {
    code: "not_found",
    status: 404,
    title: "Not found",
    message: "No such resource.",
    retry: RetryAdvice::Never,
};

/// RFC 3986 `pchar` without `%`, plus `/`.
fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b)
}

/// Whether `s` is an RFC 3986 relative reference made of a path only (`path-absolute`,
/// `path-noscheme` or `path-empty`), checked by hand.
fn is_path_reference(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            i += 3;
        } else if is_path_char(b[i]) {
            i += 1;
        } else {
            return false;
        }
    }
    let first_segment = s.split('/').next().unwrap_or_default();
    !s.starts_with("//") && (s.starts_with('/') || !first_segment.contains(':'))
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("ASCII escape");
            out.push(u8::from_str_radix(hex, 16).expect("valid escape"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Paths mixing the troublesome characters with ordinary ones.
fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        "(/|//|%|%4|%zz|%41|:|\\{|\\}|\\||\\^|\"|\\\\| |é|😀|[a-z0-9]|\\?|#|\\[|\\])*",
    ]
}

proptest! {
    #[test]
    fn instance_is_a_valid_uri_reference(path in path()) {
        let encoded = uri_path_reference(&path);
        prop_assert!(is_path_reference(&encoded), "{path:?} gave {encoded:?}");
        if encoded.starts_with('/') {
            let uri: http::Uri = encoded.parse().expect("an absolute path parses as a request target");
            prop_assert_eq!(uri.path(), &*encoded);
        }
        // Without escapes in the input, decoding gives the path's bytes back.
        if !path.contains('%') {
            prop_assert_eq!(percent_decode(&encoded), path.as_bytes().to_vec());
        }
        // Rendering goes through the same encoding.
        let ctx = RenderContext::new().with_instance(&path);
        let body = Profile::Problem.to_value(&ApiError::from_def(&NOT_FOUND), &ctx);
        prop_assert_eq!(body["instance"].as_str(), Some(&*encoded));
    }

    #[test]
    fn valid_paths_are_kept_as_they_are(path in "(/[A-Za-z0-9._~!$&'()*+,;=:@-]{1,8}|/%[0-9A-F]{2}){1,6}") {
        prop_assert_eq!(uri_path_reference(&path), path.as_str());
    }
}
