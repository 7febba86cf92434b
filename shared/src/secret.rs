//! Credentials as redacted newtypes.
//!
//! A [`ClientToken`], [`SecretId`], [`WrappingToken`] or [`IdentityToken`] prints as `[REDACTED …]` through `Debug` and
//! has no `Display`, so `?value`, `{:?}` and `%error` can never leak one. The only way to the text is
//! `expose()`, used at the single places where the value goes on the wire or into the token file.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! secret_newtype {
    ($(#[$doc:meta])* $name:ident, $label:literal) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub struct $name(SecretString);

        impl $name {
            /// Wraps a credential.
            pub fn new(value: impl Into<String>) -> Self {
                Self(SecretString::from(value.into()))
            }

            /// The credential's text: only for the wire or the token file.
            pub fn expose(&self) -> &str {
                self.0.expose_secret()
            }

            /// True when the credential is the empty string.
            pub fn is_empty(&self) -> bool {
                self.expose().is_empty()
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!("[REDACTED ", $label, "]"))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.expose())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d).map(Self::new)
            }
        }
    };
}

secret_newtype!(
    /// A Vault client token (`hvs.…`).
    ClientToken,
    "client token"
);
secret_newtype!(
    /// An AppRole secret_id.
    SecretId,
    "secret_id"
);
secret_newtype!(
    /// A single-use response-wrapping token.
    WrappingToken,
    "wrapping token"
);
secret_newtype!(
    /// A pod's projected service-account token (audience `vault-approle`), shown by the init
    /// container on `GET /v1/identity` to the controller only. A bearer credential for its
    /// audience until it expires.
    IdentityToken,
    "identity token"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let t = WrappingToken::new("hvs.supersecret");
        let s = format!("{t:?} {:?}", Some(ClientToken::new("hvs.other")));
        assert!(!s.contains("supersecret") && !s.contains("other"), "{s}");
        assert!(s.contains("REDACTED"));
    }

    #[test]
    fn serde_round_trips_the_value() {
        let t = SecretId::new("abc");
        let json = serde_json::to_string(&t).expect("serialize");
        assert_eq!(json, "\"abc\"");
        let back: SecretId = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back.expose(), "abc");
    }
}
