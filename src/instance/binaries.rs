//! Which PostgreSQL binaries to run, and which major version they are.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::process;

#[derive(Debug, thiserror::Error)]
pub enum BinariesError {
    #[error("no PostgreSQL binaries: {0}")]
    NotFound(String),
    #[error("cannot tell the PostgreSQL version of {bin}: {message}")]
    Version { bin: String, message: String },
    #[error(
        "the binaries in {dir} are PostgreSQL {found}, but the cluster runs PostgreSQL {expected}; use the image of version {expected}"
    )]
    WrongMajor {
        dir: String,
        found: u32,
        expected: i32,
    },
}

#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
    pub major: u32,
    pub version: String,
}

impl Binaries {
    pub fn tool(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `--pg-bin-dir`, else `postgres` on PATH, else the Debian location.
    pub async fn resolve(explicit: Option<&Path>, version: i32) -> Result<Self, BinariesError> {
        let dir = match explicit {
            Some(dir) => dir.to_path_buf(),
            None => on_path()
                .unwrap_or_else(|| PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"))),
        };
        let bin = dir.join("postgres");
        if !bin.is_file() {
            return Err(BinariesError::NotFound(format!(
                "{} does not exist; set --pg-bin-dir",
                bin.display()
            )));
        }
        let out = process::run_tool("postgres", Command::new(&bin).arg("--version"))
            .await
            .map_err(|e| BinariesError::Version {
                bin: bin.display().to_string(),
                message: e.to_string(),
            })?;
        let (major, text) = parse_version(&out).ok_or_else(|| BinariesError::Version {
            bin: bin.display().to_string(),
            message: format!("unexpected output {out:?}"),
        })?;
        if i64::from(major) != i64::from(version) {
            return Err(BinariesError::WrongMajor {
                dir: dir.display().to_string(),
                found: major,
                expected: version,
            });
        }
        Ok(Self {
            dir,
            major,
            version: text,
        })
    }
}

fn on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| dir.join("postgres").is_file())
}

/// `postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)` → (15, "15.20").
pub fn parse_version(output: &str) -> Option<(u32, String)> {
    let version = output
        .split_once("(PostgreSQL)")?
        .1
        .split_whitespace()
        .next()?;
    let major = version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((major, version.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postgres_version_lines() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)\n"),
            Some((15, "15.20".into()))
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 18.6"),
            Some((18, "18.6".into()))
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 19beta1"),
            Some((19, "19beta1".into()))
        );
        assert_eq!(parse_version("bash 5"), None);
    }
}
