//! The confirmation token: what the link in the email carries, and what the database keeps of it.
//!
//! The database never holds a token. An outbox row keeps a [`TokenNonce`], and the token is
//! derived from it when the email is built: `HMAC-SHA256(server secret, nonce)` (see
//! [`crate::secret`]). The user's side keeps the [`TokenHash`], to look a clicked link up.
//!
//! Nonce, token and hash all begin with the same six bytes: the millisecond the nonce was made,
//! in big-endian order. The rest is random (nonce), a MAC (token) and a hash (stored key). The
//! prefix is there for the database, not for secrecy: the stored keys of new signups sort after
//! the old ones, so each insert lands on the last page of the key's B-tree, which the inserts
//! before it already hold in memory. Keyed by a hash alone, every insert landed on a random page
//! of an index as large as the table, and each group commit wrote one such page per signup
//! (BENCHMARKS.md, section 2). The time says nothing its reader does not know: whoever holds the
//! link received it.
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// A confirmation token: 32 bytes, written as 43 characters of unpadded base64url so it sits in
/// a URL untouched. A derived token is its nonce's [time prefix](TokenNonce) and 208 bits of MAC;
/// a generated one, 256 random bits. Only its [`TokenHash`] is stored with the user. A
/// `SecretString`, so `Debug` prints it redacted and it cannot leak into logs by accident.
#[derive(Debug, Clone)]
pub struct ConfirmationToken(SecretString);

/// What the database keeps of a token and looks it up by: the token's first six bytes (its
/// time prefix), then the first 26 bytes of the SHA-256 of the token's text. A fast hash is
/// enough here (unlike passwords) because the token has 208 bits of MAC: there is nothing to
/// brute-force.
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
        let digest = Sha256::digest(self.expose().as_bytes());
        // Eight characters of base64url are exactly six bytes; `parse` checked the whole token.
        let prefix = URL_SAFE_NO_PAD
            .decode(&self.expose()[..8])
            .expect("a parsed token is base64url");
        let mut hash = [0u8; 32];
        hash[..TIME_PREFIX].copy_from_slice(&prefix);
        hash[TIME_PREFIX..].copy_from_slice(&digest[..32 - TIME_PREFIX]);
        TokenHash(hash)
    }

    /// The key a link sent before keys began with the time prefix was stored under: the whole
    /// SHA-256 of the token's text. Such links stay valid until they expire (see
    /// `Delivery::follow_link`).
    pub fn legacy_hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.expose().as_bytes()).into())
    }

    /// The token itself, for the one place it is needed: the link in the email.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Bytes at the start of a nonce, its token and its hash that say when the nonce was made.
pub(crate) const TIME_PREFIX: usize = 6;

/// What an outbox row keeps instead of its token: worthless without the server secret. Six bytes
/// of time (milliseconds since the Unix epoch, big-endian), then 208 random bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenNonce(pub [u8; 32]);

impl TokenNonce {
    pub fn generate() -> Self {
        TokenNonce::made_at(crate::clock::now_ms())
    }

    /// A nonce that says it was made at `millis` (since the Unix epoch).
    pub fn made_at(millis: i64) -> Self {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes[TIME_PREFIX..])
            .expect("the operating system's random source failed");
        let millis = u64::try_from(millis).unwrap_or(0).to_be_bytes();
        bytes[..TIME_PREFIX].copy_from_slice(&millis[8 - TIME_PREFIX..]);
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
    fn nonce_token_and_key_begin_with_the_millisecond_and_keys_sort_by_it() {
        let key = crate::secret::TokenKey::new(&"k".repeat(32));
        let at = 1_796_000_000_123_i64; // 2026-11-30
        let prefix = &at.to_be_bytes()[8 - TIME_PREFIX..];
        let nonce = TokenNonce::made_at(at);
        let token = key.token_for(&nonce);
        let token_bytes = URL_SAFE_NO_PAD.decode(token.expose()).unwrap();
        assert_eq!(&nonce.0[..TIME_PREFIX], prefix);
        assert_eq!(&token_bytes[..TIME_PREFIX], prefix);
        assert_eq!(&token.hash().0[..TIME_PREFIX], prefix);
        // The rest is the hash of the token, not the token: the key alone cannot confirm.
        assert_eq!(
            token.hash().0[TIME_PREFIX..],
            token.legacy_hash().0[..32 - TIME_PREFIX]
        );
        assert_ne!(token.hash().0[TIME_PREFIX..], token_bytes[TIME_PREFIX..]);

        // Made in one millisecond, two nonces still differ in their random bits, and so do their
        // tokens and keys.
        let twin = TokenNonce::made_at(at);
        assert_ne!(nonce, twin);
        assert_ne!(token.hash(), key.token_for(&twin).hash());

        // Keys made later sort after, whatever their random bits: an index of them grows at
        // its end. Across a second and across a year.
        let keys: Vec<TokenHash> = [at - 31_536_000_000, at - 1_000, at, at + 1, at + 1_000]
            .into_iter()
            .map(|ms| key.token_for(&TokenNonce::made_at(ms)).hash())
            .collect();
        assert!(keys.windows(2).all(|w| w[0].0 < w[1].0), "{keys:?}");
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
