//! Bootstrap and start: bring PostgreSQL up when it is not running, in the
//! role the cluster's authority names — initdb, clone, start, or rejoin a
//! former primary first — and back off after crashes and failed starts.
//! [`start_plan`] decides; the manager carries the plan out.

use std::time::{Duration, Instant};

use crate::contract::settings::InstanceSettings;

use super::super::authority::Authority;
use super::super::binaries::Binaries;
use super::super::bootstrap::{BootstrapSecrets, DataState};
use super::super::config::{self, Desired};
use super::super::fencing::GateError;
use super::super::process;
use super::super::remote::Primary;
use super::super::supervisor::{self, PostgresChild};
use super::Manager;
use super::errors::Source;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Beside PGDATA: the `capstan-user.conf` postgres last started with.
const STARTED_WITH: &str = "capstan-user.conf.started";

/// What the data directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DataKind {
    Missing,
    /// No `standby.signal`: it was a primary when it stopped.
    Primary,
    Standby,
}

/// How to bring PostgreSQL up when it is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StartPlan {
    Initdb,
    Clone,
    StartPrimary,
    StartReplica,
    /// A former primary that must follow another: rewind (or re-clone) first.
    Rejoin,
    Wait(String),
}

pub(super) fn start_plan(me: &str, target: Option<&str>, data: DataKind) -> StartPlan {
    match (target, data) {
        (Some(t), DataKind::Missing) if t == me => StartPlan::Initdb,
        (Some(_), DataKind::Missing) => StartPlan::Clone,
        (None, DataKind::Missing) => StartPlan::Wait(
            "the cluster names no primary yet; not creating data before it does".into(),
        ),
        (Some(t), DataKind::Primary) if t == me => StartPlan::StartPrimary,
        // Starts as a standby; the running check promotes it.
        (Some(t), DataKind::Standby) if t == me => StartPlan::StartReplica,
        (Some(_), DataKind::Primary) => StartPlan::Rejoin,
        (_, DataKind::Standby) => StartPlan::StartReplica,
        (None, DataKind::Primary) => StartPlan::Wait(
            "the cluster names no primary; a former primary does not start without being named"
                .into(),
        ),
    }
}

/// What the inspected data directory is, refusing data of another major
/// version (it is left untouched).
fn data_kind(state: &DataState, binaries_major: u32) -> Result<DataKind, String> {
    match state {
        DataState::Missing => Ok(DataKind::Missing),
        DataState::Present { major, .. } if *major != binaries_major => Err(format!(
            "the data directory is PostgreSQL {major}, the binaries are PostgreSQL {binaries_major}; refusing to start (data left untouched)"
        )),
        DataState::Present { standby: true, .. } => Ok(DataKind::Standby),
        DataState::Present { standby: false, .. } => Ok(DataKind::Primary),
    }
}

/// When the next start may be tried, and how many crashes came before.
pub(super) struct Restarts {
    next_start: Instant,
    backoff: Duration,
    count: u32,
    crashed: bool,
}

/// The first retry is immediate (a single crash should cost no extra
/// time), then 1s, 2s, … up to [`MAX_BACKOFF`].
fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(Duration::from_secs(1), MAX_BACKOFF)
}

impl Restarts {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            next_start: now,
            backoff: Duration::ZERO,
            count: 0,
            crashed: false,
        }
    }

    pub(super) fn due(&self, now: Instant) -> bool {
        now >= self.next_start
    }

    /// Crashes since the manager started (`postgresRestarts`).
    pub(super) fn count(&self) -> u32 {
        self.count
    }

    /// Something changed (settings, the authority's answer, a fence): try
    /// at once, not after the backoff.
    pub(super) fn retry_now(&mut self, now: Instant) {
        self.next_start = now;
    }

    pub(super) fn retry_after(&mut self, now: Instant, wait: Duration) {
        self.next_start = now + wait;
    }

    /// A start failed: wait the current backoff, and longer next time.
    fn failed(&mut self, now: Instant) -> Duration {
        let wait = self.backoff;
        self.next_start = now + wait;
        self.backoff = next_backoff(self.backoff);
        wait
    }

    /// Postgres exited unexpectedly; returns the wait before the restart.
    pub(super) fn crashed(&mut self, now: Instant) -> Duration {
        self.count += 1;
        self.crashed = true;
        self.failed(now)
    }

    /// Postgres accepts connections: the next failure retries at once.
    /// Returns whether this start recovered from a crash.
    fn started(&mut self) -> bool {
        self.backoff = Duration::ZERO;
        std::mem::take(&mut self.crashed)
    }
}

/// Why postgres was not started.
enum StartError {
    /// The primary lease is not held (yet): retried every tick, without
    /// backoff, so a healed partition or a released lease is used at once.
    Lease(String),
    /// Tried again after `after` (a failed restore), not after the
    /// start backoff.
    Retry {
        message: String,
        after: Duration,
    },
    Other(String),
}

impl From<String> for StartError {
    fn from(message: String) -> Self {
        Self::Other(message)
    }
}

impl<A: Authority> Manager<A> {
    pub(super) async fn start(&mut self, settings: &InstanceSettings, target: Option<&str>) {
        if target != Some(self.inputs.pod.as_str()) {
            // Not (or no longer) to be primary: a lease kept from an earlier
            // attempt would stop the named instance from taking over, and
            // this one may need that instance running to rejoin it.
            self.release_lease().await;
        }
        let result = match self.try_start(settings, target).await {
            // Stopped by a fence while starting: not a failure to back off from.
            Err(StartError::Other(message)) if self.shared.lease.fenced() => {
                Err(StartError::Lease(message))
            }
            other => other,
        };
        match result {
            Ok(()) => {
                self.clear_error(Source::Start);
                self.clear_error(Source::Lease);
            }
            Err(StartError::Lease(message)) => {
                self.set_error(Source::Lease, message);
                self.restarts.retry_now(Instant::now());
            }
            Err(StartError::Retry { message, after }) => {
                self.set_error(Source::Start, message);
                self.restarts.retry_after(Instant::now(), after);
            }
            Err(StartError::Other(message)) => {
                self.set_error(Source::Start, message);
                self.restarts.failed(Instant::now());
            }
        }
    }

    async fn try_start(
        &mut self,
        settings: &InstanceSettings,
        target: Option<&str>,
    ) -> Result<(), StartError> {
        let Some(bins) = self.bins.clone() else {
            return Err(String::from("no PostgreSQL binaries").into());
        };
        // An upgrade that got past its point of no return is finished first.
        let finishing = self
            .ops(settings, &bins)
            .recover_upgrade()
            .map_err(|e| e.to_string())?;
        let mut state = self.inspect(settings, &bins).await?;
        let me = self.inputs.pod.clone();
        let mut upgraded_from = finishing.map(|m| m.from);
        if let (Some(upgrade), DataState::Present { major, .. }) = (&settings.major_upgrade, &state)
            && *major == upgrade.from_version
            && *major != bins.major
        {
            if target != Some(me.as_str()) {
                return self.clone_upgraded_primary(settings, &bins).await;
            }
            self.hold_lease().await.map_err(StartError::Lease)?;
            self.major_upgrade(settings, &bins, upgrade.from_version)
                .await?;
            upgraded_from = Some(upgrade.from_version);
            state = self.inspect(settings, &bins).await?;
        }
        let kind = data_kind(&state, bins.major)?;
        let plan = start_plan(&me, target, kind);
        tracing::info!(plan = ?plan, target_primary = ?target, "starting");
        match plan {
            StartPlan::Wait(reason) => Err(reason.into()),
            StartPlan::Initdb => {
                // The lease first: a bootstrap the cluster cannot use is wasted.
                self.hold_lease().await.map_err(StartError::Lease)?;
                if let Some(restore) = &settings.restore {
                    self.restore_bootstrap(settings, &bins, restore)
                        .await
                        .map_err(|(message, after)| StartError::Retry {
                            message: format!("restoring from a backup failed: {message}"),
                            after,
                        })?;
                } else {
                    let secrets = BootstrapSecrets::read(&self.inputs, settings)
                        .map_err(|e| e.to_string())?;
                    self.busy(Some("initdb"));
                    let result = self.ops(settings, &bins).initdb(&secrets).await;
                    self.busy(None);
                    result.map_err(|e| format!("bootstrap failed: {e}"))?;
                }
                self.launch_primary(settings, &bins).await
            }
            StartPlan::Clone => {
                self.busy(Some("clone"));
                let result = self.ops(settings, &bins).clone_from_primary().await;
                self.busy(None);
                result.map_err(|e| format!("cloning from the primary failed: {e}"))?;
                self.launch_replica(settings, &bins).await
            }
            StartPlan::StartPrimary => {
                self.launch_primary(settings, &bins).await?;
                if let Some(from) = upgraded_from {
                    self.after_upgrade(settings, &bins, from);
                }
                Ok(())
            }
            StartPlan::StartReplica => {
                if let DataState::Present { control, .. } = &state {
                    self.check_same_system(settings, control.system_identifier)
                        .await?;
                }
                self.launch_replica(settings, &bins).await
            }
            StartPlan::Rejoin => {
                self.rejoin(settings, &bins).await?;
                self.launch_replica(settings, &bins).await
            }
        }
    }

    /// The data directory as it is, checked against the identity file.
    async fn inspect(
        &self,
        settings: &InstanceSettings,
        bins: &Binaries,
    ) -> Result<DataState, StartError> {
        let ops = self.ops(settings, bins);
        let state = ops.inspect().await.map_err(|e| e.to_string())?;
        if let DataState::Present { control, .. } = &state {
            ops.check_identity(control.system_identifier)
                .map_err(|e| e.to_string())?;
        }
        Ok(state)
    }

    /// A replica whose data is of the major the cluster upgrades from: the
    /// upgraded primary has a new system identifier, so it clones again,
    /// once that primary runs this pod's major.
    async fn clone_upgraded_primary(
        &mut self,
        settings: &InstanceSettings,
        bins: &Binaries,
    ) -> Result<(), StartError> {
        match Primary::new(&self.inputs, settings).info().await {
            Ok(p) if p.major == bins.major && !p.in_recovery => {}
            Ok(p) => {
                return Err(StartError::Retry {
                    message: format!(
                        "waiting for the primary to run PostgreSQL {} (it runs {}) before cloning it again after the major upgrade",
                        bins.major, p.major
                    ),
                    after: Duration::from_secs(2),
                });
            }
            Err(e) => {
                return Err(StartError::Retry {
                    message: format!("waiting for the upgraded primary: {e}"),
                    after: Duration::from_secs(2),
                });
            }
        }
        tracing::info!(
            operation = "major-upgrade",
            "cloning the upgraded primary again"
        );
        self.busy(Some("clone"));
        let result = self.ops(settings, bins).clone_from_primary().await;
        self.busy(None);
        result.map_err(|e| format!("cloning the upgraded primary failed: {e}"))?;
        self.launch_replica(settings, bins).await
    }

    /// Never writable without the lease: take it (or renew it) first.
    async fn launch_primary(
        &mut self,
        settings: &InstanceSettings,
        bins: &Binaries,
    ) -> Result<(), StartError> {
        self.hold_lease().await.map_err(StartError::Lease)?;
        Ok(self.launch(settings, bins, Desired::Primary).await?)
    }

    /// A replica holds no lease; a fenced former primary stops being fenced
    /// once it follows another.
    async fn launch_replica(
        &mut self,
        settings: &InstanceSettings,
        bins: &Binaries,
    ) -> Result<(), StartError> {
        self.release_lease().await;
        Ok(self.launch(settings, bins, Desired::Replica).await?)
    }

    /// A replica's data must come from the same system as the primary's;
    /// when the primary cannot be asked, the identity file has to do.
    async fn check_same_system(
        &self,
        settings: &InstanceSettings,
        system_identifier: u64,
    ) -> Result<(), String> {
        match Primary::new(&self.inputs, settings).info().await {
            Ok(p) if p.system_identifier != system_identifier => Err(format!(
                "the data directory has system identifier {system_identifier}, the primary {}: it belongs to another cluster; refusing to start on it (data left untouched)",
                p.system_identifier
            )),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot compare the system identifier with the primary's; starting on the identity file's word");
                Ok(())
            }
        }
    }

    /// Writes the configuration for `role` and starts postgres; returns once
    /// it accepts connections.
    pub(super) async fn launch(
        &mut self,
        settings: &InstanceSettings,
        bins: &Binaries,
        role: Desired,
    ) -> Result<(), String> {
        let server_tls = self.inputs.server_tls();
        for file in server_tls.all() {
            if !file.is_file() {
                return Err(format!(
                    "the server TLS file {} is missing; PostgreSQL needs it for ssl=on",
                    file.display()
                ));
            }
        }
        let pgdata = &self.inputs.data_dir.clone();
        if !process::wait_until_no_process_in(pgdata, Duration::from_secs(10)).await {
            return Err(format!(
                "processes of a previous postgres still work in {}; waiting for them to exit",
                pgdata.display()
            ));
        }
        let mut rendered =
            config::render(&self.inputs, settings, role).map_err(|e| e.to_string())?;
        self.gate_parameters(&mut rendered, settings).await;
        // What the last start ran with: the way back if the new parameters
        // pass `postgres -C` but cannot start (more memory than there is).
        let user_conf = pgdata.join(config::USER_CONF);
        let started_with = self.inputs.data_volume().join(STARTED_WITH);
        let ran_with = std::fs::read_to_string(&started_with)
            .ok()
            .filter(|previous| previous != rendered.user_conf());
        config::write(pgdata, &rendered).map_err(|e| e.to_string())?;
        config::set_standby(pgdata, role == Desired::Replica).map_err(|e| e.to_string())?;
        self.upkeep.tls_stamp = Some(self.inputs.server_tls().stamp());
        let child = self
            .shared
            .lease
            .start_postgres(role == Desired::Primary, || {
                PostgresChild::spawn(&bins.dir, pgdata, &[])
            })
            .map_err(|e| match e {
                GateError::NotHeld => {
                    format!("{e}; the primary lease lapsed before postgres started")
                }
                GateError::Spawn(e) => e.to_string(),
            })?;
        self.postgres = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if supervisor::postmaster_ready(pgdata) && self.local.accepts_connections().await {
                break;
            }
            if let Some(status) = self.postgres.as_ref().and_then(PostgresChild::exited) {
                // Its last log line may still be in the pipe.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let words = self
                    .postgres
                    .take()
                    .and_then(|child| child.last_error())
                    .unwrap_or_else(|| format!("it exited ({status})"));
                if let Some(previous) = ran_with {
                    self.undo_parameters(&user_conf, &previous, rendered.user_conf(), &words)?;
                }
                return Err(format!(
                    "postgres exited while starting ({status}); see its log lines"
                ));
            }
            if Instant::now() >= deadline {
                // Still running (e.g. a long crash recovery): supervise it as is.
                tracing::warn!("postgres does not accept connections yet; still waiting");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(role = ?role, "postgres accepts connections");
        if let Err(e) = config::write_atomic(&started_with, rendered.user_conf().as_bytes()) {
            tracing::warn!(path = %started_with.display(), error = %e, "cannot keep the parameters postgres started with");
        }
        if self.restarts.started() {
            self.clear_error(Source::Crash);
        }
        self.upkeep.started();
        self.refresh_snapshot().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::controldata::ControlData;
    use DataKind::*;

    #[test]
    fn fresh_volumes() {
        assert_eq!(start_plan("db-1", Some("db-1"), Missing), StartPlan::Initdb);
        assert_eq!(start_plan("db-2", Some("db-1"), Missing), StartPlan::Clone);
        assert!(matches!(
            start_plan("db-1", None, Missing),
            StartPlan::Wait(_)
        ));
    }

    #[test]
    fn an_old_primary_never_starts_writable_unless_named() {
        assert_eq!(
            start_plan("db-1", Some("db-1"), Primary),
            StartPlan::StartPrimary
        );
        assert_eq!(start_plan("db-1", Some("db-2"), Primary), StartPlan::Rejoin);
        assert!(matches!(
            start_plan("db-1", None, Primary),
            StartPlan::Wait(_)
        ));
    }

    #[test]
    fn standbys_start_as_standbys() {
        assert_eq!(
            start_plan("db-2", Some("db-1"), Standby),
            StartPlan::StartReplica
        );
        assert_eq!(
            start_plan("db-2", Some("db-2"), Standby),
            StartPlan::StartReplica
        );
        assert_eq!(start_plan("db-2", None, Standby), StartPlan::StartReplica);
    }

    fn present(major: u32, standby: bool) -> DataState {
        DataState::Present {
            control: ControlData {
                system_identifier: 7,
                cluster_state: "shut down".into(),
                timeline: 1,
                data_checksums: true,
                checkpoint: None,
            },
            standby,
            major,
        }
    }

    #[test]
    fn data_of_another_major_is_refused() {
        assert_eq!(data_kind(&DataState::Missing, 17), Ok(Missing));
        assert_eq!(data_kind(&present(17, false), 17), Ok(Primary));
        assert_eq!(data_kind(&present(17, true), 17), Ok(Standby));
        let refused = data_kind(&present(16, true), 17).unwrap_err();
        assert!(refused.contains("PostgreSQL 16"), "{refused}");
        assert!(refused.contains("left untouched"), "{refused}");
    }

    #[test]
    fn backoff_starts_immediate_and_is_capped() {
        let mut b = Duration::ZERO;
        let mut seen = vec![];
        for _ in 0..8 {
            seen.push(b.as_secs());
            b = next_backoff(b);
        }
        assert_eq!(seen, vec![0, 1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn crashes_back_off_until_a_start_succeeds() {
        let now = Instant::now();
        let mut r = Restarts::new(now);
        assert!(r.due(now));
        assert_eq!(
            r.crashed(now),
            Duration::ZERO,
            "the first restart is immediate"
        );
        assert!(r.due(now));
        assert_eq!(r.crashed(now), Duration::from_secs(1));
        assert!(!r.due(now) && r.due(now + Duration::from_secs(1)));
        assert_eq!(r.count(), 2);
        // A new answer from the authority is tried at once.
        r.retry_now(now);
        assert!(r.due(now));
        assert!(r.started(), "recovered from a crash");
        assert!(!r.started());
        assert_eq!(r.crashed(now), Duration::ZERO, "backoff reset by the start");
        assert_eq!(r.count(), 3);
        // A failed start backs off like a crash but is not counted as one.
        assert_eq!(r.failed(now), Duration::from_secs(1));
        assert_eq!(r.count(), 3);
    }
}
