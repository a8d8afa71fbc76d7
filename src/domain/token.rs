//! The confirmation token: what the link in the email carries, and what the database keeps of it.
//!
//! The database never holds a token. An outbox row keeps a random [`TokenNonce`], and the token
//! is derived from it when the email is built: `HMAC-SHA256(server secret, nonce)` (see
//! [`crate::secret`]). The user's side keeps the [`TokenHash`], to look a clicked link up.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// A confirmation token: 256 bits from the operating system's CSPRNG, written as 43 characters
/// of unpadded base64url so it sits in a URL untouched. Only its [`TokenHash`] is stored with the
/// user. A `SecretString`, so `Debug` prints it redacted and it cannot leak into logs by accident.
#[derive(Debug, Clone)]
pub struct ConfirmationToken(SecretString);

/// SHA-256 of a token: what the database keeps and looks up. A fast hash is enough here (unlike
/// passwords) because the token has 256 bits of entropy: there is nothing to brute-force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

#[derive(Debug, thiserror::Error)]
#[error("the token is malformed: expected 43 characters of base64url")]
pub struct MalformedToken;

impl ConfirmationToken {
    const ENCODED_LEN: usize = 43;

    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        ConfirmationToken::from_bytes(&bytes)
    }

    /// The token for 32 bytes of key material (a MAC, or random bytes).
    pub(crate) fn from_bytes(bytes: &[u8; 32]) -> Self {
        ConfirmationToken(URL_SAFE_NO_PAD.encode(bytes).into())
    }

    /// Accepts only what [`generate`](Self::generate) can produce, so a malformed link is told
    /// apart from an unknown one.
    pub fn parse(input: &str) -> Result<Self, MalformedToken> {
        if input.len() != Self::ENCODED_LEN {
            return Err(MalformedToken);
        }
        match URL_SAFE_NO_PAD.decode(input) {
            Ok(bytes) if bytes.len() == 32 => Ok(ConfirmationToken(input.into())),
            _ => Err(MalformedToken),
        }
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.expose().as_bytes()).into())
    }

    /// The token itself, for the one place it is needed: the link in the email.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// What an outbox row keeps instead of its token: 256 random bits that are worthless without the
/// server secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenNonce(pub [u8; 32]);

impl TokenNonce {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        TokenNonce(bytes)
    }
}

// `SecretString` has no `PartialEq` of its own, on purpose: comparing is an exposure.
impl PartialEq for ConfirmationToken {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for ConfirmationToken {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_differ() {
        let a = ConfirmationToken::generate();
        let b = ConfirmationToken::generate();
        assert_ne!(a, b);
        assert_eq!(ConfirmationToken::parse(a.expose()).unwrap(), a);
        assert_ne!(a.hash(), b.hash());
        assert!(!format!("{a:?}").contains(a.expose()));
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let good = ConfirmationToken::generate();
        for bad in [
            "",
            "short",
            &format!("{}=", &good.expose()[..42]),
            &format!("{}A", good.expose()),
        ] {
            assert!(ConfirmationToken::parse(bad).is_err(), "{bad:?}");
        }
    }
}
