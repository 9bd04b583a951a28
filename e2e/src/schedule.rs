//! Steps of the scheduled-backup scenario, through the Kubernetes API only:
//! the `PostgresBackup` objects a schedule created (name, label, owner,
//! the run each answers), every one seen during the test (deleted ones
//! included, to tell a burst), and the cluster's Events.

use std::collections::BTreeMap;

use capstan::api::PostgresBackup;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::jiff::tz::TimeZone;
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use crate::E2eError;
use crate::target::Target;

/// The label naming the schedule that created an object.
pub const SCHEDULE_LABEL: &str = "capstan.dev/schedule";
/// The annotation holding the run an object answers (RFC 3339).
pub const SCHEDULED_AT_ANNOTATION: &str = "capstan.dev/scheduled-at";

/// The objects of `cluster` labelled with `schedule`, oldest run first.
pub async fn objects(
    target: &Target,
    ns: &str,
    cluster: &str,
    schedule: &str,
) -> Result<Vec<PostgresBackup>, E2eError> {
    let list = Api::<PostgresBackup>::namespaced(target.client(), ns)
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={schedule}")))
        .await
        .map_err(|e| E2eError::Kube(format!("list the PostgresBackups of {schedule}"), e))?;
    let mut out: Vec<PostgresBackup> = list
        .items
        .into_iter()
        .filter(|b| b.spec.cluster == cluster)
        .collect();
    out.sort_by_key(|b| (run_of(b), b.name_any()));
    Ok(out)
}

/// The run an object answers, from its annotation.
pub fn run_of(b: &PostgresBackup) -> Option<Timestamp> {
    b.annotations().get(SCHEDULED_AT_ANNOTATION)?.parse().ok()
}

/// The documented name of the object for the run `at`:
/// `<cluster>-<schedule>-<yyyymmddhhmm>` (UTC).
pub fn expected_name(cluster: &str, schedule: &str, at: Timestamp) -> String {
    let stamp = at.to_zoned(TimeZone::UTC).strftime("%Y%m%d%H%M");
    format!("{cluster}-{schedule}-{stamp}")
}

/// An RFC 3339 time, cut to whole seconds (pgBackRest records seconds;
/// the operator and the objects spell them differently).
pub fn second(t: &str) -> Option<i64> {
    t.parse::<Timestamp>().ok().map(|t| t.as_second())
}

/// What is wrong with a scheduled object, by what the README promises:
/// its name, label, annotation and owner (the cluster, as controller).
pub fn check_object(
    b: &PostgresBackup,
    cluster_name: &str,
    cluster_uid: &str,
    schedule: &str,
) -> Result<Timestamp, E2eError> {
    let name = b.name_any();
    let wrong = |what: String| E2eError::Check(format!("scheduled object {name}: {what}"));
    let at = run_of(b).ok_or_else(|| wrong(format!("no {SCHEDULED_AT_ANNOTATION}")))?;
    let expected = expected_name(cluster_name, schedule, at);
    if name != expected {
        return Err(wrong(format!("named {name}, expected {expected} for {at}")));
    }
    if at.as_second() % 60 != 0 {
        return Err(wrong(format!("run {at} is not on a whole minute")));
    }
    if b.labels().get(SCHEDULE_LABEL).map(String::as_str) != Some(schedule) {
        return Err(wrong(format!("labels {:?}", b.labels())));
    }
    let owner = b
        .owner_references()
        .iter()
        .find(|o| o.kind == "PostgresCluster")
        .ok_or_else(|| wrong(format!("no owner cluster: {:?}", b.owner_references())))?;
    if owner.name != cluster_name || owner.uid != cluster_uid || owner.controller != Some(true) {
        return Err(wrong(format!(
            "owner {owner:?}, expected {cluster_name} ({cluster_uid}) as controller"
        )));
    }
    Ok(at)
}

/// Every scheduled object seen during a test, by name: the run it answers
/// and when the test first saw it. Objects retention deleted stay here.
#[derive(Debug, Default)]
pub struct Seen {
    pub runs: BTreeMap<String, Timestamp>,
}

impl Seen {
    /// Records `objects`; returns the names not seen before.
    pub fn record(&mut self, objects: &[PostgresBackup]) -> Vec<String> {
        let mut new = vec![];
        for b in objects {
            let name = b.name_any();
            if let Some(at) = run_of(b)
                && self.runs.insert(name.clone(), at).is_none()
            {
                new.push(name);
            }
        }
        new
    }

    /// No burst: at most one object per minute since `since` (a run per
    /// whole minute, none twice), up to `until`.
    pub fn check_one_per_minute(&self, since: Timestamp, until: Timestamp) -> Result<(), E2eError> {
        let mut runs: Vec<i64> = self.runs.values().map(|t| t.as_second()).collect();
        runs.sort_unstable();
        if let Some(w) = runs.windows(2).find(|w| w[1] - w[0] < 60) {
            return Err(E2eError::Check(format!(
                "two scheduled objects within a minute (runs at {} and {}): {:?}",
                w[0], w[1], self.runs
            )));
        }
        let minutes = (until.as_second() - since.as_second()) / 60 + 1;
        if runs.len() as i64 > minutes {
            return Err(E2eError::Check(format!(
                "{} scheduled objects in {minutes} minute(s): {:?}",
                runs.len(),
                self.runs
            )));
        }
        Ok(())
    }
}

/// Events with `reason` in `ns` about the object `regarding`: (type, note).
pub async fn events(
    target: &Target,
    ns: &str,
    reason: &str,
    regarding: &str,
) -> Result<Vec<(String, String)>, E2eError> {
    let list = Api::<Event>::namespaced(target.client(), ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| E2eError::Kube(format!("list the Events of {ns}"), e))?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.name.as_deref() == Some(regarding))
        })
        .map(|e| (e.type_.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bursts() {
        let at: Timestamp = "2026-12-04T09:05:00Z".parse().unwrap();
        assert_eq!(expected_name("db", "m", at), "db-m-202612040905");
        assert_eq!(
            second("2026-12-04T09:05:07.000000Z"),
            second("2026-12-04T09:05:07Z")
        );
        let mut seen = Seen::default();
        seen.runs.insert("a".into(), at);
        seen.runs
            .insert("b".into(), "2026-12-04T09:06:00Z".parse().unwrap());
        let until: Timestamp = "2026-12-04T09:06:30Z".parse().unwrap();
        assert!(seen.check_one_per_minute(at, until).is_ok());
        seen.runs
            .insert("c".into(), "2026-12-04T09:06:30Z".parse().unwrap());
        assert!(seen.check_one_per_minute(at, until).is_err());
        seen.runs.remove("c");
        // Two runs in a window shorter than their minutes.
        assert!(seen.check_one_per_minute(until, until).is_err());
    }
}
