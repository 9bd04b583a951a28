//! Scheduled backups: which schedule of `spec.backup.schedules` is due, the
//! one `PostgresBackup` object a due schedule creates, and when each runs
//! next. Pure; `apply` creates the objects and status records the
//! schedules' progress.
//!
//! Each schedule's next run is kept in `status.backup.schedules`: a new
//! schedule waits for its first run instead of firing at once, and an
//! operator that was down over several runs creates one object (for the
//! latest run), not a burst. Each object carries the run it answers, so a
//! status write lost after the object was created never makes a second.

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::backup::not_taken;
use crate::api::backup::BackupSchedule;
use crate::api::pgbackup::{PostgresBackup, PostgresBackupSpec};
use crate::api::status::{ScheduleStatus, ScheduledBackup};
use crate::resources::labels;
use crate::resources::model::Model;

/// Longest object name that is also a valid label value.
const NAME_MAX: usize = 63;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error(
        "spec.backup.schedules[{name}].schedule {expression:?} is not a cron expression this operator reads ({reason}); write five fields in UTC: minute (0-59) hour (0-23) day-of-month (1-31) month (1-12 or JAN-DEC) day-of-week (0-7 or SUN-SAT), e.g. '0 1 * * 0'"
    )]
    Invalid {
        name: String,
        expression: String,
        reason: String,
    },
    #[error(
        "spec.backup.schedules[{name}].schedule {expression:?} never falls on a real date (e.g. 30 February); change its day-of-month or month field"
    )]
    Never { name: String, expression: String },
}

/// Five fields, UTC, as the CRD's rule describes them; a day-of-month and
/// a day-of-week both restricted match either (as cron does).
pub fn parse(schedule: &BackupSchedule) -> Result<Cron, ScheduleError> {
    let invalid = |reason: String| ScheduleError::Invalid {
        name: schedule.name.clone(),
        expression: schedule.schedule.clone(),
        reason,
    };
    // The CRD's characters: croner's extensions beyond them (@-macros,
    // `#`, `+`) are refused here too.
    if let Some(c) = schedule
        .schedule
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && !" */,?-".contains(*c))
    {
        return Err(invalid(format!("{c:?} is not allowed")));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(&schedule.schedule)
        .map_err(|e| invalid(e.to_string()))?;
    // Any fixed start will do: a pattern that matches within croner's
    // search range matches every few years at most (29 February).
    let start = Timestamp::UNIX_EPOCH.to_zoned(TimeZone::UTC);
    cron.find_next_occurrence(&start, false)
        .map_err(|_| ScheduleError::Never {
            name: schedule.name.clone(),
            expression: schedule.schedule.clone(),
        })?;
    Ok(cron)
}

/// The first schedule that cannot be read, as the message naming the fix.
pub fn invalid(schedules: &[BackupSchedule]) -> Option<String> {
    schedules
        .iter()
        .find_map(|s| parse(s).err())
        .map(|e| e.to_string())
}

/// Whole seconds: cron runs fall on whole minutes.
fn truncate(at: Timestamp) -> Timestamp {
    Timestamp::from_second(at.as_second()).unwrap_or(at)
}

/// The first run strictly after `at`.
pub fn next_after(cron: &Cron, at: Timestamp) -> Option<Timestamp> {
    cron.find_next_occurrence(&truncate(at).to_zoned(TimeZone::UTC), false)
        .ok()
        .map(|z| z.timestamp())
}

/// The latest run at or before `at`.
pub fn latest_until(cron: &Cron, at: Timestamp) -> Option<Timestamp> {
    cron.find_previous_occurrence(&truncate(at).to_zoned(TimeZone::UTC), true)
        .ok()
        .map(|z| z.timestamp())
}

/// `<cluster>-<schedule>-<yyyymmddhhmm>` (UTC). A long cluster and schedule
/// name pair is cut and given a digest of the whole pair, so the name stays
/// within 63 characters and two schedules never share one.
pub fn backup_name(cluster: &str, schedule: &str, at: Timestamp) -> String {
    let stamp = at
        .to_zoned(TimeZone::UTC)
        .strftime("%Y%m%d%H%M")
        .to_string();
    let prefix = format!("{cluster}-{schedule}");
    let room = NAME_MAX - 1 - stamp.len();
    if prefix.len() <= room {
        return format!("{prefix}-{stamp}");
    }
    let digest: String = Sha256::digest(prefix.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    let head: String = prefix.chars().take(room - 1 - digest.len()).collect();
    format!("{}-{digest}-{stamp}", head.trim_end_matches('-'))
}

/// The object a run of `schedule` creates: owned by the cluster (deleting
/// the cluster deletes it; never the backup in the repository), labelled
/// with the schedule, annotated with the run it answers.
pub fn backup_object(model: &Model, schedule: &BackupSchedule, at: Timestamp) -> PostgresBackup {
    let name = backup_name(&model.name, &schedule.name, at);
    let repository = schedule.repository.clone().or_else(|| {
        model
            .spec
            .backup
            .as_ref()
            .and_then(|b| b.repositories.first())
            .map(|r| r.name.clone())
    });
    let mut object = PostgresBackup::new(
        &name,
        PostgresBackupSpec {
            cluster: model.name.clone(),
            type_: schedule.type_,
            repository,
            verify: None,
        },
    );
    let mut l = labels::common(&model.name, labels::COMPONENT_BACKUP);
    l.insert(labels::SCHEDULE.to_string(), schedule.name.clone());
    let mut meta = model.child_meta(name, l);
    meta.annotations = Some(
        [(labels::SCHEDULED_AT_ANNOTATION.to_string(), at.to_string())]
            .into_iter()
            .collect(),
    );
    object.metadata = meta;
    object
}

/// The schedule that created `backup`, if one did.
pub fn schedule_of(backup: &PostgresBackup) -> Option<&str> {
    backup.labels().get(labels::SCHEDULE).map(String::as_str)
}

fn scheduled_at(backup: &PostgresBackup) -> Option<Timestamp> {
    backup
        .annotations()
        .get(labels::SCHEDULED_AT_ANNOTATION)?
        .parse()
        .ok()
}

pub struct Input<'a> {
    pub cluster: &'a str,
    pub schedules: &'a [BackupSchedule],
    /// The cluster's `PostgresBackup` objects.
    pub backups: &'a [PostgresBackup],
    /// `status.backup.schedules` as last written.
    pub previous: &'a [ScheduleStatus],
    pub now: Timestamp,
}

/// A run to create an object for.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub schedule: BackupSchedule,
    pub at: Timestamp,
    /// The object's name.
    pub name: String,
    /// The schedule's status entry while the object is not made yet.
    pub held: ScheduleStatus,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// At most one run per schedule.
    pub due: Vec<Run>,
    /// `status.backup.schedules`.
    pub status: Vec<ScheduleStatus>,
    /// `status.backup.nextScheduled`: the soonest of them.
    pub next: Option<ScheduledBackup>,
    /// When to reconcile again for a run (the soonest one still ahead).
    pub wake_at: Option<Timestamp>,
}

pub fn decide(input: &Input<'_>) -> Decision {
    let now = input.now;
    let mut out = Decision::default();
    let mut soonest: Option<(Timestamp, &BackupSchedule)> = None;
    for schedule in input.schedules {
        // Validation refused what cannot be read before the plan runs.
        let Ok(cron) = parse(schedule) else { continue };
        let Some(upcoming) = next_after(&cron, now) else {
            continue;
        };
        let own: Vec<&PostgresBackup> = input
            .backups
            .iter()
            .filter(|b| schedule_of(b) == Some(schedule.name.as_str()))
            .collect();
        let newest = own
            .iter()
            .max_by_key(|b| (scheduled_at(b), b.creation_timestamp().map(|t| t.0)))
            .map(|b| b.name_any());
        let answered = own.iter().filter_map(|b| scheduled_at(b)).max();
        let busy = own.iter().any(|b| not_taken(b));
        // A changed expression starts over from now.
        let overdue = input
            .previous
            .iter()
            .find(|e| e.name == schedule.name && e.schedule == schedule.schedule)
            .and_then(|e| e.next.parse::<Timestamp>().ok())
            .filter(|t| *t <= now);
        let run = overdue
            .and(latest_until(&cron, now))
            .filter(|latest| answered.is_none_or(|a| a < *latest));
        let entry = |next: Timestamp, last_backup: Option<String>| ScheduleStatus {
            name: schedule.name.clone(),
            schedule: schedule.schedule.clone(),
            next: next.to_string(),
            last_backup,
        };
        let (next, last_backup) = match (run, overdue) {
            // One at a time per schedule: the run waits, and stays one.
            (Some(_), Some(overdue)) if busy => (overdue, newest),
            (Some(at), Some(overdue)) => {
                let name = backup_name(input.cluster, &schedule.name, at);
                out.due.push(Run {
                    schedule: schedule.clone(),
                    at,
                    name: name.clone(),
                    held: entry(overdue, newest),
                });
                (upcoming, Some(name))
            }
            _ => (upcoming, newest),
        };
        if next > now {
            out.wake_at = Some(out.wake_at.map_or(next, |w| w.min(next)));
        }
        if soonest.is_none_or(|(t, _)| next < t) {
            soonest = Some((next, schedule));
        }
        out.status.push(entry(next, last_backup));
    }
    out.next = soonest.map(|(time, s)| scheduled(s, time));
    out
}

fn scheduled(schedule: &BackupSchedule, time: Timestamp) -> ScheduledBackup {
    ScheduledBackup {
        schedule: schedule.name.clone(),
        type_: schedule.type_,
        time: time.to_string(),
    }
}

impl Decision {
    /// Runs whose object was not created (the API server failed or refused
    /// it) stay due: their schedules' entries go back to what they were, so
    /// the next reconcile tries again instead of skipping the run.
    pub fn keep_uncreated(&mut self, created: &[String]) {
        for run in self.due.iter().filter(|r| !created.contains(&r.name)) {
            if let Some(e) = self.status.iter_mut().find(|e| e.name == run.held.name) {
                *e = run.held.clone();
            }
            let Ok(held) = run.held.next.parse::<Timestamp>() else {
                continue;
            };
            let sooner = self
                .next
                .as_ref()
                .and_then(|n| n.time.parse::<Timestamp>().ok())
                .is_none_or(|t| held < t);
            if sooner {
                self.next = Some(scheduled(&run.schedule, held));
            }
        }
        self.due.retain(|r| created.contains(&r.name));
    }
}

#[cfg(test)]
mod tests;
