//! Request ids: generated, or taken from the client only when they are safe.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use axum::http::HeaderValue;
use rand::RngCore;

/// The id of one request: in the request's extensions, the response header, the error body and
/// the tracing span.
///
/// # An incoming request id is never trusted unchecked
///
/// A client may send its own id; it is kept only when it is 1 to 64 characters of
/// `[A-Za-z0-9._-]`. Anything else (too long, spaces, quotes, non-ASCII) is replaced by a fresh
/// id, so a hostile header cannot reach logs or bodies.
///
/// ```
/// use faultline_axum::RequestId;
/// assert_eq!(RequestId::accept("client-7.retry_2").unwrap().as_str(), "client-7.retry_2");
/// assert!(RequestId::accept("drop table; --").is_none());
/// assert!(RequestId::accept(&"a".repeat(65)).is_none());
/// ```
///
/// # Cheap to make and to copy
///
/// An id of up to 64 bytes (every accepted one, and every generated one with a prefix of up to
/// 40 bytes) is held inline: making and cloning it allocates nothing. Generated ids come from a
/// fast per-thread generator seeded from the OS: they are unique, not secret (API keys use the
/// CSPRNG).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    /// The id's bytes, zero after `len` (so that the derived equality compares the text).
    Inline { len: u8, bytes: [u8; MAX_LEN] },
    /// An id longer than [`MAX_LEN`] (a long configured prefix).
    Shared(Arc<str>),
}

/// The alphabet of generated ids and API keys (base62).
pub(crate) const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Fills `out` with uniformly random base62 characters (ASCII) from the CSPRNG: for secrets.
#[cfg(feature = "auth")]
pub(crate) fn fill_base62(out: &mut [u8]) {
    let mut rng = rand::rng();
    let mut bytes = [0u8; 32];
    let mut filled = 0;
    while filled < out.len() {
        rng.fill_bytes(&mut bytes);
        // Bytes below 248 (4 × 62) map to base62 without bias; the rest are dropped.
        for &byte in bytes.iter().filter(|&&b| b < 248) {
            let Some(slot) = out.get_mut(filled) else {
                break;
            };
            *slot = BASE62[usize::from(byte % 62)];
            filled += 1;
        }
    }
}

thread_local! {
    /// The state of this thread's id generator (wyrand), seeded once from the OS.
    static ID_STATE: Cell<u64> = Cell::new(rand::rng().next_u64());
}

/// Fills `out` with base62 characters from a fast non-cryptographic generator: for ids, which
/// must be unique but need not be unpredictable.
fn fill_base62_fast(out: &mut [u8]) {
    ID_STATE.with(|state| {
        for chunk in out.chunks_mut(10) {
            // wyrand: one multiply per 64 random bits.
            let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
            state.set(s);
            let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
            // The bits as a fraction in [0, 1): each multiply by 62 shifts out one base62
            // digit; 62^10 < 2^64, so ten digits per draw.
            let mut fraction = ((t >> 64) as u64) ^ (t as u64);
            for slot in chunk {
                let scaled = u128::from(fraction) * 62;
                *slot = BASE62[(scaled >> 64) as usize];
                fraction = scaled as u64;
            }
        }
    });
}

/// Random characters in a generated id: 24 base62 characters.
const RANDOM_LEN: usize = 24;
/// The longest id accepted from a client.
pub const MAX_LEN: usize = 64;

impl RequestId {
    /// A fresh id: `prefix` followed by 24 random base62 characters.
    pub fn generate(prefix: &str) -> Self {
        let len = prefix.len() + RANDOM_LEN;
        if len <= MAX_LEN {
            let mut bytes = [0u8; MAX_LEN];
            bytes[..prefix.len()].copy_from_slice(prefix.as_bytes());
            fill_base62_fast(&mut bytes[prefix.len()..len]);
            return RequestId(Repr::Inline {
                len: len as u8,
                bytes,
            });
        }
        let mut random = [0u8; RANDOM_LEN];
        fill_base62_fast(&mut random);
        let random = std::str::from_utf8(&random).expect("base62 is ASCII");
        RequestId(Repr::Shared(Arc::from([prefix, random].concat())))
    }

    /// Accepts a client's id if it is 1–64 characters of `[A-Za-z0-9._-]`.
    pub fn accept(candidate: &str) -> Option<Self> {
        let ok = !candidate.is_empty()
            && candidate.len() <= MAX_LEN
            && candidate
                .bytes()
                .all(faultline::catalog::is_request_id_byte);
        ok.then(|| {
            let mut bytes = [0u8; MAX_LEN];
            bytes[..candidate.len()].copy_from_slice(candidate.as_bytes());
            RequestId(Repr::Inline {
                len: candidate.len() as u8,
                bytes,
            })
        })
    }

    /// The client's id from a header value when acceptable, else a fresh one.
    pub fn from_header(value: Option<&HeaderValue>, prefix: &str) -> Self {
        value
            .and_then(|v| v.to_str().ok())
            .and_then(Self::accept)
            .unwrap_or_else(|| Self::generate(prefix))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).expect("ids are ASCII")
            }
            Repr::Shared(id) => id,
        }
    }

    /// The id's bytes (ASCII), without the check [`RequestId::as_str`] makes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Shared(id) => id.as_bytes(),
        }
    }

    /// The id as a header value (always valid: the alphabet is a subset of header characters).
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(self.as_bytes()).expect("request ids only hold [A-Za-z0-9._-]")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_have_prefix_and_24_base62_characters() {
        let id = RequestId::generate("req_");
        let rest = id.as_str().strip_prefix("req_").unwrap();
        assert_eq!(rest.len(), 24);
        assert!(rest.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(RequestId::generate("req_"), id);
    }

    #[test]
    fn long_prefixes_still_give_24_random_characters() {
        let prefix = "p".repeat(50);
        let id = RequestId::generate(&prefix);
        let rest = id.as_str().strip_prefix(prefix.as_str()).unwrap();
        assert_eq!(rest.len(), 24);
        assert!(rest.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(id.header_value(), id.as_str());
    }

    #[test]
    fn generated_ids_do_not_repeat_and_use_the_whole_alphabet() {
        let mut seen = std::collections::HashSet::new();
        let mut counts = [0usize; 62];
        for _ in 0..10_000 {
            let id = RequestId::generate("");
            for b in id.as_str().bytes() {
                counts[BASE62.iter().position(|&c| c == b).unwrap()] += 1;
            }
            assert!(seen.insert(id));
        }
        // 240 000 characters: about 3 871 of each; a broken mapping would leave some at 0 or
        // pile them up.
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 3_400 && *max < 4_400, "{counts:?}");
    }

    #[test]
    fn equal_text_means_equal_ids() {
        let a = RequestId::accept("abc").unwrap();
        let b = RequestId::from_header(Some(&HeaderValue::from_static("abc")), "req_");
        assert_eq!(a, b);
        assert_eq!(format!("{a} {a:?}"), "abc RequestId(abc)");
    }

    #[test]
    fn hostile_ids_are_replaced() {
        for bad in ["", "has space", "quote\"", "é", &"x".repeat(65), "a\nb"] {
            assert!(RequestId::accept(bad).is_none(), "{bad:?}");
        }
        let header = HeaderValue::from_static("not ok!");
        let id = RequestId::from_header(Some(&header), "req_");
        assert!(id.as_str().starts_with("req_"));
        assert_eq!(
            RequestId::accept(&"x".repeat(64)).unwrap().as_str().len(),
            64
        );
    }
}
