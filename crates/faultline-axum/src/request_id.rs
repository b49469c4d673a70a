//! Request ids: generated, or taken from the client only when they are safe.

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
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(Arc<str>);

/// The alphabet of generated ids and API keys (base62).
pub(crate) const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Fills `out` with uniformly random base62 characters (ASCII).
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
/// Random characters in a generated id: 24 base62 characters are about 143 bits.
const RANDOM_LEN: usize = 24;
/// The longest id accepted from a client.
pub const MAX_LEN: usize = 64;

impl RequestId {
    /// A fresh id: `prefix` followed by 24 random base62 characters.
    pub fn generate(prefix: &str) -> Self {
        let mut random = [0u8; RANDOM_LEN];
        fill_base62(&mut random);
        // One allocation: the id is assembled on the stack and copied into the shared string.
        let mut buf = [0u8; 64];
        let len = prefix.len() + RANDOM_LEN;
        let id: Arc<str> = if len <= buf.len() {
            buf[..prefix.len()].copy_from_slice(prefix.as_bytes());
            buf[prefix.len()..len].copy_from_slice(&random);
            Arc::from(std::str::from_utf8(&buf[..len]).expect("a str and ASCII"))
        } else {
            let random = std::str::from_utf8(&random).expect("base62 is ASCII");
            Arc::from([prefix, random].concat())
        };
        RequestId(id)
    }

    /// Accepts a client's id if it is 1–64 characters of `[A-Za-z0-9._-]`.
    pub fn accept(candidate: &str) -> Option<Self> {
        let ok = !candidate.is_empty()
            && candidate.len() <= MAX_LEN
            && candidate
                .bytes()
                .all(faultline::catalog::is_request_id_byte);
        ok.then(|| RequestId(candidate.into()))
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
        &self.0
    }

    /// The id as a header value (always valid: the alphabet is a subset of header characters).
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_str(&self.0).expect("request ids only hold [A-Za-z0-9._-]")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.0)
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
