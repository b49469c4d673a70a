//! The API key format: `<prefix>_<env>_<30 random base62><6 base62 of a CRC32>`.
//!
//! The checksum lets the server recognise a mistyped or invented key without touching the
//! store, and lets secret scanners tell a real key from random text. The server keeps only
//! the SHA-256 digest of a key and a short display prefix.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::request_id::{BASE62, fill_base62};

/// Random base62 characters in a key: about 178 bits.
pub const RANDOM_LEN: usize = 30;
/// Base62 characters of the checksum (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;
/// Random characters kept in the display prefix.
const DISPLAY_RANDOM: usize = 4;
/// The longest credential looked at; anything longer is malformed before any other work.
pub const MAX_CREDENTIAL_LEN: usize = 256;

/// The key format of one deployment: a product prefix and an environment, e.g. `cb` and
/// `live` for keys that start `cb_live_`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFormat {
    lead: String,
}

/// A prefix or environment outside `[a-z0-9]{1,16}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidKeyFormat(pub String);

impl fmt::Display for InvalidKeyFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a valid key prefix or environment: use 1 to 16 of [a-z0-9]",
            self.0
        )
    }
}

impl std::error::Error for InvalidKeyFormat {}

/// Why a credential is not a key of this format (for tests and metrics; the client only ever
/// sees the catalog's malformed-key code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Malformed {
    /// It does not start with `<prefix>_<env>_`.
    WrongPrefix,
    /// The part after the prefix is not 36 characters.
    WrongLength,
    /// A character outside base62.
    BadCharacter,
    /// The checksum does not match.
    BadChecksum,
}

impl KeyFormat {
    /// The format for `prefix` and `env`.
    pub fn new(prefix: &str, env: &str) -> Result<Self, InvalidKeyFormat> {
        for part in [prefix, env] {
            let ok = (1..=16).contains(&part.len())
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !ok {
                return Err(InvalidKeyFormat(part.to_owned()));
            }
        }
        Ok(KeyFormat {
            lead: format!("{prefix}_{env}_"),
        })
    }

    /// What every key of this format starts with, e.g. `cb_live_`.
    pub fn lead(&self) -> &str {
        &self.lead
    }

    /// A fresh random key.
    pub fn generate(&self) -> ApiKeySecret {
        let mut random = [0u8; RANDOM_LEN];
        fill_base62(&mut random);
        let mut key = String::with_capacity(self.lead.len() + RANDOM_LEN + CHECKSUM_LEN);
        key.push_str(&self.lead);
        key.extend(random.iter().map(|&b| char::from(b)));
        let checksum = encode_checksum(crc32fast::hash(key.as_bytes()));
        key.extend(checksum.iter().map(|&b| char::from(b)));
        ApiKeySecret(key)
    }

    /// Checks that `credential` is a well-formed key of this format, without any store.
    ///
    /// ```
    /// use faultline_axum::auth::{KeyFormat, Malformed};
    /// let format = KeyFormat::new("cb", "live").unwrap();
    /// let key = format.generate();
    /// assert!(format.check(key.expose()).is_ok());
    /// assert_eq!(format.check("cb_test_abc"), Err(Malformed::WrongPrefix));
    /// ```
    pub fn check(&self, credential: &str) -> Result<(), Malformed> {
        let rest = credential
            .strip_prefix(self.lead.as_str())
            .ok_or(Malformed::WrongPrefix)?;
        if rest.len() != RANDOM_LEN + CHECKSUM_LEN {
            return Err(Malformed::WrongLength);
        }
        if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Malformed::BadCharacter);
        }
        let (body, checksum) = credential.split_at(credential.len() - CHECKSUM_LEN);
        let expected = encode_checksum(crc32fast::hash(body.as_bytes()));
        if expected == checksum.as_bytes() {
            Ok(())
        } else {
            Err(Malformed::BadChecksum)
        }
    }
}

/// The checksum's base62 characters (ASCII), on the stack: checking a key allocates nothing.
fn encode_checksum(mut value: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out
}

/// A raw API key, as shown once at creation.
///
/// # A key never appears in logs, bodies or Debug output
///
/// `Debug` shows only the display prefix, and there is no `Display`: the raw text is reached
/// through [`ApiKeySecret::expose`] alone.
///
/// ```
/// let format = faultline_axum::auth::KeyFormat::new("cb", "live").unwrap();
/// let key = format.generate();
/// let debug = format!("{key:?}");
/// assert!(!debug.contains(key.expose()));
/// assert!(debug.contains(&key.display_prefix()));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeySecret(String);

impl ApiKeySecret {
    /// Wraps a credential received from a client.
    pub fn new(raw: impl Into<String>) -> Self {
        ApiKeySecret(raw.into())
    }

    /// The raw key. Show it to its owner once; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 digest that the store keeps instead of the key.
    pub fn digest(&self) -> KeyDigest {
        KeyDigest::of(&self.0)
    }

    /// The first characters of the key (its lead and four random characters), which
    /// identify it in listings without revealing it.
    pub fn display_prefix(&self) -> String {
        display_prefix(&self.0)
    }
}

/// The display prefix of a raw credential: up to the last `_` plus four characters.
pub(crate) fn display_prefix(raw: &str) -> String {
    let lead = raw.rfind('_').map_or(0, |i| i + 1);
    raw.chars().take(lead + DISPLAY_RANDOM).collect()
}

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeySecret({}…)", self.display_prefix())
    }
}

/// The SHA-256 digest of a key: what the store keeps and looks keys up by.
///
/// # Comparison is constant-time
///
/// `PartialEq` goes through `subtle::ConstantTimeEq`, so comparing a stored digest with a
/// presented one takes the same time wherever they differ.
#[derive(Clone, Copy, Eq)]
pub struct KeyDigest(pub [u8; 32]);

impl std::hash::Hash for KeyDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Consistent with the constant-time `PartialEq`: equal digests have equal bytes. The
        // bytes alone, in one write: the length is always 32.
        state.write(&self.0);
    }
}

impl KeyDigest {
    /// The digest of `raw`.
    pub fn of(raw: &str) -> Self {
        KeyDigest(Sha256::digest(raw.as_bytes()).into())
    }

    /// The digest as 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        use fmt::Write as _;
        self.0.iter().fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
    }
}

impl PartialEq for KeyDigest {
    fn eq(&self, other: &Self) -> bool {
        // Compared as four words rather than 32 bytes: the same constant-time comparison,
        // with an eighth of the optimisation barriers.
        self.words().ct_eq(&other.words()).into()
    }
}

impl KeyDigest {
    fn words(&self) -> [u64; 4] {
        let mut words = [0u64; 4];
        for (word, bytes) in words.iter_mut().zip(self.0.chunks_exact(8)) {
            *word = u64::from_le_bytes(bytes.try_into().expect("chunks of eight bytes"));
        }
        words
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest({}…)", &self.to_hex()[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let format = KeyFormat::new("cb", "live").unwrap();
        let key = format.generate();
        let raw = key.expose();
        assert!(raw.starts_with("cb_live_"));
        assert_eq!(raw.len(), "cb_live_".len() + 36);
        assert_eq!(format.check(raw), Ok(()));
        assert_eq!(key.display_prefix(), raw[..12]);
        assert_ne!(format.generate(), key);
    }

    #[test]
    fn formats_reject_bad_prefixes() {
        assert!(KeyFormat::new("CB", "live").is_err());
        assert!(KeyFormat::new("", "live").is_err());
        assert!(KeyFormat::new("cb", "li_ve").is_err());
        assert!(KeyFormat::new(&"a".repeat(17), "live").is_err());
    }

    #[test]
    fn checks_name_the_defect() {
        let format = KeyFormat::new("cb", "live").unwrap();
        let key = format.generate();
        let raw = key.expose();
        assert_eq!(
            format.check(&raw[..raw.len() - 1]),
            Err(Malformed::WrongLength)
        );
        let mut bad_char = raw.to_owned();
        bad_char.replace_range(10..11, "-");
        assert_eq!(format.check(&bad_char), Err(Malformed::BadCharacter));
        let other_env = KeyFormat::new("cb", "test").unwrap();
        assert_eq!(other_env.check(raw), Err(Malformed::WrongPrefix));
    }

    #[test]
    fn digests_compare_by_value() {
        assert_eq!(KeyDigest::of("a"), KeyDigest::of("a"));
        assert_ne!(KeyDigest::of("a"), KeyDigest::of("b"));
        assert_eq!(KeyDigest::of("a").to_hex().len(), 64);
    }
}
