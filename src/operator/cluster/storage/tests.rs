use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaimCondition, PersistentVolumeClaimStatus};

use super::*;
use crate::api::AutoGrowSpec;
use crate::contract::backup::ArchiveReport;
use crate::contract::instance::InstanceReport;
use crate::resources::model::fixtures::model;

const MI: u64 = 1 << 20;

/// `db-1`'s claim of `kind` asking `request`, provided `capacity`.
fn claim(kind: Kind, request: &str, capacity: &str, class: &str) -> PersistentVolumeClaim {
    let m = model();
    let mut c = instance::pvcs(&m, "db-1")
        .into_iter()
        .next()
        .expect("data claim");
    if kind == Kind::Wal {
        c.metadata.name = Some("db-1-wal".into());
        c.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(VOLUME_LABEL.into(), "wal".into());
    }
    let spec = c.spec.as_mut().unwrap();
    spec.storage_class_name = (!class.is_empty()).then(|| class.to_string());
    spec.resources
        .as_mut()
        .unwrap()
        .requests
        .as_mut()
        .unwrap()
        .insert("storage".into(), Quantity(request.into()));
    c.status = Some(PersistentVolumeClaimStatus {
        capacity: Some(BTreeMap::from([(
            "storage".to_string(),
            Quantity(capacity.into()),
        )])),
        ..Default::default()
    });
    c
}

fn pending(mut c: PersistentVolumeClaim) -> PersistentVolumeClaim {
    c.status.as_mut().unwrap().conditions = Some(vec![PersistentVolumeClaimCondition {
        type_: FILE_SYSTEM_RESIZE_PENDING.into(),
        status: "True".into(),
        ..Default::default()
    }]);
    c
}

/// A model with a 100Mi data volume growing by 50Mi up to 200Mi past 80%.
fn growing() -> Model {
    let mut m = model();
    m.spec.storage.size = Quantity("100Mi".into());
    m.spec.storage.auto_grow = Some(AutoGrowSpec {
        threshold: 80,
        increment: Quantity("50Mi".into()),
        limit: Quantity("200Mi".into()),
    });
    m
}

fn used(size_mi: u64, used_mi: u64) -> VolumeUsage {
    VolumeUsage {
        size_bytes: size_mi * MI,
        available_bytes: (size_mi - used_mi) * MI,
    }
}

fn observed(claims: Vec<PersistentVolumeClaim>, data: Option<VolumeUsage>) -> Observed {
    let mut o = Observed {
        pvcs: claims,
        storage_classes: BTreeMap::from([
            ("grows".to_string(), true),
            ("fixed".to_string(), false),
        ]),
        ..Observed::default()
    };
    o.reports.insert(
        "db-1".into(),
        InstanceReport {
            data_volume: data,
            ..InstanceReport::default()
        },
    );
    o
}

fn request(d: &Decision, claim: &str) -> String {
    d.request(claim).map(|q| q.0.clone()).unwrap_or_default()
}

#[test]
fn a_volume_grows_past_its_threshold_by_the_increment_up_to_the_limit() {
    let m = growing();
    // 79% used: nothing.
    let d = decide(
        &m,
        &observed(
            vec![claim(Kind::Data, "100Mi", "100Mi", "grows")],
            Some(used(100, 79)),
        ),
    );
    assert_eq!(request(&d, "db-1"), "100Mi");
    assert_eq!(d.volumes[0].resize, None);
    // 80%: +50Mi.
    let d = decide(
        &m,
        &observed(
            vec![claim(Kind::Data, "100Mi", "100Mi", "grows")],
            Some(used(100, 80)),
        ),
    );
    assert_eq!(request(&d, "db-1"), "150Mi");
    assert_eq!(d.volumes[0].resize, Some("Resizing"));
    assert_eq!(
        d.grown,
        vec!["autoGrow: the data volume of db-1 grows from 100Mi to 150Mi (80% used)"]
    );
    assert!(d.refused.is_none() && d.full.is_empty());
    // Asked, not provided yet: never asked twice.
    let d = decide(
        &m,
        &observed(
            vec![claim(Kind::Data, "150Mi", "100Mi", "grows")],
            Some(used(100, 95)),
        ),
    );
    assert_eq!(request(&d, "db-1"), "150Mi");
    // Provided, but the file system is still the old size: not again.
    let d = decide(
        &m,
        &observed(
            vec![claim(Kind::Data, "150Mi", "150Mi", "grows")],
            Some(used(100, 95)),
        ),
    );
    assert_eq!(request(&d, "db-1"), "150Mi");
    // The last step stops at the limit…
    let d = decide(
        &m,
        &observed(
            vec![claim(Kind::Data, "150Mi", "150Mi", "grows")],
            Some(used(150, 130)),
        ),
    );
    assert_eq!(request(&d, "db-1"), "200Mi");
    // …and a full volume at the limit is reported, not grown.
    let d = decide(
        &m,
        &observed(
            vec![claim(Kind::Data, "200Mi", "200Mi", "grows")],
            Some(used(200, 190)),
        ),
    );
    assert_eq!(request(&d, "db-1"), "200Mi");
    assert_eq!(
        d.full_message().as_deref(),
        Some("the data volume of db-1 is 95% full at its autoGrow limit 200Mi")
    );
}

#[test]
fn a_smaller_spec_never_shrinks_a_grown_volume() {
    let m = growing();
    let d = decide(
        &m,
        &observed(
            vec![claim(Kind::Data, "150Mi", "150Mi", "grows")],
            Some(used(150, 10)),
        ),
    );
    assert_eq!(request(&d, "db-1"), "150Mi");
    // A larger spec wins over both.
    let mut bigger = growing();
    bigger.spec.storage.size = Quantity("1Gi".into());
    let d = decide(
        &bigger,
        &observed(vec![claim(Kind::Data, "150Mi", "150Mi", "grows")], None),
    );
    assert_eq!(request(&d, "db-1"), "1Gi");
}

#[test]
fn a_class_that_cannot_expand_is_reported_and_nothing_patched() {
    let mut m = model();
    m.spec.storage.size = Quantity("20Gi".into());
    let d = decide(
        &m,
        &observed(vec![claim(Kind::Data, "10Gi", "10Gi", "fixed")], None),
    );
    assert_eq!(request(&d, "db-1"), "10Gi", "left as it is");
    let refused = d.refused.expect("refused");
    assert_eq!(refused.reason, "VolumeExpansionNotAllowed");
    assert!(
        refused.message.contains("StorageClass \"fixed\" of db-1")
            && refused.message.contains("allowVolumeExpansion: true"),
        "{}",
        refused.message
    );
    // No class at all cannot expand either.
    let d = decide(
        &m,
        &observed(vec![claim(Kind::Data, "10Gi", "10Gi", "")], None),
    );
    assert!(d.refused.unwrap().message.contains("StorageClass (none)"));
    // Growth the class allows.
    let d = decide(
        &m,
        &observed(vec![claim(Kind::Data, "10Gi", "10Gi", "grows")], None),
    );
    assert_eq!(request(&d, "db-1"), "20Gi");
    assert!(d.refused.is_none());
}

#[test]
fn a_file_system_resize_waiting_for_a_pod_restarts_its_instance_once() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let m = model();
    let at = |s: i64| Time(jiff::Timestamp::from_second(s).unwrap());
    let mut c = pending(claim(Kind::Data, "10Gi", "10Gi", "grows"));
    c.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
        Some(at(1000));
    let mut o = observed(vec![c], None);
    let mut pod = instance::pod(&m, "db-1", "replica");
    pod.metadata.creation_timestamp = Some(at(900));
    o.pods = vec![pod.clone()];
    let d = decide(&m, &o);
    assert_eq!(d.volumes[0].resize, Some(FILE_SYSTEM_RESIZE_PENDING));
    assert_eq!(d.restart, BTreeSet::from(["db-1".to_string()]));
    // The pod made after it is the new one: the kubelet grows the file
    // system as it mounts it; no second restart.
    pod.metadata.creation_timestamp = Some(at(1001));
    o.pods = vec![pod];
    assert!(decide(&m, &o).restart.is_empty());
}

#[test]
fn a_full_wal_volume_says_archiving_is_failing() {
    let mut m = growing();
    m.spec.wal_storage = Some(m.spec.storage.clone());
    let mut o = observed(vec![claim(Kind::Wal, "200Mi", "200Mi", "grows")], None);
    let r = o.reports.get_mut("db-1").unwrap();
    r.wal_volume = Some(used(200, 180));
    r.archive = Some(ArchiveReport {
        last_archived_wal: Some("000000010000000000000003".into()),
        last_archived_at: Some("2026-12-06 10:00:00+00".into()),
        last_failed_wal: Some("000000010000000000000004".into()),
        last_failed_at: Some("2026-12-06 10:05:00+00".into()),
        ..ArchiveReport::default()
    });
    let d = decide(&m, &o);
    let msg = d.full_message().unwrap();
    assert!(
        msg.starts_with("the wal volume of db-1 is 90% full")
            && msg.contains("WAL archiving is failing since 000000010000000000000004"),
        "{msg}"
    );
}

#[test]
fn a_full_volume_with_wal_names_a_slot_nobody_streams_from() {
    use crate::contract::instance::InactiveSlot;
    // No separate WAL volume: the data volume holds the WAL.
    let m = growing();
    let mut o = observed(
        vec![claim(Kind::Data, "200Mi", "200Mi", "grows")],
        Some(used(200, 190)),
    );
    o.reports.get_mut("db-1").unwrap().inactive_slots = vec![
        InactiveSlot {
            name: "db_3".into(),
            retained_bytes: 150 << 20,
        },
        InactiveSlot {
            name: "small".into(),
            retained_bytes: 1 << 20,
        },
    ];
    let msg = decide(&m, &o).full_message().unwrap();
    assert!(
        msg.contains("replication slot db_3 is not streamed from and holds 150 MiB of WAL"),
        "{msg}"
    );
    // With a WAL volume of its own, the data volume's fill is not the WAL's.
    let mut separate = growing();
    separate.spec.wal_storage = Some(separate.spec.storage.clone());
    let msg = decide(&separate, &o).full_message().unwrap();
    assert!(!msg.contains("slot"), "{msg}");
}
