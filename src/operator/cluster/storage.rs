//! Volumes: the size each claim asks for (the spec's, grown by `autoGrow`,
//! never less than it has), whether its StorageClass lets it grow, and
//! which instances wait for a new pod to finish a file-system resize.
//! Pure, so every rule is unit-tested.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::observe::Observed;
use super::validate::Blocked;
use crate::api::{AutoGrowSpec, StorageSpec};
use crate::contract::instance::VolumeUsage;
use crate::resources::model::Model;
use crate::resources::{instance, labels, quantity};

/// The claim condition of a volume whose file system grows only when a pod
/// mounts it next.
pub const FILE_SYSTEM_RESIZE_PENDING: &str = "FileSystemResizePending";

/// Which volume of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Data,
    Wal,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Data => "data",
            Kind::Wal => "wal",
        }
    }

    fn of(claim: &PersistentVolumeClaim) -> Option<Kind> {
        match claim.metadata.labels.as_ref()?.get(VOLUME_LABEL)?.as_str() {
            "data" => Some(Kind::Data),
            "wal" => Some(Kind::Wal),
            _ => None,
        }
    }

    fn spec(self, model: &Model) -> Option<&StorageSpec> {
        match self {
            Kind::Data => Some(&model.spec.storage),
            Kind::Wal => model.spec.wal_storage.as_ref(),
        }
    }
}

/// Label of an instance claim naming its volume (`data`, `wal`).
pub const VOLUME_LABEL: &str = "capstan.dev/volume";

/// One claim as observed and decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Volume {
    pub claim: String,
    pub instance: String,
    pub kind: Kind,
    /// What the claim asks for after this reconcile.
    pub request: Quantity,
    /// What the storage system provides (`status.capacity`).
    pub capacity: Option<Quantity>,
    /// The file system as its instance reported it.
    pub usage: Option<VolumeUsage>,
    /// `Resizing` (asked, not provided yet) or `FileSystemResizePending`
    /// (provided, the file system grows when a new pod mounts it).
    pub resize: Option<&'static str>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub volumes: Vec<Volume>,
    /// A growth the StorageClass does not allow (nothing was patched).
    pub refused: Option<Blocked>,
    /// Volumes at their `autoGrow.limit` and past the threshold.
    pub full: Vec<String>,
    /// Instances whose pod must be re-created to grow a file system.
    pub restart: BTreeSet<String>,
    /// What autoGrow raised in this reconcile, in words for an Event.
    pub grown: Vec<String>,
}

impl Decision {
    /// The size to ask for in claim `name`, if decided here.
    pub fn request(&self, name: &str) -> Option<&Quantity> {
        self.volumes
            .iter()
            .find(|v| v.claim == name)
            .map(|v| &v.request)
    }

    /// What `Degraded` says about full volumes.
    pub fn full_message(&self) -> Option<String> {
        (!self.full.is_empty()).then(|| self.full.join("; "))
    }
}

fn units(q: &Quantity) -> Option<u128> {
    quantity::to_units(&q.0).ok()
}

fn capacity(claim: &PersistentVolumeClaim) -> Option<&Quantity> {
    claim.status.as_ref()?.capacity.as_ref()?.get("storage")
}

fn resize_pending(claim: &PersistentVolumeClaim) -> bool {
    pending_since(claim).is_some()
}

/// Percent of the file system in use.
fn used_percent(u: &VolumeUsage) -> f64 {
    if u.size_bytes == 0 {
        return 0.0;
    }
    (u.size_bytes.saturating_sub(u.available_bytes)) as f64 * 100.0 / u.size_bytes as f64
}

fn bytes_text(units: u128) -> String {
    const GI: u128 = 1 << 30;
    const MI: u128 = 1 << 20;
    if units.is_multiple_of(GI) {
        format!("{}Gi", units / GI)
    } else if units.is_multiple_of(MI) {
        format!("{}Mi", units / MI)
    } else {
        units.to_string()
    }
}

/// The size autoGrow asks for, when `usage` passed its threshold and the
/// last growth is done (the file system has the capacity asked for).
fn grown(
    auto: &AutoGrowSpec,
    have: u128,
    capacity: Option<u128>,
    pending: bool,
    usage: Option<&VolumeUsage>,
) -> Option<u128> {
    let usage = usage?;
    let settled = !pending && capacity.is_some_and(|c| c >= have);
    // A file system a little smaller than its claim (metadata, rounding) is
    // grown; one still at an older, smaller size is not grown again.
    let fs_caught_up = (usage.size_bytes as f64) >= 0.9 * have as f64;
    if !settled || !fs_caught_up || used_percent(usage) < f64::from(auto.threshold) {
        return None;
    }
    let limit = units(&auto.limit)?;
    let step = units(&auto.increment)?;
    (have < limit).then(|| (have + step).min(limit))
}

/// Instances with a claim whose file system grows only in a new pod, and
/// whose pod is older than that news (a pod made since is the new one: the
/// kubelet grows the file system as it mounts it, then clears the
/// condition).
pub fn waiting_for_pod(observed: &Observed) -> BTreeSet<String> {
    observed
        .pvcs
        .iter()
        .filter_map(|c| {
            let since = pending_since(c)?;
            let instance = c.metadata.labels.as_ref()?.get(labels::INSTANCE)?;
            let pod_created = observed
                .pod(instance)
                .and_then(|p| p.metadata.creation_timestamp.as_ref())
                .map(|t| t.0);
            pod_created
                .is_some_and(|created| since.is_none_or(|s| created <= s))
                .then(|| instance.clone())
        })
        .collect()
}

/// `Some(when)` while the claim waits for a file-system resize (`when`
/// unknown: `Some(None)`).
fn pending_since(claim: &PersistentVolumeClaim) -> Option<Option<jiff::Timestamp>> {
    claim
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == FILE_SYSTEM_RESIZE_PENDING && c.status == "True")
        .map(|c| c.last_transition_time.as_ref().map(|t| t.0))
}

pub fn decide(model: &Model, observed: &Observed) -> Decision {
    let mut d = Decision::default();
    let mut refused = BTreeMap::<String, Vec<String>>::new();
    for claim in &observed.pvcs {
        let (Some(name), Some(kind)) = (claim.metadata.name.clone(), Kind::of(claim)) else {
            continue;
        };
        let Some(instance) = claim
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::INSTANCE))
            .cloned()
        else {
            continue;
        };
        let Some(spec) = kind.spec(model) else {
            continue;
        };
        let report = observed.reports.get(&instance);
        let usage = report.and_then(|r| match kind {
            Kind::Data => r.data_volume,
            Kind::Wal => r.wal_volume,
        });
        let Some(have) = instance::requested_storage(claim).and_then(units) else {
            continue;
        };
        let cap = capacity(claim).and_then(units);
        let pending = resize_pending(claim);
        let by_spec = units(&spec.size).unwrap_or(have);
        let by_growth = spec
            .auto_grow
            .as_ref()
            .and_then(|a| grown(a, have, cap, pending, usage.as_ref()));
        let mut want = have.max(by_spec).max(by_growth.unwrap_or(0));
        let grown_by_auto = by_growth.is_some_and(|g| g == want && g > by_spec);
        if want > have {
            let class = claim
                .spec
                .as_ref()
                .and_then(|s| s.storage_class_name.clone())
                .unwrap_or_default();
            if observed.storage_classes.get(&class) != Some(&true) {
                refused.entry(class).or_default().push(name.clone());
                want = have;
            }
        }
        if grown_by_auto && want > have {
            d.grown.push(format!(
                "autoGrow: the {} volume of {instance} grows from {} to {} ({:.0}% used)",
                kind.label(),
                bytes_text(have),
                bytes_text(want),
                usage.as_ref().map(used_percent).unwrap_or_default()
            ));
        }
        if let (Some(auto), Some(u)) = (&spec.auto_grow, &usage)
            && units(&auto.limit).is_some_and(|l| have >= l)
            && used_percent(u) >= f64::from(auto.threshold)
        {
            d.full.push(format!(
                "the {} volume of {instance} is {:.0}% full at its autoGrow limit {}{}",
                kind.label(),
                used_percent(u),
                auto.limit.0,
                cause(kind, model.spec.wal_storage.is_some(), report)
            ));
        }
        let resize = if pending {
            Some(FILE_SYSTEM_RESIZE_PENDING)
        } else if cap.is_none_or(|c| c < want) {
            Some("Resizing")
        } else {
            None
        };
        d.volumes.push(Volume {
            claim: name,
            instance,
            kind,
            request: if want == have {
                instance::requested_storage(claim)
                    .cloned()
                    .unwrap_or_else(|| Quantity(bytes_text(want)))
            } else {
                Quantity(bytes_text(want))
            },
            capacity: capacity(claim).cloned(),
            usage,
            resize,
        });
    }
    d.restart = waiting_for_pod(observed);
    if !refused.is_empty() {
        let what: Vec<String> = refused
            .iter()
            .map(|(class, claims)| {
                let class = if class.is_empty() {
                    "(none)".to_string()
                } else {
                    format!("{class:?}")
                };
                format!("StorageClass {class} of {}", claims.join(", "))
            })
            .collect();
        d.refused = Some(Blocked {
            reason: "VolumeExpansionNotAllowed",
            message: format!(
                "the volumes cannot grow: {} does not allow volume expansion; nothing was changed. Set allowVolumeExpansion: true on the class if its driver can expand volumes, or move the data to a cluster on a class that can (a new cluster restored from a backup)",
                what.join("; ")
            ),
        });
    }
    d
}

/// Why a volume holding WAL fills, when the instance manager's report says:
/// archiving failing (PostgreSQL keeps every segment until it is
/// archived) or a replication slot nobody streams from.
fn cause(
    kind: Kind,
    separate_wal: bool,
    report: Option<&crate::contract::instance::InstanceReport>,
) -> String {
    if kind == Kind::Data && separate_wal {
        return String::new();
    }
    let Some(report) = report else {
        return String::new();
    };
    let mut causes = vec![];
    if let Some(archive) = &report.archive
        && let Some(wal) = &archive.last_failed_wal
        && archive.last_failed_at > archive.last_archived_at
    {
        causes.push(format!(
            "WAL archiving is failing since {wal}: PostgreSQL keeps every segment until it is archived; fix the repository"
        ));
    }
    const STUCK: u64 = 16 << 20;
    if let Some(slot) = report
        .inactive_slots
        .iter()
        .find(|s| s.retained_bytes >= STUCK)
    {
        causes.push(format!(
            "replication slot {} is not streamed from and holds {} MiB of WAL; bring its standby back or drop the slot",
            slot.name,
            slot.retained_bytes >> 20
        ));
    }
    if causes.is_empty() {
        String::new()
    } else {
        format!(" ({})", causes.join("; "))
    }
}

#[cfg(test)]
mod tests;
