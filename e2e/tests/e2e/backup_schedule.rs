//! Scheduled backups on the real control plane, and retention pruning
//! their objects. One instance on the pgBackRest image backs up to the S3
//! store (moto behind nginx); verification by restore is off, so each run
//! is one small full backup.
//!
//! * `scheduled_backups_appear_as_objects_and_retention_prunes_them`: rows
//!   through the pooler → `spec.backup.schedules` gains `minutely`
//!   (`* * * * *`, full) with `retention.full: 1` → `status.backup`
//!   announces the first run (`schedules[]`, `nextScheduled`) and no
//!   object appears before it → the run creates
//!   `db-minutely-<yyyymmddhhmm>`, labelled `capstan.dev/schedule`,
//!   owned by the cluster, `Completed`; the status names it and the run
//!   after; `firstRecoverabilityPoint` is its end → the next minute's
//!   object `Completed` → pgBackRest expired the first backup, so its
//!   object is deleted with a `BackupExpired` Event and
//!   `firstRecoverabilityPoint` moves to the second's end → the schedule
//!   is removed: the status forgets it and no object appears for longer
//!   than a minute; exactly one `Completed` object is left (what
//!   retention keeps); never two objects in a minute.
//!
//! The store is a harness facility: on a real cluster this skips.

use std::time::{Duration, Instant};

use capstan::api::backup::BackupSchedule;
use capstan::api::{BackupType, PostgresBackup, PostgresCluster};
use capstan_e2e::backup::{self, KEYS_SECRET, Keys, PodS3};
use capstan_e2e::ha::{HaCluster, ha_example};
use capstan_e2e::harness::ensure_namespace;
use capstan_e2e::schedule::{self, Seen, check_object, run_of, second};
use capstan_e2e::target::{Target, fail};
use capstan_e2e::{E2eError, cluster};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

const MAJOR: u32 = 17;
const CLUSTER: &str = "db";
const SCHEDULE: &str = "minutely";
const WRITES_WITHIN: Duration = Duration::from_secs(60);
/// A run falls due within a minute; a busy machine gets another.
const RUN_WITHIN: Duration = Duration::from_secs(130);
/// A small full backup, from its object to `Completed`.
const COMPLETED_WITHIN: Duration = Duration::from_secs(120);
/// The operator reconciles at least every 10 s with `archive.timeout: 5s`.
const STATUS_WITHIN: Duration = Duration::from_secs(60);
/// From the newer backup's end to the older object deleted: pgBackRest
/// expires as the backup ends, the primary reads the repository right
/// after, the operator deletes at its next reconcile.
const PRUNED_WITHIN: Duration = Duration::from_secs(90);
/// Longer than a minute: a run would have fallen due in it.
const QUIET_FOR: Duration = Duration::from_secs(75);
const POLL: Duration = Duration::from_secs(1);

async fn setup() -> Option<(Target, PodS3)> {
    backup::harness_with_store(MAJOR, "capstan-e2e-schedule").await
}

fn phase(b: &PostgresBackup) -> &str {
    backup::phase(b)
}

fn summary(objects: &[PostgresBackup]) -> String {
    let names: Vec<String> = objects
        .iter()
        .map(|b| format!("{} {}", b.name_any(), phase(b)))
        .collect();
    format!("[{}]", names.join(", "))
}

fn stopped(b: &PostgresBackup) -> Option<i64> {
    second(b.status.as_ref()?.stopped_at.as_deref()?)
}

/// Whole seconds as RFC 3339, for the log.
fn rfc3339(t: i64) -> String {
    Timestamp::from_second(t).map_or_else(|_| t.to_string(), |t| t.to_string())
}

fn first_recoverability_point(c: &PostgresCluster) -> Option<i64> {
    second(backup::status(c)?.first_recoverability_point.as_deref()?)
}

/// What the status says about the schedule: (lastBackup, next) of its
/// `schedules[]` entry, checked against `nextScheduled`.
fn announced(c: &PostgresCluster) -> Option<(Option<String>, Timestamp)> {
    let s = backup::status(c)?;
    let e = s.schedules.iter().find(|e| e.name == SCHEDULE)?;
    let next: Timestamp = e.next.parse().ok()?;
    let n = s.next_scheduled.as_ref()?;
    let agrees = e.schedule == "* * * * *"
        && n.schedule == SCHEDULE
        && n.type_ == BackupType::Full
        && n.time.parse::<Timestamp>().ok() == Some(next);
    agrees.then(|| (e.last_backup.clone(), next))
}

/// The scenario's view: every poll lists the schedule's objects (so the
/// ones retention deletes are still counted) and reads the cluster.
struct Watch<'a> {
    target: &'a Target,
    ns: &'a str,
    seen: Seen,
    began: Instant,
}

impl Watch<'_> {
    fn at(&self) -> f64 {
        self.began.elapsed().as_secs_f64()
    }

    async fn observe(&mut self) -> Result<(Vec<PostgresBackup>, PostgresCluster), E2eError> {
        let objects = schedule::objects(self.target, self.ns, CLUSTER, SCHEDULE).await?;
        for name in self.seen.record(&objects) {
            eprintln!("[{}] +{:.1}s: {name} appeared", self.ns, self.at());
        }
        let c = cluster::get(&self.target.client(), self.ns, CLUSTER).await?;
        Ok((objects, c))
    }

    /// Polls until `check` answers, at most `timeout`.
    async fn wait<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&[PostgresBackup], &PostgresCluster) -> Option<T>,
    ) -> Result<T, E2eError> {
        let deadline = Instant::now() + timeout;
        loop {
            let (objects, c) = self.observe().await?;
            if let Some(v) = check(&objects, &c) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(E2eError::Timeout(
                    format!(
                        "{what} (objects {}; status.backup {:?})",
                        summary(&objects),
                        backup::status(&c)
                    ),
                    timeout,
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the object `name` is `Completed` and returns it.
    async fn completed(&mut self, name: &str) -> Result<PostgresBackup, E2eError> {
        let b = self
            .wait(
                &format!("{name} to finish"),
                COMPLETED_WITHIN,
                |objects, _| {
                    objects
                        .iter()
                        .find(|b| {
                            b.name_any() == name && matches!(phase(b), "Completed" | "Failed")
                        })
                        .cloned()
                },
            )
            .await?;
        let s = b.status.clone().unwrap_or_default();
        if phase(&b) != "Completed" || s.type_ != Some(BackupType::Full) || s.label.is_none() {
            return Err(E2eError::Check(format!(
                "{name}: not a completed full backup: {s:?}"
            )));
        }
        eprintln!(
            "[{}] +{:.1}s: {name} Completed, label {:?}, stopped {:?} (pgBackRest {:?}s)",
            self.ns,
            self.at(),
            s.label,
            s.stopped_at,
            s.duration_seconds
        );
        Ok(b)
    }
}

async fn scenario(target: &Target, store: &PodS3, ns: &str) -> Result<(), E2eError> {
    ensure_namespace(&target.client(), ns).await?;
    store
        .write_secrets(target, ns, KEYS_SECRET, Keys::Right)
        .await?;
    let mut spec = ha_example("ha-cluster.yaml", ns)?;
    spec.metadata.name = Some(CLUSTER.into());
    spec.spec.instances = 1;
    spec.spec.proxy.pgbouncer.replicas = 1;
    spec.spec.postgres.version = MAJOR as i32;
    spec.spec.postgres.image = Some(backup::pgbackrest_image(MAJOR));
    let mut backup_spec = store.backup_spec(KEYS_SECRET, "5s")?;
    for r in &mut backup_spec.repositories {
        r.retention.full = 1;
    }
    backup_spec.verify.enabled = false;
    spec.spec.backup = Some(backup_spec);
    let db = HaCluster::create(target, &spec).await?;
    let uid = db.get(target).await?.uid().unwrap_or_default();
    backup::write_rows(&db, target, 1..=500, WRITES_WITHIN).await?;

    // 1. The schedule is added; the status announces its first run, and
    // nothing is created before it (a new schedule does not fire at once).
    let mut scheduled = spec.clone();
    if let Some(b) = scheduled.spec.backup.as_mut() {
        b.schedules = vec![BackupSchedule {
            name: SCHEDULE.into(),
            type_: BackupType::Full,
            schedule: "* * * * *".into(),
            repository: None,
        }];
    }
    let added = Timestamp::now();
    cluster::apply(&target.client(), &scheduled).await?;
    let mut w = Watch {
        target,
        ns,
        seen: Seen::default(),
        began: Instant::now(),
    };
    let (none_yet, first_run) = w
        .wait(
            "status.backup to announce the schedule",
            STATUS_WITHIN,
            |o, c| announced(c).map(|(last, next)| (o.is_empty() && last.is_none(), next)),
        )
        .await?;
    eprintln!(
        "[{ns}] +{:.1}s: schedule added at {added}, first run announced for {first_run}",
        w.at()
    );
    let minute = SignedDuration::from_secs(60);
    assert!(
        first_run > added && first_run <= added + 2 * minute && first_run.as_second() % 60 == 0,
        "first run {first_run}, schedule added at {added}"
    );
    if first_run > Timestamp::now() {
        assert!(none_yet, "an object or lastBackup before the first run");
    }

    // 2. The run creates the documented object, which completes; the
    // status names it and the next run.
    let first = w
        .wait("the first scheduled object", RUN_WITHIN, |o, _| {
            o.first().cloned()
        })
        .await?;
    let first_name = first.name_any();
    let first_at = check_object(&first, CLUSTER, &uid, SCHEDULE)?;
    assert_eq!(first_at, first_run, "the run the status announced");
    assert_eq!(first.spec.type_, BackupType::Full);
    assert_eq!(first.spec.repository.as_deref(), Some("repo1"));
    // Named with the run after it (by then a minute more may have passed
    // and the status name the next object: the same must hold for it).
    let (named, named_at, next) = w
        .wait(
            "status.backup to name the first object",
            STATUS_WITHIN,
            |o, c| {
                let (last, next) = announced(c)?;
                let named = o.iter().find(|b| Some(b.name_any()) == last)?;
                Some((named.name_any(), run_of(named)?, next))
            },
        )
        .await?;
    eprintln!("[{ns}] schedules[].lastBackup {named}, next {next}");
    assert_eq!(named_at + minute, next, "lastBackup {named}, next {next}");
    let first = w.completed(&first_name).await?;
    let first_stop = stopped(&first);
    let frp = w
        .wait(
            "firstRecoverabilityPoint at the first backup's end",
            STATUS_WITHIN,
            |_, c| first_recoverability_point(c).filter(|t| Some(*t) == first_stop),
        )
        .await?;
    eprintln!(
        "[{ns}] +{:.1}s: firstRecoverabilityPoint {} (the first backup's end)",
        w.at(),
        rfc3339(frp)
    );
    backup::write_rows(&db, target, 501..=600, WRITES_WITHIN).await?;

    // 3. The next run's object completes; pgBackRest keeps one full
    // backup, so the first one's object goes, with an Event.
    let second = w
        .wait("a second scheduled object", RUN_WITHIN, |o, _| {
            o.iter().find(|b| b.name_any() != first_name).cloned()
        })
        .await?;
    let second_name = second.name_any();
    let second_at = check_object(&second, CLUSTER, &uid, SCHEDULE)?;
    assert!(
        second_at >= first_at + minute,
        "{second_name} after {first_name}"
    );
    let second = w.completed(&second_name).await?;
    let second_stop = stopped(&second);
    let done = Instant::now();
    // Deleted before a later backup completes: that one would expire the
    // first even if retention kept two.
    let left = w
        .wait(
            &format!("{first_name} deleted by retention"),
            PRUNED_WITHIN,
            |o, _| {
                if let Some(b) = o
                    .iter()
                    .find(|b| phase(b) == "Completed" && run_of(b) > Some(second_at))
                {
                    return Some(Err(E2eError::Check(format!(
                        "{} completed before retention deleted {first_name}: {}",
                        b.name_any(),
                        summary(o)
                    ))));
                }
                (!o.iter().any(|b| b.name_any() == first_name)).then(|| Ok(o.to_vec()))
            },
        )
        .await??;
    eprintln!(
        "[{ns}] +{:.1}s: {first_name} deleted {:.1}s after {second_name} was seen Completed",
        w.at(),
        done.elapsed().as_secs_f64()
    );
    let completed: Vec<String> = left
        .iter()
        .filter(|b| phase(b) == "Completed")
        .map(|b| b.name_any())
        .collect();
    assert_eq!(
        completed,
        std::slice::from_ref(&second_name),
        "{}",
        summary(&left)
    );
    let first_label = first
        .status
        .as_ref()
        .and_then(|s| s.label.clone())
        .unwrap_or_default();
    let mut expired = vec![];
    for _ in 0..30 {
        expired = schedule::events(target, ns, "BackupExpired", CLUSTER).await?;
        if expired.iter().any(|(_, note)| note.contains(&first_name)) {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let (kind, note) = expired
        .iter()
        .find(|(_, note)| note.contains(&first_name))
        .cloned()
        .ok_or_else(|| {
            E2eError::Check(format!(
                "no BackupExpired Event about {first_name}: {expired:?}"
            ))
        })?;
    eprintln!("[{ns}] BackupExpired ({kind}): {note}");
    assert_eq!(kind, "Normal");
    assert!(note.contains(&first_label), "{note}");
    let moved = w
        .wait(
            "firstRecoverabilityPoint at the second backup's end",
            STATUS_WITHIN,
            |_, c| first_recoverability_point(c).filter(|t| Some(*t) == second_stop),
        )
        .await?;
    eprintln!(
        "[{ns}] +{:.1}s: firstRecoverabilityPoint moved from {} to {} (the second backup's end)",
        w.at(),
        rfc3339(frp),
        rfc3339(moved)
    );
    backup::write_rows(&db, target, 601..=700, WRITES_WITHIN).await?;

    // 4. The schedule is removed: the status forgets it and no object
    // appears for longer than a minute.
    cluster::apply(&target.client(), &spec).await?;
    w.wait(
        "status.backup to forget the schedule",
        STATUS_WITHIN,
        |_, c| {
            let s = backup::status(c)?;
            (s.schedules.is_empty() && s.next_scheduled.is_none()).then_some(())
        },
    )
    .await?;
    let before = w.seen.runs.len();
    let quiet = Instant::now();
    while quiet.elapsed() < QUIET_FOR {
        w.observe().await?;
        if w.seen.runs.len() != before {
            return Err(E2eError::Check(format!(
                "an object appeared after the schedule was removed: {:?}",
                w.seen.runs
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    eprintln!(
        "[{ns}] +{:.1}s: no object for {:.0}s after the schedule was removed",
        w.at(),
        quiet.elapsed().as_secs_f64()
    );
    // What retention keeps: one Completed object, the newest, and the
    // status agrees.
    let kept = w
        .wait("one Completed object left", PRUNED_WITHIN, |o, c| {
            let done = o.iter().all(|b| phase(b) == "Completed");
            let newest = o.last()?;
            let named =
                backup::status(c)?.last_successful_backup.as_ref()?.name == newest.name_any();
            let frp = first_recoverability_point(c) == stopped(newest);
            (done && o.len() == 1 && named && frp).then(|| newest.name_any())
        })
        .await?;
    w.seen.check_one_per_minute(added, Timestamp::now())?;
    eprintln!(
        "[{ns}] +{:.1}s: {kept} is the one object left; runs seen: {:?}",
        w.at(),
        w.seen.runs
    );
    let rows = db.written(&db.pooler(target).await?).await?;
    assert!(
        (1..=700).all(|n| rows.contains(&n)),
        "{} of 700 rows",
        rows.len()
    );
    db.delete(target).await
}

#[test]
fn scheduled_backups_appear_as_objects_and_retention_prunes_them() {
    capstan_e2e::scenario(|| async {
        let Some((target, store)) = setup().await else {
            return;
        };
        let ns = format!("e2e-backup-schedule-{}", std::process::id());
        let began = Instant::now();
        if let Err(e) = scenario(&target, &store, &ns).await {
            eprintln!("--- S3 store ---\n{}", store.logs());
            fail(&target, &ns, e).await;
        }
        eprintln!("[{ns}] scenario took {:.1}s", began.elapsed().as_secs_f64());
    });
}
