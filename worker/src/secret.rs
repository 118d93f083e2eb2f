//! Values that must never be printed: keystore, proxy and revocation passwords, private
//! keys.
//!
//! [`Secret`] and [`SecretBytes`] have no `Display`, print `[redacted]` through `Debug`,
//! and overwrite their memory with zeros when dropped. Reading the value takes an
//! explicit [`Secret::expose`], so every place that handles the plain text is easy to
//! find with a search.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// A secret text, such as a password.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    /// Wraps a value; the caller's copy should not outlive this call.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Zeroizing::new(value.into()))
    }

    /// The plain text. Never pass it to a log macro or a formatted error.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl From<String> for Secret {
    fn from(mut value: String) -> Self {
        let secret = Secret::new(value.as_str());
        value.zeroize();
        secret
    }
}

/// Secret bytes, such as a private key in PKCS#8 DER.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wraps the bytes; they are zeroed when this value is dropped.
    pub fn new(value: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(value))
    }

    /// The plain bytes. Never log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([redacted; {} bytes])", self.0.len())
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret::from)
    }
}

/// For `#[serde(serialize_with = "...")]` on the few wire fields that must carry a
/// secret (a revocation password toward D-Trust); there is deliberately no `Serialize`
/// impl, so no secret is serialized by accident.
pub fn expose_secret<S: serde::Serializer>(
    secret: &Secret,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose())
}

/// As [`expose_secret`], for an optional field.
pub fn expose_optional_secret<S: serde::Serializer>(
    secret: &Option<Secret>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => serializer.serialize_some(secret.expose()),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let password = Secret::new("hunter2-Geheim");
        let key = SecretBytes::new(b"-----BEGIN PRIVATE KEY-----".to_vec());
        let printed = format!("{password:?} {key:?} {:#?}", (&password, &key));
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("PRIVATE"), "{printed}");
        assert!(printed.contains("[redacted]"));
        assert_eq!(password.expose(), "hunter2-Geheim");
    }

    #[test]
    fn from_string_keeps_the_value() {
        let secret = Secret::from(String::from("abc"));
        assert_eq!(secret.expose(), "abc");
        assert!(!secret.is_empty());
        assert!(Secret::new("").is_empty());
    }
}
