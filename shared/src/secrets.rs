//! Secrets encrypted at rest (source credentials): AES-256-GCM from RustCrypto's `aes-gcm`,
//! a fresh random 96-bit nonce per value, and the id of the key that sealed it stored beside
//! it, so that keys can rotate: `secrets.key` seals, `secrets.key` and every
//! `secrets.previous_keys` open, and `video-import-api secrets rotate` seals everything
//! again with `secrets.key`. A key's id is derived from the key (the first 8 hex digits of
//! a SHA-256 of it), so it names a key without revealing it.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bytes of an AES-256 key.
const KEY_BYTES: usize = 32;
/// Bytes of a GCM nonce.
const NONCE_BYTES: usize = 12;
/// The first byte of every sealed value: its layout (version, nonce, ciphertext and tag).
const FORMAT_V1: u8 = 1;

/// How to make a key, for messages.
pub const KEY_HINT: &str = "32 random bytes in base64, e.g. from `openssl rand -base64 32` or \
                            `video-import-api secrets new-key`";

/// An encryption key from configuration. Its bytes never show: `Debug` prints its id, and
/// it does not serialise (configuration writes `(hidden)` in its place, see
/// `config::SecretsSettings`); [`SecretKey::to_base64`] is the one way out.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey {
    bytes: [u8; KEY_BYTES],
    id: String,
}

impl SecretKey {
    /// A key from its base64 text (standard alphabet, padding optional); the error says what
    /// is wrong without repeating the text.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let engine = base64::engine::general_purpose::STANDARD;
        let decoded = engine
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .map_err(|_| format!("is not base64; give {KEY_HINT}"))?;
        let bytes: [u8; KEY_BYTES] = decoded.as_slice().try_into().map_err(|_| {
            format!(
                "is {} bytes once decoded, not {KEY_BYTES}; give {KEY_HINT}",
                decoded.len()
            )
        })?;
        Ok(Self::from_bytes(bytes))
    }

    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"video-import secrets key id\0");
        hasher.update(bytes);
        let id = hex::encode(&hasher.finalize()[..4]);
        Self { bytes, id }
    }

    /// A new random key.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// The key as configuration takes it.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.bytes)
    }

    /// The key's id (8 hex digits), stored with every value it seals.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&self.bytes).expect("a 32-byte key")
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(id {})", self.id)
    }
}

impl<'de> Deserialize<'de> for SecretKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        SecretKey::from_base64(&text).map_err(serde::de::Error::custom)
    }
}

/// A value that must not be shown: `Debug` and `Display` print `(hidden)`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hidden(pub String);

impl Hidden {
    /// The value itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Hidden {
    fn from(value: String) -> Self {
        Hidden(value)
    }
}

impl fmt::Debug for Hidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(hidden)")
    }
}

impl fmt::Display for Hidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(hidden)")
    }
}

/// A value sealed by the key `key_id`: format byte, nonce, ciphertext with its tag.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The id of the key that sealed it ([`SecretKey::id`]).
    pub key_id: String,
    /// The format byte, the nonce, and the ciphertext with its tag.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed(key {}, {} bytes)", self.key_id, self.bytes.len())
    }
}

/// Why a value cannot be sealed or opened; every message says what to configure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    /// Sealing needs `secrets.key`.
    #[error(
        "no encryption key is configured: set secrets.key (VIDEO_IMPORT__SECRETS__KEY) to {KEY_HINT}"
    )]
    NoKey,
    /// The value was sealed by a key that is neither `secrets.key` nor a previous key.
    #[error(
        "it is encrypted with key {key_id}, which is neither secrets.key nor one of \
         secrets.previous_keys: configure that key (as secrets.previous_keys while rotating)"
    )]
    UnknownKey { key_id: String },
    /// The key is known but the value does not open with it: damaged, or changed outside
    /// this service (it is bound to what it belongs to).
    #[error(
        "it does not decrypt with key {key_id}: the stored value is damaged or was changed \
         outside video-import-api; add the rule again"
    )]
    Damaged { key_id: String },
}

impl SecretsError {
    /// Whether configuring a key can mend it (no key, or not the key that sealed it): a
    /// worker keeps retrying a video that needs such a rule. A damaged value stays damaged
    /// whatever is configured: such a video fails at once.
    pub fn mendable_by_configuration(&self) -> bool {
        matches!(self, SecretsError::NoKey | SecretsError::UnknownKey { .. })
    }
}

/// The configured keys: the current one seals, every one opens.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    current: Option<SecretKey>,
    previous: Vec<SecretKey>,
}

impl Keyring {
    /// A keyring of `current` (which seals) and `previous` (which only open).
    pub fn new(current: Option<SecretKey>, previous: Vec<SecretKey>) -> Self {
        Self { current, previous }
    }

    /// The keyring of `secrets.key` and `secrets.previous_keys`.
    pub fn from_settings(settings: &crate::config::SecretsSettings) -> Self {
        Self::new(settings.key.clone(), settings.previous_keys.clone())
    }

    /// The id of the key that seals, if there is one.
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_ref().map(SecretKey::id)
    }

    /// Seals `plaintext` with the current key, bound to `context` (authenticated, not
    /// stored: opening needs the same context, so a value cannot be moved to another row).
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Result<Sealed, SecretsError> {
        let key = self.current.as_ref().ok_or(SecretsError::NoKey)?;
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = key
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .expect("AES-GCM encrypts any message of this size");
        let mut bytes = Vec::with_capacity(1 + NONCE_BYTES + ciphertext.len());
        bytes.push(FORMAT_V1);
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&ciphertext);
        Ok(Sealed {
            key_id: key.id().to_string(),
            bytes,
        })
    }

    /// Opens a value sealed with `context` by whichever configured key has its id.
    pub fn open(&self, sealed: &Sealed, context: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let key = self
            .current
            .iter()
            .chain(&self.previous)
            .find(|k| k.id() == sealed.key_id)
            .ok_or_else(|| SecretsError::UnknownKey {
                key_id: sealed.key_id.clone(),
            })?;
        let damaged = || SecretsError::Damaged {
            key_id: sealed.key_id.clone(),
        };
        let (format, rest) = sealed.bytes.split_first().ok_or_else(damaged)?;
        if *format != FORMAT_V1 || rest.len() < NONCE_BYTES {
            return Err(damaged());
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_BYTES);
        key.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| damaged())
    }

    /// Whether `sealed` is sealed by the current key already (nothing to rotate).
    pub fn is_current(&self, sealed: &Sealed) -> bool {
        self.current_id() == Some(sealed.key_id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTEXT: &[u8] = b"source rule\x001\x00https://archive.example/";

    #[test]
    fn a_value_round_trips_and_each_seal_has_a_fresh_nonce() {
        let key = SecretKey::generate();
        let ring = Keyring::new(Some(key.clone()), vec![]);
        let a = ring.seal(b"Bearer s3cr3t", CONTEXT).unwrap();
        let b = ring.seal(b"Bearer s3cr3t", CONTEXT).unwrap();
        assert_eq!(a.key_id, key.id());
        assert_ne!(
            a.bytes, b.bytes,
            "the same value seals differently each time"
        );
        assert!(!a
            .bytes
            .windows(b"s3cr3t".len())
            .any(|w| w == b"s3cr3t".as_slice()));
        assert_eq!(ring.open(&a, CONTEXT).unwrap(), b"Bearer s3cr3t");
        assert_eq!(ring.open(&b, CONTEXT).unwrap(), b"Bearer s3cr3t");
    }

    #[test]
    fn a_wrong_key_or_context_does_not_open_it() {
        let ring = Keyring::new(Some(SecretKey::generate()), vec![]);
        let sealed = ring.seal(b"password", CONTEXT).unwrap();
        let other = Keyring::new(Some(SecretKey::generate()), vec![]);
        assert!(matches!(
            other.open(&sealed, CONTEXT),
            Err(SecretsError::UnknownKey { .. })
        ));
        // The same id with other bytes (a forged id) fails authentication instead.
        let forged = Sealed {
            key_id: other.current_id().unwrap().to_string(),
            bytes: sealed.bytes.clone(),
        };
        assert!(matches!(
            other.open(&forged, CONTEXT),
            Err(SecretsError::Damaged { .. })
        ));
        // Bound to its row: moved to another rule, it does not open.
        assert!(matches!(
            ring.open(&sealed, b"source rule\x001\x00https://evil.example/"),
            Err(SecretsError::Damaged { .. })
        ));
        let none = Keyring::default();
        assert_eq!(none.seal(b"x", CONTEXT), Err(SecretsError::NoKey));
        // Which of them a key can mend: a worker retries those, and fails the others at once.
        let unknown = other.open(&sealed, CONTEXT).unwrap_err();
        let damaged = other.open(&forged, CONTEXT).unwrap_err();
        assert!(unknown.mendable_by_configuration());
        assert!(SecretsError::NoKey.mendable_by_configuration());
        assert!(!damaged.mendable_by_configuration());
        assert!(SecretsError::NoKey.to_string().contains("secrets.key"));
    }

    #[test]
    fn a_tampered_value_is_refused() {
        let ring = Keyring::new(Some(SecretKey::generate()), vec![]);
        let sealed = ring.seal(b"password", CONTEXT).unwrap();
        for at in [0, 1, 13, sealed.bytes.len() - 1] {
            let mut bytes = sealed.bytes.clone();
            bytes[at] ^= 0x01;
            let tampered = Sealed {
                key_id: sealed.key_id.clone(),
                bytes,
            };
            assert!(
                matches!(
                    ring.open(&tampered, CONTEXT),
                    Err(SecretsError::Damaged { .. })
                ),
                "byte {at}"
            );
        }
        let short = Sealed {
            key_id: sealed.key_id.clone(),
            bytes: vec![FORMAT_V1, 1, 2],
        };
        assert!(ring.open(&short, CONTEXT).is_err());
    }

    #[test]
    fn rotation_opens_with_a_previous_key_and_seals_with_the_current_one() {
        let old = SecretKey::generate();
        let new = SecretKey::generate();
        let before = Keyring::new(Some(old.clone()), vec![]);
        let sealed = before.seal(b"value", CONTEXT).unwrap();
        let rotating = Keyring::new(Some(new.clone()), vec![old.clone()]);
        assert!(!rotating.is_current(&sealed));
        let plain = rotating.open(&sealed, CONTEXT).unwrap();
        let resealed = rotating.seal(&plain, CONTEXT).unwrap();
        assert!(rotating.is_current(&resealed));
        assert_eq!(resealed.key_id, new.id());
        // Once everything is sealed again, the old key is no longer needed ...
        let after = Keyring::new(Some(new), vec![]);
        assert_eq!(after.open(&resealed, CONTEXT).unwrap(), b"value");
        // ... and what it alone sealed no longer opens.
        assert!(matches!(
            after.open(&sealed, CONTEXT),
            Err(SecretsError::UnknownKey { key_id }) if key_id == old.id()
        ));
    }

    #[test]
    fn keys_are_checked_and_never_shown() {
        let key = SecretKey::generate();
        let text = key.to_base64();
        assert_eq!(SecretKey::from_base64(&text).unwrap(), key);
        assert_eq!(
            SecretKey::from_base64(text.trim_end_matches('=')).unwrap(),
            key
        );
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        let why = SecretKey::from_base64(&short).unwrap_err();
        assert!(why.contains("16 bytes") && !why.contains(&short), "{why}");
        assert!(SecretKey::from_base64("not base64!").is_err());
        let shown = format!("{key:?}");
        assert!(
            !shown.contains(&text) && shown.contains(key.id()),
            "{shown}"
        );
        assert_eq!(key.id().len(), 8);
        assert_eq!(format!("{:?}", Hidden("pw".into())), "(hidden)");
    }
}
