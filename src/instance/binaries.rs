//! Which PostgreSQL binaries to run, and which major version they are.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::process;

#[derive(Debug, thiserror::Error)]
pub enum BinariesError {
    #[error("no PostgreSQL binaries: {0}")]
    NotFound(String),
    /// pgBackRest is missing or unusable; the message names the fix.
    #[error("{0}")]
    PgBackRest(String),
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

/// The old major's `bin` in the copied installation: the image's own
/// layout (`usr/lib/postgresql/<major>/bin`) or a plain prefix (`bin`).
pub fn old_bin_dir(root: &Path, major: u32) -> PathBuf {
    let debian = root.join(format!("usr/lib/postgresql/{major}/bin"));
    if debian.join("postgres").is_file() {
        debian
    } else {
        root.join("bin")
    }
}

fn on_path() -> Option<PathBuf> {
    find_on_path("postgres")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|dir| dir.join(name).is_file())
}

/// The oldest pgBackRest that reads PostgreSQL 16+ control files (2.45
/// fails with `unexpected control version`) and that Capstan is tested with.
pub const PGBACKREST_MIN: (u32, u32) = (2, 55);

/// `--pgbackrest`, else `pgbackrest` next to the PostgreSQL binaries, else
/// on PATH, else the Debian location (named in the error if it is absent).
pub fn pgbackrest_path(explicit: Option<&Path>, pg_bin_dir: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    let beside = pg_bin_dir
        .map(Path::to_path_buf)
        .or_else(on_path)
        .map(|dir| dir.join("pgbackrest"))
        .filter(|p| p.is_file());
    beside
        .or_else(|| find_on_path("pgbackrest").map(|dir| dir.join("pgbackrest")))
        .unwrap_or_else(|| PathBuf::from("/usr/bin/pgbackrest"))
}

/// `pgBackRest 2.55.1` → (2, 55).
pub fn parse_pgbackrest_version(output: &str) -> Option<(u32, u32)> {
    let version = output.trim().strip_prefix("pgBackRest ")?;
    let mut parts = version.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .ok()
    });
    Some((parts.next()??, parts.next()??))
}

/// What to do when the instance image has no usable pgBackRest: stock
/// PostgreSQL images have none.
const PGBACKREST_FIX: &str = "set spec.postgres.image to an image with pgBackRest 2.55 or newer (images/postgres in the Capstan repository builds one from the official image), or point CAPSTAN_PGBACKREST at one";

/// Checks that `path` is a pgBackRest Capstan can use; its version text.
pub async fn check_pgbackrest(path: &Path) -> Result<String, BinariesError> {
    if !path.is_file() {
        return Err(BinariesError::PgBackRest(format!(
            "backups are configured but pgBackRest is not at {}: {PGBACKREST_FIX}",
            path.display()
        )));
    }
    let out = process::run_tool("pgbackrest", Command::new(path).arg("version"))
        .await
        .map_err(|e| BinariesError::Version {
            bin: path.display().to_string(),
            message: e.to_string(),
        })?;
    match parse_pgbackrest_version(&out) {
        Some(v) if v >= PGBACKREST_MIN => Ok(out.trim().to_string()),
        Some(_) => Err(BinariesError::PgBackRest(format!(
            "{} is {}, too old for backups: {PGBACKREST_FIX}",
            path.display(),
            out.trim()
        ))),
        None => Err(BinariesError::Version {
            bin: path.display().to_string(),
            message: format!("unexpected output {out:?}"),
        }),
    }
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
    fn finds_the_old_binaries_in_either_layout() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(old_bin_dir(dir.path(), 17), dir.path().join("bin"));
        let debian = dir.path().join("usr/lib/postgresql/17/bin");
        std::fs::create_dir_all(&debian).unwrap();
        std::fs::write(debian.join("postgres"), "").unwrap();
        assert_eq!(old_bin_dir(dir.path(), 17), debian);
        assert_eq!(old_bin_dir(dir.path(), 16), dir.path().join("bin"));
    }

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

    #[test]
    fn parses_pgbackrest_versions() {
        assert_eq!(
            parse_pgbackrest_version("pgBackRest 2.55.1\n"),
            Some((2, 55))
        );
        assert_eq!(parse_pgbackrest_version("pgBackRest 2.45"), Some((2, 45)));
        assert!(parse_pgbackrest_version("pgBackRest 2.45").unwrap() < PGBACKREST_MIN);
        assert_eq!(parse_pgbackrest_version("pgBackRest 3.0dev"), Some((3, 0)));
        assert_eq!(parse_pgbackrest_version("postgres 17"), None);
    }

    #[tokio::test]
    async fn a_missing_pgbackrest_names_the_image_fix_and_not_postgresql() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("pgbackrest");
        let message = check_pgbackrest(&missing).await.unwrap_err().to_string();
        assert!(
            message.starts_with(&format!(
                "backups are configured but pgBackRest is not at {}: ",
                missing.display()
            )),
            "{message}"
        );
        assert!(message.contains("spec.postgres.image"), "{message}");
        assert!(message.contains("pgBackRest 2.55 or newer"), "{message}");
        assert!(!message.contains("PostgreSQL binaries"), "{message}");
    }

    #[test]
    fn an_explicit_pgbackrest_wins_and_a_missing_one_names_debians_path() {
        assert_eq!(
            pgbackrest_path(Some(Path::new("/x/pgbackrest")), None),
            PathBuf::from("/x/pgbackrest")
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pgbackrest"), "").unwrap();
        assert_eq!(
            pgbackrest_path(None, Some(dir.path())),
            dir.path().join("pgbackrest")
        );
    }
}
