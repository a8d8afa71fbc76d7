//! The server secret that confirmation tokens are derived from, and where it comes from.
//!
//! An outbox row keeps a nonce instead of its token, and the token is the nonce's time prefix
//! followed by `HMAC-SHA256(secret, nonce)` (the first 26 bytes), computed when the email is
//! built (see [`crate::domain::ConfirmationToken`]). The database never holds the
//! secret, so a copy of every database file (WAL and journal included) cannot produce a link.
//!
//! Where the secret comes from, in order:
//!
//! 1. `token.secret` in the configuration (`CONFIRMD_TOKEN__SECRET` in practice), at least 32
//!    characters: what production uses, and what several instances sharing one database must
//!    share, since one instance derives the link that another stored the hash of.
//! 2. The file `token.secret_file`, or `confirmd.secret` next to the database file when that key
//!    is empty.
//! 3. If that file does not exist and `token.generate_secret` is on (the default; the production
//!    configuration turns it off), a new random secret written there with permissions 0600, so a
//!    local run needs no set-up and keeps its links working across restarts.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{KeyInit, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

use crate::{
    config::TokenSettings,
    domain::{ConfirmationToken, TIME_PREFIX, TokenNonce},
    store::Store,
};

/// The shortest secret accepted: 32 characters, as many bytes as the HMAC's output.
pub const MIN_SECRET_LEN: usize = 32;

/// The file name of a generated secret, next to the database file.
const SECRET_FILE: &str = "confirmd.secret";

/// The key that turns a nonce into a token. A `SecretSlice`, so `Debug` prints it redacted and
/// each copy's bytes are wiped when it is dropped.
#[derive(Debug, Clone)]
pub struct TokenKey(SecretSlice<u8>);

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "no token secret: set token.secret (CONFIRMD_TOKEN__SECRET, at least {MIN_SECRET_LEN} characters) or put one in {path}; token.generate_secret is off"
    )]
    Missing { path: String },
    #[error("the token secret in {path} is shorter than {MIN_SECRET_LEN} characters")]
    TooShort { path: String },
    #[error("cannot read or write the token secret at {path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl TokenKey {
    /// A key from configured text (at least [`MIN_SECRET_LEN`] characters, checked by the
    /// configuration).
    pub fn new(secret: &str) -> TokenKey {
        TokenKey(secret.trim().as_bytes().to_vec().into())
    }

    /// The token that the row with this nonce links to.
    pub fn token_for(&self, nonce: &TokenNonce) -> ConfirmationToken {
        let mac = self.mac(nonce);
        let mut token = [0u8; 32];
        token[..TIME_PREFIX].copy_from_slice(&nonce.0[..TIME_PREFIX]);
        token[TIME_PREFIX..].copy_from_slice(&mac[..32 - TIME_PREFIX]);
        ConfirmationToken::from_bytes(&token)
    }

    /// The token a version before the time prefix derived from this nonce: the whole MAC,
    /// stored under its [`legacy_hash`](ConfirmationToken::legacy_hash). For a row queued by
    /// such a version, whose link may be out already (see `Delivery::outgoing`).
    pub fn legacy_token_for(&self, nonce: &TokenNonce) -> ConfirmationToken {
        ConfirmationToken::from_bytes(&self.mac(nonce))
    }

    fn mac(&self, nonce: &TokenNonce) -> [u8; 32] {
        let mut mac = <hmac::Hmac<Sha256>>::new_from_slice(self.0.expose_secret())
            .expect("HMAC takes a key of any length");
        mac.update(&nonce.0);
        mac.finalize().into_bytes().into()
    }

    /// The key as configured, or read from (or generated into) its file: see the module docs.
    pub fn load(settings: &TokenSettings, database_url: &str) -> Result<TokenKey, SecretError> {
        let configured = settings.secret.expose_secret();
        if !configured.trim().is_empty() {
            return Ok(TokenKey::new(configured));
        }
        let path = secret_path(settings, database_url);
        let shown = path.display().to_string();
        let io = |source| SecretError::Io {
            path: shown.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) if text.trim().len() >= MIN_SECRET_LEN => return Ok(TokenKey::new(&text)),
            Ok(_) => return Err(SecretError::TooShort { path: shown }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        if !settings.generate_secret {
            return Err(SecretError::Missing { path: shown });
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        let secret = URL_SAFE_NO_PAD.encode(bytes);
        if let Some(folder) = path.parent()
            && !folder.as_os_str().is_empty()
        {
            std::fs::create_dir_all(folder).map_err(io)?;
        }
        match create_private(&path) {
            Ok(mut file) => {
                file.write_all(format!("{secret}\n").as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(io)?;
                tracing::info!(path = %shown, "generated a token secret");
                Ok(TokenKey::new(&secret))
            }
            // Another process starting on the same database wrote it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(&path).map_err(io)?;
                Ok(TokenKey::new(&text))
            }
            Err(e) => Err(io(e)),
        }
    }
}

/// `token.secret_file`, or `confirmd.secret` in the database file's folder (in the working
/// folder for a PostgreSQL database, which has no file: instances sharing one must share
/// `token.secret` instead).
fn secret_path(settings: &TokenSettings, database_url: &str) -> PathBuf {
    if !settings.secret_file.trim().is_empty() {
        return PathBuf::from(settings.secret_file.trim());
    }
    let database = Store::database_file(database_url).unwrap_or_default();
    database.parent().unwrap_or(Path::new("")).join(SECRET_FILE)
}

/// Creates a new file that only its owner can read.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn settings() -> TokenSettings {
        Settings::defaults().token
    }

    fn url(dir: &Path) -> String {
        format!("sqlite://{}?mode=rwc", dir.join("confirmd.db").display())
    }

    #[test]
    fn one_nonce_gives_one_token_and_another_key_another() {
        let nonce = TokenNonce::generate();
        let key = TokenKey::new(&"k".repeat(32));
        let token = key.token_for(&nonce);
        assert_eq!(token, key.token_for(&nonce));
        assert_eq!(ConfirmationToken::parse(token.expose()).unwrap(), token);
        assert_ne!(token, key.token_for(&TokenNonce::generate()));
        assert_ne!(token, TokenKey::new(&"j".repeat(32)).token_for(&nonce));
        assert!(!format!("{key:?}").contains("kkkk"));
    }

    #[test]
    fn a_local_run_generates_a_private_secret_next_to_the_database_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let nonce = TokenNonce::generate();
        let first = TokenKey::load(&settings(), &url(dir.path())).unwrap();
        let path = dir.path().join("confirmd.secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = TokenKey::load(&settings(), &url(dir.path())).unwrap();
        assert_eq!(first.token_for(&nonce), again.token_for(&nonce));
    }

    #[test]
    fn without_generation_a_missing_secret_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = settings();
        settings.generate_secret = false;
        let error = TokenKey::load(&settings, &url(dir.path())).unwrap_err();
        assert!(matches!(error, SecretError::Missing { .. }), "{error}");
        assert!(!dir.path().join("confirmd.secret").exists());

        settings.secret = "s".repeat(32).into();
        assert!(TokenKey::load(&settings, &url(dir.path())).is_ok());
    }
}
