//! Validate: turn a `PostgresCluster` and what was observed into a checked
//! [`Model`], or an error naming the field and the fix.
//!
//! The CRD's CEL rules refuse most bad specs at admission; these checks catch
//! what got past them (an API server without CEL, objects created before a
//! rule existed) and what admission cannot see (missing Secrets).

use crate::api::{PostgresCluster, TlsMode, defaults, limits};
use crate::contract::instance::VolumeUsage;
use crate::contract::layout::files;
use crate::pooler::managed as pgbouncer_managed;
use crate::postgres::parameters as postgres_managed;
use crate::resources::labels;
use crate::resources::model::{
    ImageCandidate, Images, MajorUpgrade, Model, UpgradeFrom, UpgradeStage,
};
use crate::resources::quantity;

use super::observe::Observed;
use super::upgrade;

/// Stalled reason while `spec.backup` asks for what this build cannot do
/// yet (volume repositories, backups from a replica) or cannot be carried
/// out as written.
pub const BACKUP_UNSUPPORTED: &str = "BackupUnsupported";

/// A spec that cannot be applied as written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Path of the offending field, e.g. `spec.postgres.parameters`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
    /// The spec names an object that is missing or incomplete: creating or
    /// fixing that object (not only a spec change) resolves it, so the
    /// operator looks again from time to time.
    pub awaits_object: bool,
}

fn invalid(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_string(),
        message: message.into(),
        awaits_object: false,
    }
}

fn missing_object(field: &str, message: impl Into<String>) -> SpecError {
    SpecError {
        awaits_object: true,
        ..invalid(field, message)
    }
}

/// Something that can proceed only partly: reported as Stalled while the
/// rest of the cluster keeps being reconciled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocked {
    pub reason: &'static str,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Validated {
    pub model: Model,
    pub blocked: Option<Blocked>,
}

/// Everything [`validate`] checks except what needs the cluster's
/// environment (user-provided Secrets): what `capstan render` can check
/// offline.
pub fn validate_offline(
    cluster: &PostgresCluster,
    operator_image: &str,
) -> Result<Validated, SpecError> {
    check(cluster, &Observed::default(), operator_image, false)
}

pub fn validate(
    cluster: &PostgresCluster,
    observed: &Observed,
    operator_image: &str,
) -> Result<Validated, SpecError> {
    check(cluster, observed, operator_image, true)
}

fn check(
    cluster: &PostgresCluster,
    observed: &Observed,
    operator_image: &str,
    environment: bool,
) -> Result<Validated, SpecError> {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let namespace = cluster
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let uid = cluster.metadata.uid.clone().unwrap_or_default();
    let spec = &cluster.spec;

    if name.is_empty() || name.len() > limits::CLUSTER_NAME_MAX || !is_dns_label(&name) {
        return Err(invalid(
            "metadata.name",
            format!(
                "must be at most {} lowercase letters, digits and '-', starting with a letter; create the cluster under a shorter name",
                limits::CLUSTER_NAME_MAX
            ),
        ));
    }
    if !limits::INSTANCES.contains(&spec.instances) {
        return Err(invalid(
            "spec.instances",
            format!(
                "{} is out of range; use {} to {}",
                spec.instances,
                limits::INSTANCES.start(),
                limits::INSTANCES.end()
            ),
        ));
    }
    if !limits::POSTGRES_VERSIONS.contains(&spec.postgres.version) {
        return Err(invalid(
            "spec.postgres.version",
            format!(
                "{} is not supported; use {}",
                spec.postgres.version,
                limits::spelled(&limits::POSTGRES_VERSIONS)
            ),
        ));
    }
    let pg_managed = postgres_managed::managed_among(spec.postgres.parameters.keys());
    if !pg_managed.is_empty() {
        return Err(invalid(
            "spec.postgres.parameters",
            format!(
                "{} is managed by Capstan and may not be set; remove it",
                pg_managed.join(", ")
            ),
        ));
    }
    let pgb_managed: Vec<&str> = spec
        .proxy
        .pgbouncer
        .parameters
        .keys()
        .filter(|k| pgbouncer_managed::is_managed(k))
        .map(String::as_str)
        .collect();
    if !pgb_managed.is_empty() {
        return Err(invalid(
            "spec.proxy.pgbouncer.parameters",
            format!(
                "{} is managed by Capstan and may not be set; remove it",
                pgb_managed.join(", ")
            ),
        ));
    }
    for (field, params) in [
        ("spec.postgres.parameters", &spec.postgres.parameters),
        (
            "spec.proxy.pgbouncer.parameters",
            &spec.proxy.pgbouncer.parameters,
        ),
    ] {
        if let Some((k, _)) = params
            .iter()
            .find(|(k, v)| !is_parameter_name(k) || v.contains(['\n', '\r']))
        {
            return Err(invalid(
                field,
                format!(
                    "{k:?} has an invalid name or a multi-line value; use one line per setting"
                ),
            ));
        }
    }
    if let Some(line) = spec.postgres.hba.iter().find(|l| !is_hostssl_rule(l)) {
        return Err(invalid(
            "spec.postgres.hba",
            format!(
                "{line:?} is not a single-line hostssl rule; Capstan accepts TLS connections only"
            ),
        ));
    }
    for (field, storage) in [
        ("spec.storage.size", Some(&spec.storage)),
        ("spec.walStorage.size", spec.wal_storage.as_ref()),
    ] {
        if let Some(storage) = storage {
            match quantity::to_units(&storage.size.0) {
                Ok(0) | Err(_) => {
                    return Err(invalid(
                        field,
                        format!(
                            "{:?} is not a positive size; use a quantity such as 10Gi",
                            storage.size.0
                        ),
                    ));
                }
                Ok(_) => {}
            }
        }
    }
    let pgb = &spec.proxy.pgbouncer;
    if !limits::POOLER_REPLICAS.contains(&pgb.replicas) {
        return Err(invalid(
            "spec.proxy.pgbouncer.replicas",
            format!(
                "use {} to {}",
                limits::POOLER_REPLICAS.start(),
                limits::POOLER_REPLICAS.end()
            ),
        ));
    }
    if pgb.max_client_conn < limits::POOL_SIZE_MIN || pgb.default_pool_size < limits::POOL_SIZE_MIN
    {
        return Err(invalid(
            "spec.proxy.pgbouncer",
            format!(
                "maxClientConn and defaultPoolSize must be at least {}",
                limits::POOL_SIZE_MIN
            ),
        ));
    }
    let failover = &spec.failover;
    if !limits::DETECTION_SECONDS.contains(&failover.detection_seconds) {
        return Err(invalid(
            "spec.failover.detectionSeconds",
            format!(
                "{} is out of range; use {} to {}",
                failover.detection_seconds,
                limits::DETECTION_SECONDS.start(),
                limits::DETECTION_SECONDS.end()
            ),
        ));
    }
    if failover.max_lag_bytes < limits::MAX_LAG_BYTES_MIN {
        return Err(invalid("spec.failover.maxLagBytes", "must not be negative"));
    }
    validate_tls(cluster, observed, environment)?;
    // A source this build cannot read: creating the cluster at all would
    // run initdb and give an empty database where a restored one was asked for.
    if let Some(e) =
        spec.bootstrap.restore.as_ref().and_then(|r| {
            repository::unsupported_restore(r, spec.backup.as_ref(), &namespace, &name)
        })
    {
        return Err(e);
    }

    // The data files decide which major runs: a raised version is a major
    // upgrade, carried out by the operation pipeline.
    let data_version = cluster
        .status
        .as_ref()
        .and_then(|s| s.postgres_version)
        .unwrap_or(spec.postgres.version);
    let mut blocked = None;
    if spec.postgres.version < data_version {
        return Err(invalid(
            "spec.postgres.version",
            format!(
                "the data is at PostgreSQL {data_version}; it cannot be downgraded to {}: set it back to {data_version} (restore a backup into a new cluster to go back further)",
                spec.postgres.version
            ),
        ));
    }
    let spec_image = spec
        .postgres
        .image
        .clone()
        .unwrap_or_else(|| defaults::postgres_image(spec.postgres.version));
    let record = cluster.status.as_ref().and_then(|s| s.upgrade.as_ref());
    let generation = cluster.metadata.generation.unwrap_or_default();
    // Once the old primary was stopped for an upgrade, the upgrade finishes
    // whatever the spec says meanwhile: stopping half-way is what could lose
    // the data (pg_upgrade --link past its point of no return).
    let committed = record.filter(|r| {
        r.phase == upgrade::UPGRADING
            && r.primary_stopped_at.is_some()
            && r.to_version > data_version
    });
    let (wanted, spec_image) = match committed {
        Some(r) if r.to_version != spec.postgres.version || r.image != spec_image => {
            blocked = Some(Blocked {
                reason: "MajorUpgradeInProgress",
                message: format!(
                    "the upgrade to PostgreSQL {} ({}) has stopped the primary and finishes first; set spec.postgres.version back to {} and the image back to {} (change them after it completes)",
                    r.to_version, r.image, r.to_version, r.image
                ),
            });
            (r.to_version, r.image.clone())
        }
        _ => (spec.postgres.version, spec_image),
    };
    let (postgres_image, upgrade) = if wanted > data_version {
        let old_image = record
            .filter(|r| r.to_version == wanted && r.phase == upgrade::UPGRADING)
            .map(|r| r.old_image.clone())
            .or_else(|| running_image(observed))
            .unwrap_or_else(|| defaults::postgres_image(data_version));
        match record {
            Some(r) if r.phase == upgrade::FAILED && r.generation == generation => {
                blocked = Some(Blocked {
                    reason: "MajorUpgradeFailed",
                    message: format!(
                        "the upgrade from PostgreSQL {data_version} to {} failed and changed nothing: {}. The cluster runs PostgreSQL {data_version}; set spec.postgres.version back to {data_version}, or fix the cause and change the spec (e.g. the image) to try again",
                        wanted, r.message
                    ),
                });
                (old_image, None)
            }
            _ => {
                let stopped = record.is_some_and(|r| {
                    r.phase == upgrade::UPGRADING
                        && r.to_version == wanted
                        && r.primary_stopped_at.is_some()
                });
                let stage = if stopped {
                    UpgradeStage::PrimaryStopped
                } else {
                    UpgradeStage::Preparing
                };
                let upgrade = MajorUpgrade {
                    from: data_version,
                    to: wanted,
                    image: spec_image,
                    old_image: old_image.clone(),
                    stage,
                    generation,
                };
                (old_image, Some(upgrade))
            }
        }
    } else {
        let upgrade = record
            .filter(|r| r.phase == upgrade::RECLONING && r.to_version == data_version)
            .map(|r| MajorUpgrade {
                from: r.from_version,
                to: r.to_version,
                image: spec_image.clone(),
                old_image: r.old_image.clone(),
                stage: UpgradeStage::Recloning,
                generation,
            });
        (spec_image, upgrade)
    };
    let gate = image_gate(
        postgres_image,
        upgrade,
        ImageFacts {
            data_version,
            running: running_image(observed).as_deref(),
            upgrading: record.is_some_and(|r| r.phase == upgrade::UPGRADING),
            checked: cluster.status.as_ref().and_then(|s| s.image_check.as_ref()),
            generation,
            primary_volume: observed
                .reports
                .iter()
                .find(|(_, r)| r.role == crate::contract::instance::Role::Primary)
                .and_then(|(name, r)| Some((name.as_str(), r.data_volume?))),
        },
    );
    let (postgres_image, upgrade, image_check) = (gate.image, gate.upgrade, gate.check);
    if gate.blocked.is_some() && blocked.is_none() {
        blocked = gate.blocked;
    }

    // What this build cannot back up to waits (Stalled), and nothing of
    // spec.backup is rendered meanwhile; the database keeps being run.
    let mut spec = spec.clone();
    if let Some(message) = spec
        .backup
        .as_ref()
        .and_then(repository::unsupported_backup)
        && blocked.is_none()
    {
        blocked = Some(Blocked {
            reason: BACKUP_UNSUPPORTED,
            message,
        });
        spec.backup = None;
    }

    Ok(Validated {
        model: Model {
            name,
            namespace,
            uid,
            spec,
            images: Images {
                operator: operator_image.to_string(),
                pooler_agent: pooler_agent_image(observed)
                    .unwrap_or_else(|| operator_image.to_string()),
                postgres: postgres_image,
                pgbouncer: pgb
                    .image
                    .clone()
                    .unwrap_or_else(|| defaults::PGBOUNCER_IMAGE.to_string()),
            },
            postgres_version: data_version,
            image_check,
            upgrade,
        },
        blocked,
    })
}

fn validate_tls(
    cluster: &PostgresCluster,
    observed: &Observed,
    environment: bool,
) -> Result<(), SpecError> {
    let tls = &cluster.spec.tls;
    match (tls.mode, &tls.provided) {
        (TlsMode::Managed, None) => Ok(()),
        (TlsMode::Managed, Some(_)) => Err(invalid(
            "spec.tls.provided",
            "is set but spec.tls.mode is Managed; remove it or set mode: Provided",
        )),
        (TlsMode::Provided, None) => Err(invalid(
            "spec.tls.provided",
            "is required when spec.tls.mode is Provided; name your CA, server, replication and pooler Secrets",
        )),
        (TlsMode::Provided, Some(p)) => {
            // Admission refuses these names; objects admitted before the
            // rule named the `-tls` Secrets get here.
            let name = cluster.metadata.name.as_deref().unwrap_or_default();
            for (field, secret) in [
                ("caSecretName", &p.ca_secret_name),
                ("serverSecretName", &p.server_secret_name),
                ("replicationSecretName", &p.replication_secret_name),
                ("poolerSecretName", &p.pooler_secret_name),
            ] {
                if limits::OWN_SECRET_SUFFIXES
                    .iter()
                    .any(|suffix| *secret == format!("{name}-{suffix}"))
                {
                    return Err(invalid(
                        &format!("spec.tls.provided.{field}"),
                        format!(
                            "is {secret:?}, a Secret Capstan writes for this cluster (provided certificates are copied into <name>-server-tls, -replication-tls and -pooler-tls); rename your Secret, e.g. {name}-{}-cert, and set that name here",
                            field.trim_end_matches("SecretName")
                        ),
                    ));
                }
            }
            if !environment {
                return Ok(());
            }
            let checks = [
                (
                    "spec.tls.provided.caSecretName",
                    &p.ca_secret_name,
                    &[files::CA_CRT][..],
                ),
                (
                    "spec.tls.provided.serverSecretName",
                    &p.server_secret_name,
                    &[files::TLS_CRT, files::TLS_KEY][..],
                ),
                (
                    "spec.tls.provided.replicationSecretName",
                    &p.replication_secret_name,
                    &[files::TLS_CRT, files::TLS_KEY][..],
                ),
                (
                    "spec.tls.provided.poolerSecretName",
                    &p.pooler_secret_name,
                    &[files::TLS_CRT, files::TLS_KEY][..],
                ),
            ];
            for (field, secret, keys) in checks {
                let Some(facts) = observed.secrets.get(secret) else {
                    return Err(missing_object(
                        field,
                        format!(
                            "Secret {secret:?} does not exist in this namespace; create it or fix the name"
                        ),
                    ));
                };
                if let Some(missing) = keys.iter().find(|k| !facts.keys.contains(**k)) {
                    return Err(missing_object(
                        field,
                        format!("Secret {secret:?} has no {missing:?} key"),
                    ));
                }
            }
            Ok(())
        }
    }
}

/// Image of the PostgreSQL container of a running instance pod.
fn running_image(observed: &Observed) -> Option<String> {
    observed
        .pods
        .iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(labels::INSTANCE))
        })
        .find_map(|p| {
            p.spec
                .as_ref()?
                .containers
                .iter()
                .find(|c| c.name == "postgres")?
                .image
                .clone()
        })
}

fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.first().is_some_and(u8::is_ascii_lowercase)
        && bytes
            .last()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

fn is_parameter_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

fn is_hostssl_rule(line: &str) -> bool {
    (line.starts_with("hostssl ") || line.starts_with("hostssl\t")) && !line.contains(['\n', '\r'])
}

mod repository;

#[cfg(test)]
mod tests;

/// The agent image the pooler Deployment has (see `Images::pooler_agent`).
fn pooler_agent_image(observed: &Observed) -> Option<String> {
    observed
        .pooler
        .as_ref()?
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .iter()
        .find(|c| c.name == crate::resources::instance::BINARY_CONTAINER)?
        .image
        .clone()
}

/// What decides whether a new PostgreSQL image must be tried first.
struct ImageFacts<'a> {
    data_version: i32,
    /// The image the instance pods run (None before the first pod).
    running: Option<&'a str>,
    /// A major upgrade was started already (it is past its checks).
    upgrading: bool,
    checked: Option<&'a crate::api::ImageCheckStatus>,
    generation: i64,
    /// The primary's name and its data volume, as its manager reports it.
    primary_volume: Option<(&'a str, VolumeUsage)>,
}

struct Gate {
    image: String,
    upgrade: Option<MajorUpgrade>,
    check: Option<ImageCandidate>,
    blocked: Option<Blocked>,
}

/// A new image of the running major, or a major upgrade's image, is run
/// by an image-check pod before any instance gets it. Until it passed, the
/// instances keep their image (and an upgrade does not start); a failed
/// check stalls the cluster with the image's own words, and is tried again
/// after the next change to the spec.
fn image_gate(image: String, upgrade: Option<MajorUpgrade>, facts: ImageFacts<'_>) -> Gate {
    let candidate = match (&upgrade, facts.running) {
        (Some(u), _) if u.stage == UpgradeStage::Preparing && !facts.upgrading => {
            Some(ImageCandidate {
                image: u.image.clone(),
                major: u.to,
                upgrade_from: Some(UpgradeFrom {
                    major: u.from,
                    old_image: u.old_image.clone(),
                }),
            })
        }
        (None, Some(running)) if running != image => Some(ImageCandidate {
            image: image.clone(),
            major: facts.data_version,
            upgrade_from: None,
        }),
        _ => None,
    };
    let Some(candidate) = candidate else {
        return Gate {
            image,
            upgrade,
            check: None,
            blocked: None,
        };
    };
    let result = facts.checked.filter(|c| {
        c.image == candidate.image
            && c.major == candidate.major
            && c.upgrade_from == candidate.upgrade_from.as_ref().map(|u| u.major)
    });
    // Nothing moves: the image the instances run stays, no upgrade starts.
    let keep = match (&upgrade, facts.running) {
        (Some(u), _) => u.old_image.clone(),
        (None, Some(running)) => running.to_string(),
        (None, None) => image.clone(),
    };
    if let Some(passed) = result.filter(|c| c.passed) {
        let short = passed
            .link_bytes
            .map(|b| u64::try_from(b).unwrap_or(0))
            .zip(facts.primary_volume)
            .and_then(|(link, (primary, volume))| short_of_space(link, primary, volume));
        return match short {
            None => Gate {
                image,
                upgrade,
                check: None,
                blocked: None,
            },
            Some(message) => Gate {
                image: keep.clone(),
                upgrade: None,
                check: None,
                blocked: Some(Blocked {
                    reason: "UpgradeNeedsSpace",
                    message: format!("{message}. Nothing was changed: the instances run {keep}"),
                }),
            },
        };
    }
    match result.filter(|c| c.generation == facts.generation) {
        Some(failed) => {
            let back = if candidate.major > facts.data_version {
                format!(
                    "fix what it names, or set spec.postgres.image to another image of PostgreSQL {}, or spec.postgres.version back to {}",
                    candidate.major, facts.data_version
                )
            } else {
                format!(
                    "set spec.postgres.image to an image of PostgreSQL {} (or back to {keep})",
                    candidate.major
                )
            };
            Gate {
                image: keep.clone(),
                upgrade: None,
                check: None,
                blocked: Some(
                    match candidate
                        .upgrade_from
                        .as_ref()
                        .filter(|_| failed.rehearsal_failed)
                    {
                        Some(from) => Blocked {
                            reason: "UpgradeCheckFailed",
                            message: format!(
                                "the upgrade from PostgreSQL {} to {} with image {} was tried on a copy of the primary and failed: {}. Nothing was changed: the instances run {keep}; {back}",
                                from.major, candidate.major, candidate.image, failed.message
                            ),
                        },
                        None => Blocked {
                            reason: "ImageCheckFailed",
                            message: format!(
                                "image {} cannot be used for PostgreSQL {}: {}. Nothing was changed: the instances run {keep}; {back}",
                                candidate.image, candidate.major, failed.message
                            ),
                        },
                    },
                ),
            }
        }
        None => Gate {
            image: keep,
            upgrade: None,
            check: Some(candidate),
            blocked: None,
        },
    }
}

/// Free space `pg_upgrade --link` needs on the primary's data volume
/// besides what it wrote in the rehearsal: a quarter more, and room for
/// the WAL the primary writes meanwhile.
const UPGRADE_SPACE_MARGIN: u64 = 256 * 1024 * 1024;

/// Why the primary's data volume is too small for the upgrade, if it is.
fn short_of_space(link_bytes: u64, primary: &str, volume: VolumeUsage) -> Option<String> {
    let needed = link_bytes
        .saturating_add(link_bytes / 4)
        .saturating_add(UPGRADE_SPACE_MARGIN);
    let mib = |b: u64| b.div_ceil(1024 * 1024);
    (volume.available_bytes < needed).then(|| {
        format!(
            "pg_upgrade --link needs about {} MiB free on the data volume of the primary {primary} (rehearsed on a copy: it writes {} MiB, plus a margin), but {} MiB of {} MiB are free; raise spec.storage.size or free space on it",
            mib(needed),
            mib(link_bytes),
            mib(volume.available_bytes),
            mib(volume.size_bytes)
        )
    })
}

/// PostgreSQL refused `spec.postgres.parameters` on an instance (its
/// manager asked `postgres -C` before writing them): every instance keeps
/// the parameters it runs with, and the cluster says why until the spec
/// changes.
pub fn refused_parameters(
    reports: &std::collections::BTreeMap<String, crate::contract::instance::InstanceReport>,
) -> Option<Blocked> {
    let (instance, words) = reports
        .iter()
        .find_map(|(name, r)| Some((name, r.parameters_refused.as_deref()?)))?;
    Some(Blocked {
        reason: "ParametersRefused",
        message: format!(
            "PostgreSQL refuses spec.postgres.parameters ({instance}: {words}); every instance keeps running with the parameters it has: fix the value in spec.postgres.parameters"
        ),
    })
}
