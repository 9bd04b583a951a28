//! Password Secrets mounted as files. Passwords stay in [`Password`], whose
//! `Debug` never shows them, and reach PostgreSQL only as SCRAM verifiers.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::contract::layout::files;

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

    pub fn expose(&self) -> &str {
        &self.0
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
    // Secrets written by hand often end with a newline; it is never part of the value.
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.is_empty() {
        return Err(SecretError::Empty(path.to_path_buf()));
    }
    Ok(value.to_string())
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
    fn missing_and_empty_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_credentials(dir.path()).unwrap_err();
        assert!(err.to_string().contains("username"), "{err}");
        std::fs::write(dir.path().join("password"), "\n").unwrap();
        let err = read_password(dir.path()).unwrap_err();
        assert!(matches!(err, SecretError::Empty(_)), "{err}");
    }
}
