//! Password Secrets mounted as files. Passwords stay in [`Password`], whose
//! `Debug` never shows them, and reach PostgreSQL only as SCRAM verifiers.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::contract::layout::files;

/// PostgreSQL's default is 4096; far more would be a verifier set by hand
/// that costs too much to check every start (it is replaced instead).
const MAX_CHECKED_ITERATIONS: u32 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret file {path} is missing or unreadable: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret file {0} is empty")]
    Empty(PathBuf),
}

#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// The SCRAM-SHA-256 verifier PostgreSQL stores; safe to send as SQL.
    pub fn scram_verifier(&self) -> String {
        postgres_protocol::password::scram_sha_256(self.0.as_bytes())
    }

    /// Whether `stored` (a role's `pg_authid.rolpassword`) is a SCRAM
    /// verifier of this password. Re-hashing an unchanged password would
    /// pick a new salt, and with it new SCRAM keys: PgBouncer's cached keys
    /// for its server logins would fail until each client logs in again.
    pub fn matches_verifier(&self, stored: &str) -> bool {
        let Some(v) = Verifier::parse(stored) else {
            return false;
        };
        if v.iterations == 0 || v.iterations > MAX_CHECKED_ITERATIONS {
            return false;
        }
        // As PostgreSQL does: SASLprep when the password allows it, the raw
        // bytes otherwise.
        let prepared = match stringprep::saslprep(&self.0) {
            Ok(p) => p.into_owned().into_bytes(),
            Err(_) => self.0.as_bytes().to_vec(),
        };
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(&prepared, &v.salt, v.iterations, &mut salted);
        let client_key = hmac_sha256(&salted, b"Client Key");
        Sha256::digest(client_key).as_slice() == v.stored_key.as_slice()
            && hmac_sha256(&salted, b"Server Key") == v.server_key
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A Secret's value as a password (a trailing newline dropped); None
    /// when empty or not UTF-8.
    pub fn from_secret_value(bytes: &[u8]) -> Option<Password> {
        trimmed(std::str::from_utf8(bytes).ok()?).map(Password)
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        return Vec::new(); // HMAC takes keys of any length
    };
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, base64 parts.
struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl Verifier {
    fn parse(stored: &str) -> Option<Verifier> {
        let rest = stored.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored_key, server_key) = keys.split_once(':')?;
        Some(Verifier {
            iterations: iterations.parse().ok()?,
            salt: STANDARD.decode(salt).ok()?,
            stored_key: STANDARD.decode(stored_key).ok()?,
            server_key: STANDARD.decode(server_key).ok()?,
        })
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Password,
}

fn read_value(path: &Path) -> Result<String, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    trimmed(&text).ok_or_else(|| SecretError::Empty(path.to_path_buf()))
}

/// Secrets written by hand often end with a newline; it is never part of
/// the value. None: nothing is left.
fn trimmed(text: &str) -> Option<String> {
    let value = text.strip_suffix('\n').unwrap_or(text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    (!value.is_empty()).then(|| value.to_string())
}

/// `<dir>/username` and `<dir>/password`.
pub fn read_credentials(dir: &Path) -> Result<Credentials, SecretError> {
    Ok(Credentials {
        username: read_value(&dir.join(files::USERNAME))?,
        password: Password(read_value(&dir.join(files::PASSWORD))?),
    })
}

/// Only the password of a Secret whose user name Capstan fixes itself.
pub fn read_password(dir: &Path) -> Result<Password, SecretError> {
    read_value(&dir.join(files::PASSWORD)).map(Password)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_trimmed_values_and_hides_passwords() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("username"), "app\n").unwrap();
        std::fs::write(dir.path().join("password"), "s3cr3t \n").unwrap();
        let creds = read_credentials(dir.path()).unwrap();
        assert_eq!(creds.username, "app");
        assert_eq!(creds.password.expose(), "s3cr3t ");
        assert!(!format!("{creds:?}").contains("s3cr3t"));
        assert!(
            creds
                .password
                .scram_verifier()
                .starts_with("SCRAM-SHA-256$4096:")
        );
    }

    #[test]
    fn a_verifier_matches_only_its_own_password() {
        let password = Password("correct horse".into());
        let verifier = password.scram_verifier();
        assert!(password.matches_verifier(&verifier));
        // A second hash of the same password has another salt yet matches.
        assert_ne!(password.scram_verifier(), verifier);
        assert!(password.matches_verifier(&password.scram_verifier()));
        assert!(!Password("correct horse ".into()).matches_verifier(&verifier));
        assert!(!password.matches_verifier(&Password("other".into()).scram_verifier()));
    }

    #[test]
    fn verifiers_made_by_postgresql_are_understood() {
        // `ALTER ROLE postgres PASSWORD '…'` then `SELECT rolpassword` on
        // PostgreSQL 15.
        let plain = "SCRAM-SHA-256$4096:m9OWy/L5Ekx2sQnrfrxYFQ==$B/kBnWGwnPlwLzAqXISUzAHZXrh0RqlcD6iBVp+Qgl8=:7HAiCcHR0nTqg9Qt2ZpBaWTbpbWpbSV1rYoZFhmQNqw=";
        assert!(Password("postgres".into()).matches_verifier(plain));
        assert!(!Password("postgres2".into()).matches_verifier(plain));
        // E'p\u00e4ss\u2003word': SASLprep maps the em space to a space.
        let prepped = "SCRAM-SHA-256$4096:eGmKlIGxjhauh0ItEqeosA==$8JnQTnpF1wkI7d0eY1Q4R0AJHPq8UiPHQDYG2KqudX8=:5WfV8J6j/jR+XQC670SKsCasxZTxn39ILWkAma4cLms=";
        assert!(Password("p\u{e4}ss\u{2003}word".into()).matches_verifier(prepped));
        assert!(Password("p\u{e4}ss word".into()).matches_verifier(prepped));
        assert!(!Password("pass word".into()).matches_verifier(prepped));
    }

    #[test]
    fn other_stored_forms_never_match() {
        let password = Password("pw".into());
        for stored in [
            "",
            "md5a3556571e93b0d20722ba62be61e8c2d",
            "SCRAM-SHA-256$4096:notbase64$x:y",
            "SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$99999999:c2FsdA==$AAAA:AAAA",
            "SCRAM-SHA-256$4096:c2FsdA==",
        ] {
            assert!(!password.matches_verifier(stored), "{stored}");
        }
    }

    #[test]
    fn missing_and_empty_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_credentials(dir.path()).unwrap_err();
        assert!(err.to_string().contains("username"), "{err}");
        std::fs::write(dir.path().join("password"), "\n").unwrap();
        let err = read_password(dir.path()).unwrap_err();
        assert!(matches!(err, SecretError::Empty(_)), "{err}");
    }
}
