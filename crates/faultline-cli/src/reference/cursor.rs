//! Signed list cursors: opaque to clients, bound to one organisation, and short-lived.
//!
//! A cursor is `base64url(payload) "." base64url(HMAC-SHA256(payload))`, where the payload is
//! `v1|<org id>|<expires at, unix seconds>|<position parts…>`. The position is where the
//! previous page ended (for the reference API: `created_at` and `id` of its last row).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How long a cursor can be used after the page that gave it: one day.
pub const LIFETIME_SECS: i64 = 24 * 60 * 60;

const VERSION: &str = "v1";

/// Signs a cursor for `org_id` at `position`, valid until `now + LIFETIME_SECS`.
///
/// Position parts must not contain `|` (ids and timestamps of the reference API never do).
pub fn sign(key: &[u8], org_id: &str, position: &[&str], now: i64) -> String {
    debug_assert!(position.iter().all(|p| !p.contains('|')));
    let mut text = format!("{VERSION}|{org_id}|{}", now.saturating_add(LIFETIME_SECS));
    for part in position {
        text.push('|');
        text.push_str(part);
    }
    let payload = URL_SAFE_NO_PAD.encode(text);
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(payload.as_bytes());
    format!(
        "{payload}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// The position in `cursor`, if it was signed with `key` for `org_id`, has not expired at
/// `now` and has `parts` position parts.
///
/// # A cursor is never trusted unchecked
///
/// An altered cursor, one signed for another organisation, or one past its lifetime is
/// refused (the caller answers `invalid_cursor`); the signature is compared in constant time.
pub fn open(key: &[u8], org_id: &str, cursor: &str, now: i64, parts: usize) -> Option<Vec<String>> {
    let (payload, signature) = cursor.split_once('.')?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(payload.as_bytes());
    mac.verify_slice(&signature).ok()?; // constant-time comparison
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let mut fields = text.split('|');
    if fields.next()? != VERSION || fields.next()? != org_id {
        return None;
    }
    let expires_at: i64 = fields.next()?.parse().ok()?;
    if now >= expires_at {
        return None;
    }
    let position: Vec<String> = fields.map(str::to_owned).collect();
    (position.len() == parts).then_some(position)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_cursor_opens_for_its_org_only_and_only_while_fresh() {
        let cursor = sign(KEY, "org_a", &["2026-01-01T00:00:00+00:00", "id-1"], 1_000);
        let position = vec!["2026-01-01T00:00:00+00:00".to_owned(), "id-1".to_owned()];
        assert_eq!(open(KEY, "org_a", &cursor, 1_001, 2), Some(position));
        assert_eq!(open(KEY, "org_b", &cursor, 1_001, 2), None, "another org");
        assert_eq!(
            open(KEY, "org_a", &cursor, 1_000 + LIFETIME_SECS, 2),
            None,
            "expired"
        );
        assert_eq!(
            open(b"another key", "org_a", &cursor, 1_001, 2),
            None,
            "another key"
        );
        assert_eq!(open(KEY, "org_a", &cursor, 1_001, 1), None, "another shape");
    }

    proptest! {
        #[test]
        fn any_change_to_a_cursor_is_refused(flip in 0usize..200, byte in any::<u8>()) {
            let cursor = sign(KEY, "org_a", &["2026-01-01T00:00:00+00:00", "id-1"], 1_000);
            let mut bytes = cursor.into_bytes();
            let at = flip % bytes.len();
            prop_assume!(bytes[at] != byte);
            bytes[at] = byte;
            if let Ok(altered) = String::from_utf8(bytes) {
                prop_assert_eq!(open(KEY, "org_a", &altered, 1_001, 2), None);
            }
        }
    }
}
