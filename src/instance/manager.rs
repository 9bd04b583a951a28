//! The supervision loop: one task owns PostgreSQL and the data directory.
//! Every second (and on each API command) it reads the settings and the
//! cluster's authority, brings PostgreSQL up in the role the authority
//! names, applies configuration changes, keeps replication slots and
//! passwords in step, notices crashes and stuck replicas, and publishes the
//! report the API serves.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

use crate::contract::instance::{
    DemoteRequest, DemoteResult, InstanceReport, PromoteRequest, PromoteResult, Role,
};
use crate::contract::layout::mounts;
use crate::contract::settings::InstanceSettings;
use crate::postgres::lsn::Lsn;
use crate::postgres::roles;

use super::authority::Authority;
use super::binaries::Binaries;
use super::bootstrap::{BootstrapError, BootstrapSecrets, DataOps, DataState};
use super::config::{self, Desired};
use super::decide::{self, DataKind, RoleChange, StartPlan};
use super::fencing::{FenceError, GateError, LeaseHandle};
use super::inputs::{self, Inputs};
use super::local::{Local, Snapshot};
use super::process;
use super::remote::Primary;
use super::secrets;
use super::settings;
use super::state::{Command, CommandError, Shared};
use super::supervisor::{self, PostgresChild};

const TICK: Duration = Duration::from_secs(1);
const SLOT_SYNC_EVERY: Duration = Duration::from_secs(10);
/// A replica not streaming for this long is checked for divergence.
const STUCK_AFTER: Duration = Duration::from_secs(20);
const START_TIMEOUT: Duration = Duration::from_secs(60);
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Named primary while still streaming from the old one: a switchover. Wait
/// this long for the old primary to shut down (it sends all its WAL first),
/// so the promotion loses nothing and nothing diverges.
const SWITCHOVER_WAIT: Duration = Duration::from_secs(30);
/// How long a promote or demote waits for the target-primary move that
/// came with it before refusing.
const AUTHORITY_CATCH_UP: Duration = Duration::from_secs(2);

/// Sources of errors; each is cleared when its condition goes away, and the
/// report shows the most recent one still standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Settings,
    Binaries,
    Authority,
    Start,
    Crash,
    Config,
    Slots,
    Passwords,
    Replication,
    RoleChange,
    Lease,
}

/// Why postgres was not started.
enum StartError {
    /// The primary lease is not held (yet): retried every tick, without
    /// backoff, so a healed partition or a released lease is used at once.
    Lease(String),
    Other(String),
}

impl From<String> for StartError {
    fn from(message: String) -> Self {
        Self::Other(message)
    }
}

pub struct Manager<A: Authority> {
    shared: Arc<Shared>,
    inputs: Inputs,
    local: Local,
    authority: A,
    lease: LeaseHandle,
    settings: Option<InstanceSettings>,
    settings_text: Option<String>,
    bins: Option<Binaries>,
    postgres: Option<PostgresChild>,
    snapshot: Option<Snapshot>,
    target: Option<Option<String>>,
    errors: BTreeMap<Source, (Instant, String)>,
    next_start: Instant,
    backoff: Duration,
    restarts: u32,
    crashed: bool,
    passwords_applied: Option<[u8; 32]>,
    tls_stamp: Option<Vec<Option<SystemTime>>>,
    last_slot_sync: Option<Instant>,
    not_streaming_since: Option<Instant>,
    last_rejoin_check: Option<Instant>,
    primary_end: Option<Lsn>,
    named_while_streaming: Option<Instant>,
}

impl<A: Authority> Manager<A> {
    pub fn new(shared: Arc<Shared>, authority: A, lease: LeaseHandle) -> Self {
        let inputs = shared.inputs.clone();
        Self {
            local: shared.local.clone(),
            shared,
            inputs,
            authority,
            lease,
            settings: None,
            settings_text: None,
            bins: None,
            postgres: None,
            snapshot: None,
            target: None,
            errors: BTreeMap::new(),
            next_start: Instant::now(),
            backoff: Duration::ZERO,
            restarts: 0,
            crashed: false,
            passwords_applied: None,
            tls_stamp: None,
            last_slot_sync: None,
            not_streaming_since: None,
            last_rejoin_check: None,
            primary_end: None,
            named_while_streaming: None,
        }
    }

    /// Runs until `shutdown` turns true, then stops PostgreSQL within the
    /// shutdown budget.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let exit = self.postgres.as_ref().map(PostgresChild::exit_watch);
            let command = tokio::select! {
                biased;
                _ = super::state::stopping(&mut shutdown) => break,
                _ = tick.tick() => None,
                c = commands.recv() => c,
                _ = wait_exit(exit) => None,
            };
            let work = async {
                match command {
                    Some(c) => self.command(c).await,
                    None => self.tick().await,
                }
            };
            tokio::select! {
                biased;
                _ = super::state::stopping(&mut shutdown) => break,
                _ = work => {}
            }
        }
        self.shutdown().await;
    }

    fn set_error(&mut self, source: Source, message: impl Into<String>) {
        let message = message.into();
        let repeated = self.errors.get(&source).is_some_and(|(_, m)| *m == message);
        if !repeated {
            tracing::error!(source = ?source, "{message}");
            self.errors.insert(source, (Instant::now(), message));
        }
    }

    fn clear_error(&mut self, source: Source) {
        if self.errors.remove(&source).is_some() {
            tracing::info!(source = ?source, "resolved");
        }
    }

    async fn tick(&mut self) {
        self.shared.beat();
        self.notice_exit();
        self.load_settings();
        if let Some(settings) = self.settings.clone() {
            self.ensure_binaries(&settings).await;
            let target = self.read_authority().await;
            if self.bins.is_some() {
                if self.postgres.is_none() {
                    if let Ok(target) = target
                        && Instant::now() >= self.next_start
                    {
                        self.start(&settings, target.as_deref()).await;
                    }
                } else {
                    self.refresh_snapshot().await;
                    self.maintain(&settings, target.ok().flatten().as_deref())
                        .await;
                }
            }
        }
        self.refresh_snapshot().await;
        self.publish();
    }

    fn notice_exit(&mut self) {
        let Some(status) = self.postgres.as_ref().and_then(PostgresChild::exited) else {
            return;
        };
        self.postgres = None;
        self.snapshot = None;
        if self.shared.lease.fenced() {
            // Stopped on purpose: not a crash. The start path takes the
            // lease back (still the target) or rejoins (target moved).
            tracing::warn!(status = %status, "postgres stopped by the fence");
            self.set_error(
                Source::Lease,
                "fenced: postgres was stopped because the primary lease could not be renewed or was taken over",
            );
            self.next_start = Instant::now();
            return;
        }
        self.restarts += 1;
        self.crashed = true;
        self.shared.metrics.postgres_restarts.inc();
        let wait = self.backoff;
        self.next_start = Instant::now() + wait;
        self.backoff = next_backoff(self.backoff);
        self.set_error(
            Source::Crash,
            format!(
                "postgres exited unexpectedly ({status}); restarting in {}s",
                wait.as_secs()
            ),
        );
    }

    fn load_settings(&mut self) {
        let path = self.inputs.settings_file();
        let text = match settings::read(&path) {
            Ok(t) => t,
            Err(e) => {
                self.set_error(Source::Settings, e.to_string());
                return;
            }
        };
        if self.settings_text.as_deref() == Some(text.as_str()) {
            return;
        }
        self.settings_text = Some(text.clone());
        match settings::parse(&path, &text, &self.inputs.cluster, &self.inputs.namespace) {
            Ok(s) => {
                if self.settings.is_some() {
                    tracing::info!("settings changed");
                }
                if let Some(why) = config::synchronous_standbys(&self.inputs, &s).adjusted {
                    tracing::warn!("{why}");
                }
                self.lease.configure(s.fencing.clone());
                self.settings = Some(s);
                self.next_start = Instant::now();
                self.clear_error(Source::Settings);
            }
            // Keep the last good settings; PostgreSQL keeps running on them.
            Err(e) => self.set_error(Source::Settings, e.to_string()),
        }
    }

    async fn ensure_binaries(&mut self, settings: &InstanceSettings) {
        if self
            .bins
            .as_ref()
            .is_some_and(|b| i64::from(b.major) == i64::from(settings.postgres_version))
        {
            return;
        }
        match Binaries::resolve(self.inputs.pg_bin_dir.as_deref(), settings.postgres_version).await
        {
            Ok(b) => {
                tracing::info!(dir = %b.dir.display(), version = %b.version, "PostgreSQL binaries");
                self.bins = Some(b);
                self.clear_error(Source::Binaries);
            }
            Err(e) => {
                self.bins = None;
                self.set_error(Source::Binaries, e.to_string());
            }
        }
    }

    /// The primary moved: a replica streaming from the old one (perhaps
    /// frozen or cut off, so its connection just hangs) reconnects through
    /// the `-rw` Service. Twice: the Service may move a moment after the
    /// target does; a primary has no WAL receiver, so it is a no-op there.
    fn follow_new_primary(&self) {
        let Some(postmaster) = self.postgres.as_ref().map(|p| p.signaller().pid()) else {
            return;
        };
        tokio::spawn(
            async move {
                for delay in [Duration::from_secs(1), Duration::from_secs(3)] {
                    tokio::time::sleep(delay).await;
                    restart_wal_receiver(postmaster);
                }
            }
            .in_current_span(),
        );
    }

    async fn read_authority(&mut self) -> Result<Option<String>, ()> {
        match self.authority.target_primary().await {
            Ok(t) => {
                if self.target.as_ref() != Some(&t) {
                    tracing::info!(target_primary = ?t, "the cluster's target primary");
                    // A new answer is worth a start attempt now, not after the backoff.
                    self.next_start = Instant::now();
                    let moved = matches!(&self.target, Some(Some(_)));
                    if moved && t.as_deref() != Some(self.inputs.pod.as_str()) {
                        self.follow_new_primary();
                    }
                }
                self.target = Some(t.clone());
                self.clear_error(Source::Authority);
                Ok(t)
            }
            Err(e) => {
                self.set_error(Source::Authority, e.to_string());
                Err(())
            }
        }
    }

    fn ops<'a>(&'a self, settings: &'a InstanceSettings, bins: &'a Binaries) -> DataOps<'a> {
        DataOps {
            inputs: &self.inputs,
            settings,
            bins,
        }
    }

    // ---- starting -------------------------------------------------------

    async fn start(&mut self, settings: &InstanceSettings, target: Option<&str>) {
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
                self.next_start = Instant::now();
            }
            Err(StartError::Other(message)) => {
                self.set_error(Source::Start, message);
                self.next_start = Instant::now() + self.backoff;
                self.backoff = next_backoff(self.backoff);
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
        let ops = self.ops(settings, &bins);
        let state = ops.inspect().await.map_err(|e| e.to_string())?;
        let kind = match &state {
            DataState::Missing => DataKind::Missing,
            DataState::Present {
                control,
                standby,
                major,
            } => {
                if *major != bins.major {
                    return Err(format!(
                        "the data directory is PostgreSQL {major}, the binaries are PostgreSQL {}; refusing to start (data left untouched)",
                        bins.major
                    )
                    .into());
                }
                ops.check_identity(control.system_identifier)
                    .map_err(|e| e.to_string())?;
                if *standby {
                    DataKind::Standby
                } else {
                    DataKind::Primary
                }
            }
        };
        let plan = decide::start_plan(&self.inputs.pod, target, kind);
        tracing::info!(plan = ?plan, target_primary = ?target, "starting");
        match plan {
            StartPlan::Wait(reason) => Err(reason.into()),
            StartPlan::Initdb => {
                // The lease first: a bootstrap the cluster cannot use is wasted.
                self.hold_lease().await.map_err(StartError::Lease)?;
                let secrets =
                    BootstrapSecrets::read(&self.inputs, settings).map_err(|e| e.to_string())?;
                self.busy(Some("initdb"));
                let result = self.ops(settings, &bins).initdb(&secrets).await;
                self.busy(None);
                result.map_err(|e| format!("bootstrap failed: {e}"))?;
                self.launch_primary(settings, &bins).await
            }
            StartPlan::Clone => {
                self.busy(Some("clone"));
                let result = self.ops(settings, &bins).clone_from_primary().await;
                self.busy(None);
                result.map_err(|e| format!("cloning from the primary failed: {e}"))?;
                self.launch_replica(settings, &bins).await
            }
            StartPlan::StartPrimary => self.launch_primary(settings, &bins).await,
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

    /// Holds the primary lease (a no-op without fencing).
    async fn hold_lease(&mut self) -> Result<(), String> {
        match self.lease.acquire().await {
            Ok(()) => {
                self.clear_error(Source::Lease);
                Ok(())
            }
            Err(e) => Err(format!("not starting writable: {e}")),
        }
    }

    async fn release_lease(&mut self) {
        if self.shared.lease.holding() || self.shared.lease.fenced() {
            self.lease.release().await;
        }
        self.clear_error(Source::Lease);
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

    fn busy(&self, operation: Option<&'static str>) {
        self.shared.set_busy(operation);
        self.shared.beat();
    }

    /// Writes the configuration for `role` and starts postgres; returns once
    /// it accepts connections.
    async fn launch(
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
        let pgdata = &self.inputs.data_dir;
        if !process::wait_until_no_process_in(pgdata, Duration::from_secs(10)).await {
            return Err(format!(
                "processes of a previous postgres still work in {}; waiting for them to exit",
                pgdata.display()
            ));
        }
        let rendered = config::render(&self.inputs, settings, role).map_err(|e| e.to_string())?;
        config::write(pgdata, &rendered).map_err(|e| e.to_string())?;
        config::set_standby(pgdata, role == Desired::Replica).map_err(|e| e.to_string())?;
        self.tls_stamp = Some(self.inputs.server_tls().stamp());
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
                self.postgres = None;
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
        self.backoff = Duration::ZERO;
        if self.crashed {
            self.crashed = false;
            self.clear_error(Source::Crash);
        }
        self.not_streaming_since = None;
        self.last_slot_sync = None;
        self.passwords_applied = None;
        self.refresh_snapshot().await;
        Ok(())
    }

    // ---- running --------------------------------------------------------

    async fn refresh_snapshot(&mut self) {
        if self.postgres.is_none() {
            self.snapshot = None;
            return;
        }
        match self.local.snapshot().await {
            Ok(s) => {
                if let Some(end) = s.primary_end_lsn {
                    self.primary_end = Some(end);
                }
                self.snapshot = Some(s);
            }
            Err(e) => {
                tracing::debug!(error = %e, "no snapshot");
                self.snapshot = None;
            }
        }
    }

    async fn maintain(&mut self, settings: &InstanceSettings, target: Option<&str>) {
        self.apply_settings(settings).await;
        let Some(snapshot) = self.snapshot.clone() else {
            return;
        };
        let change = decide::role_change(&self.inputs.pod, target, snapshot.in_recovery);
        if change != RoleChange::Promote {
            self.named_while_streaming = None;
        }
        match change {
            RoleChange::Promote => {
                if snapshot.wal_receiver.as_deref() == Some("streaming") {
                    let since = *self.named_while_streaming.get_or_insert_with(|| {
                        tracing::info!("named primary while the old one still streams; waiting for it to shut down");
                        Instant::now()
                    });
                    if since.elapsed() < SWITCHOVER_WAIT {
                        return;
                    }
                    tracing::warn!(
                        waited_s = since.elapsed().as_secs(),
                        "the old primary still streams; promoting as the cluster says"
                    );
                }
                if let Err(e) = self.hold_lease().await {
                    self.set_error(Source::Lease, format!("not promoting yet: {e}"));
                    return;
                }
                match self.promote_now().await {
                    Ok(_) => self.sync_slots(settings).await,
                    Err(e) => self.set_error(Source::RoleChange, e.to_string()),
                }
                return;
            }
            RoleChange::Demote => {
                if let Err(e) = self.demote_now(settings).await {
                    self.set_error(Source::RoleChange, e.to_string());
                }
                return;
            }
            RoleChange::None => {}
        }
        if snapshot.in_recovery {
            // Left from a promotion that did not happen: another may need it.
            if self.shared.lease.holding() && target != Some(self.inputs.pod.as_str()) {
                self.release_lease().await;
            }
            self.drop_local_slots().await;
            self.watch_replication(settings, &snapshot).await;
        } else {
            if !self.keep_lease().await {
                return;
            }
            self.not_streaming_since = None;
            self.clear_error(Source::Replication);
            self.sync_slots(settings).await;
            self.sync_passwords(settings).await;
        }
    }

    /// A running primary must hold the lease (fencing configured while it
    /// ran, or a renamed lease). One it cannot get means another instance
    /// may be primary: fence. Returns whether it may go on as primary.
    async fn keep_lease(&mut self) -> bool {
        let lease = &self.shared.lease;
        if !lease.enabled() || lease.holding() {
            return true;
        }
        if lease.fenced() {
            return false;
        }
        match self.lease.acquire().await {
            Ok(()) => true,
            Err(e) => {
                let reason = format!("a running primary cannot hold the primary lease: {e}");
                self.set_error(Source::Lease, reason.clone());
                self.lease.fence(reason).await;
                false
            }
        }
    }

    async fn apply_settings(&mut self, settings: &InstanceSettings) {
        let role = match &self.snapshot {
            Some(s) if !s.in_recovery => Desired::Primary,
            Some(_) => Desired::Replica,
            None => return,
        };
        let rendered = match config::render(&self.inputs, settings, role) {
            Ok(r) => r,
            Err(e) => {
                self.set_error(Source::Config, e.to_string());
                return;
            }
        };
        let changed = match config::write(&self.inputs.data_dir, &rendered) {
            Ok(c) => c,
            Err(e) => {
                self.set_error(Source::Config, e.to_string());
                return;
            }
        };
        let stamp = self.inputs.server_tls().stamp();
        let tls_changed = self.tls_stamp.as_ref() != Some(&stamp);
        self.tls_stamp = Some(stamp);
        if !changed && !tls_changed {
            return;
        }
        tracing::info!(config_changed = changed, tls_changed, "reloading postgres");
        if let Err(e) = self.local.reload().await {
            self.set_error(Source::Config, e.to_string());
            return;
        }
        // The postmaster re-reads the files asynchronously after the signal.
        tokio::time::sleep(Duration::from_millis(200)).await;
        match self.local.config_problems().await {
            Ok(problems) if problems.is_empty() => self.clear_error(Source::Config),
            Ok(problems) => self.set_error(
                Source::Config,
                format!(
                    "PostgreSQL rejected part of the configuration: {}",
                    problems.join("; ")
                ),
            ),
            Err(e) => self.set_error(Source::Config, e.to_string()),
        }
        self.last_slot_sync = None;
    }

    async fn sync_slots(&mut self, settings: &InstanceSettings) {
        if self
            .last_slot_sync
            .is_some_and(|t| t.elapsed() < SLOT_SYNC_EVERY)
        {
            return;
        }
        self.last_slot_sync = Some(Instant::now());
        let wanted: Vec<String> = settings
            .instances
            .iter()
            .filter(|i| **i != self.inputs.pod)
            .map(|i| inputs::slot_name(i))
            .collect();
        match self
            .local
            .sync_slots(&wanted, &inputs::slot_name(&self.inputs.cluster))
            .await
        {
            Ok((created, dropped)) => {
                if !created.is_empty() || !dropped.is_empty() {
                    tracing::info!(?created, ?dropped, "replication slots");
                }
                self.clear_error(Source::Slots);
            }
            Err(e) => self.set_error(Source::Slots, e.to_string()),
        }
    }

    /// Slots on a replica would only pin WAL there (they are left over from
    /// when it was primary); the primary keeps the cluster's slots.
    async fn drop_local_slots(&mut self) {
        if self
            .last_slot_sync
            .is_some_and(|t| t.elapsed() < SLOT_SYNC_EVERY)
        {
            return;
        }
        self.last_slot_sync = Some(Instant::now());
        match self
            .local
            .sync_slots(&[], &inputs::slot_name(&self.inputs.cluster))
            .await
        {
            Ok((_, dropped)) => {
                if !dropped.is_empty() {
                    tracing::info!(
                        ?dropped,
                        "dropped replication slots left from the primary role"
                    );
                }
                self.clear_error(Source::Slots);
            }
            Err(e) => self.set_error(Source::Slots, e.to_string()),
        }
    }

    /// Keeps role passwords equal to the Secrets (rotation without restart).
    async fn sync_passwords(&mut self, settings: &InstanceSettings) {
        let read = || -> Result<Vec<(String, secrets::Password)>, secrets::SecretError> {
            Ok(vec![
                (
                    roles::SUPERUSER.to_string(),
                    secrets::read_password(&self.inputs.secret_dir(mounts::SUPERUSER))?,
                ),
                (
                    settings.initdb.owner.clone(),
                    secrets::read_password(&self.inputs.secret_dir(mounts::APP))?,
                ),
                (
                    roles::POOLER.to_string(),
                    secrets::read_password(&self.inputs.secret_dir(mounts::POOLER))?,
                ),
            ])
        };
        let wanted = match read() {
            Ok(w) => w,
            Err(e) => {
                self.set_error(Source::Passwords, e.to_string());
                return;
            }
        };
        let mut hash = Sha256::new();
        for (role, password) in &wanted {
            hash.update(role.as_bytes());
            hash.update([0]);
            hash.update(password.expose().as_bytes());
            hash.update([0]);
        }
        let digest: [u8; 32] = hash.finalize().into();
        if self.passwords_applied == Some(digest) {
            return;
        }
        let roles: Vec<&str> = wanted.iter().map(|(role, _)| role.as_str()).collect();
        let stored = match self.local.stored_passwords(&roles).await {
            Ok(stored) => stored,
            Err(e) => {
                self.set_error(Source::Passwords, e.to_string());
                return;
            }
        };
        let mut changed = Vec::new();
        for (role, password) in &wanted {
            if stored
                .get(role)
                .is_some_and(|s| password.matches_verifier(s))
            {
                continue;
            }
            if let Err(e) = self
                .local
                .set_password(role, &password.scram_verifier())
                .await
            {
                self.set_error(Source::Passwords, e.to_string());
                return;
            }
            changed.push(role.as_str());
        }
        if !changed.is_empty() {
            tracing::info!(roles = ?changed, "role passwords set from the Secrets");
        }
        self.passwords_applied = Some(digest);
        self.clear_error(Source::Passwords);
    }

    /// A replica that stopped streaming while the primary moved to a newer
    /// timeline has diverged: rewind it.
    async fn watch_replication(&mut self, settings: &InstanceSettings, snapshot: &Snapshot) {
        if snapshot.wal_receiver.as_deref() == Some("streaming") {
            self.not_streaming_since = None;
            self.clear_error(Source::Replication);
            return;
        }
        let since = *self.not_streaming_since.get_or_insert_with(Instant::now);
        if since.elapsed() < STUCK_AFTER
            || self
                .last_rejoin_check
                .is_some_and(|t| t.elapsed() < STUCK_AFTER)
        {
            return;
        }
        self.last_rejoin_check = Some(Instant::now());
        self.set_error(
            Source::Replication,
            format!(
                "not streaming from the primary for {}s",
                since.elapsed().as_secs()
            ),
        );
        let primary = match Primary::new(&self.inputs, settings).info().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the primary");
                return;
            }
        };
        let local_timeline = snapshot.timeline.unwrap_or(0);
        if primary.in_recovery || primary.timeline <= local_timeline {
            return;
        }
        tracing::warn!(
            local_timeline,
            primary_timeline = primary.timeline,
            "the primary is on a newer timeline this replica cannot follow; rejoining"
        );
        if let Err(e) = self.restart_as_follower(settings).await {
            self.set_error(Source::RoleChange, e);
        }
    }

    async fn stop_fast(&mut self) -> Result<(), String> {
        let Some(mut child) = self.postgres.take() else {
            return Ok(());
        };
        self.snapshot = None;
        let status = child
            .stop(&supervisor::fast_plan(self.inputs.shutdown_budget))
            .await;
        match status {
            Some(_) => Ok(()),
            None => {
                self.postgres = Some(child);
                Err("postgres did not stop".into())
            }
        }
    }

    /// Stop, rewind (or re-clone) against the primary, start as replica.
    async fn restart_as_follower(&mut self, settings: &InstanceSettings) -> Result<bool, String> {
        let Some(bins) = self.bins.clone() else {
            return Err("no PostgreSQL binaries".into());
        };
        self.stop_fast().await?;
        self.release_lease().await;
        let rewound = self.rejoin(settings, &bins).await?;
        self.launch(settings, &bins, Desired::Replica).await?;
        Ok(rewound)
    }

    /// Makes a stopped data directory follow the primary behind
    /// `primary_host`: pg_rewind when the timelines differ, a fresh clone
    /// when rewinding fails. Never starts anything writable. Returns whether
    /// the data was rewritten.
    async fn rejoin(
        &mut self,
        settings: &InstanceSettings,
        bins: &Binaries,
    ) -> Result<bool, String> {
        let ops = self.ops(settings, bins);
        let control = ops
            .controldata(&self.inputs.data_dir)
            .await
            .map_err(|e| e.to_string())?;
        let remote = Primary::new(&self.inputs, settings);
        let primary = remote
            .info()
            .await
            .map_err(|e| format!("waiting for the primary to rejoin it: {e}"))?;
        if primary.in_recovery {
            return Err(format!(
                "{}:{} is still a standby; waiting for the new primary before rejoining",
                settings.primary_host, settings.primary_port
            ));
        }
        if primary.system_identifier != control.system_identifier {
            return Err(format!(
                "the primary has system identifier {}, this data {}: refusing to rejoin (data left untouched)",
                primary.system_identifier, control.system_identifier
            ));
        }
        if primary.timeline == control.timeline {
            config::set_standby(&self.inputs.data_dir, true).map_err(|e| e.to_string())?;
            return Ok(false);
        }
        if let Err(e) = remote.checkpoint().await {
            tracing::warn!(error = %e, "CHECKPOINT on the primary failed; rewinding anyway");
        }
        self.busy(Some("rewind"));
        let rewound = self.ops(settings, bins).rewind().await;
        self.busy(None);
        match rewound {
            Ok(()) => {
                self.shared.metrics.rewind_result(true);
                tracing::info!(operation = "rewind", "rewound to the primary's timeline");
                Ok(true)
            }
            Err(e) => {
                self.shared.metrics.rewind_result(false);
                tracing::warn!(operation = "rewind", error = %e, "pg_rewind failed; re-cloning from the primary");
                self.busy(Some("re-clone"));
                let cloned = self.ops(settings, bins).clone_from_primary().await;
                self.busy(None);
                cloned.map_err(|e: BootstrapError| {
                    format!("re-clone after a failed rewind failed: {e}")
                })?;
                self.shared.metrics.reclones.inc();
                Ok(true)
            }
        }
    }

    /// Promotes and returns as soon as writes are accepted; the config
    /// rewrite and the slots for the others follow on the next tick.
    async fn promote_now(&mut self) -> Result<u64, CommandError> {
        let started = Instant::now();
        if !self.shared.lease.may_write() {
            return Err(CommandError::Unavailable(
                "this instance does not hold the primary lease; not promoting".into(),
            ));
        }
        tracing::info!(operation = "promote", "promoting");
        self.local
            .promote(PROMOTE_TIMEOUT)
            .await
            .map_err(|e| CommandError::Failed(e.to_string()))?;
        let elapsed = started.elapsed().as_millis() as u64;
        self.shared.metrics.promotions.inc();
        tracing::info!(
            operation = "promote",
            elapsed_ms = elapsed,
            "promoted; accepting writes"
        );
        self.clear_error(Source::RoleChange);
        self.clear_error(Source::Replication);
        self.last_slot_sync = None;
        self.refresh_snapshot().await;
        Ok(elapsed)
    }

    /// Clean shutdown, then follow the new primary. Returns (rewound,
    /// following); when the new primary does not answer yet, postgres stays
    /// stopped and the start path rejoins it once it does — a demoted
    /// primary never comes back writable.
    async fn demote_now(
        &mut self,
        settings: &InstanceSettings,
    ) -> Result<(bool, bool), CommandError> {
        tracing::info!(
            operation = "demote",
            "demoting: clean shutdown, then follow the new primary"
        );
        // A checkpoint now makes the shutdown checkpoint short.
        if let Err(e) = self.local.checkpoint().await {
            tracing::warn!(error = %e, "CHECKPOINT before demotion failed");
        }
        self.stop_fast().await.map_err(CommandError::Failed)?;
        // Stopped cleanly: the new primary may take the lease at once.
        self.release_lease().await;
        let Some(bins) = self.bins.clone() else {
            return Err(CommandError::Failed("no PostgreSQL binaries".into()));
        };
        self.clear_error(Source::RoleChange);
        match self.rejoin(settings, &bins).await {
            Ok(rewound) => {
                self.launch(settings, &bins, Desired::Replica)
                    .await
                    .map_err(CommandError::Failed)?;
                Ok((rewound, true))
            }
            Err(e) => {
                self.set_error(Source::Start, e);
                self.next_start = Instant::now() + Duration::from_secs(1);
                Ok((false, false))
            }
        }
    }

    // ---- commands -------------------------------------------------------

    async fn command(&mut self, command: Command) {
        self.shared.beat();
        self.notice_exit();
        self.load_settings();
        // The report is published before the answer goes out, so a caller
        // that reads /status next sees the outcome.
        match command {
            // The caller gave up (its request timed out): do not act on it late.
            Command::Promote(_, reply) if reply.is_closed() => {}
            Command::Demote(_, reply) if reply.is_closed() => {}
            Command::Promote(request, reply) => {
                let result = self.promote_command(request).await;
                self.refresh_snapshot().await;
                self.publish();
                let promoted = matches!(&result, Ok(r) if !r.already_primary);
                let _ = reply.send(result);
                // Slots for the others right away: one may rejoin at once.
                if promoted && let Some(settings) = self.settings.clone() {
                    self.sync_slots(&settings).await;
                }
            }
            Command::Demote(request, reply) => {
                let result = self.demote_command(request).await;
                self.refresh_snapshot().await;
                self.publish();
                let _ = reply.send(result);
            }
        }
    }

    fn running_settings(&self) -> Result<InstanceSettings, CommandError> {
        let settings = self
            .settings
            .clone()
            .ok_or_else(|| CommandError::Unavailable("no valid settings loaded".into()))?;
        if self.postgres.is_none() {
            return Err(CommandError::Unavailable("postgres is not running".into()));
        }
        Ok(settings)
    }

    async fn authority_target(&mut self) -> Result<Option<String>, CommandError> {
        self.read_authority().await.map_err(|()| {
            CommandError::Unavailable("cannot read the cluster's target primary".into())
        })
    }

    /// The target primary, waiting a moment for it to become `expected`:
    /// the operator moves `status.targetPrimary` and then sends the command,
    /// and the watch that brings the move here may arrive after the command.
    async fn authority_target_expecting(
        &mut self,
        expected: &str,
    ) -> Result<Option<String>, CommandError> {
        let deadline = Instant::now() + AUTHORITY_CATCH_UP;
        loop {
            let target = self.authority_target().await?;
            if target.as_deref() == Some(expected) || Instant::now() >= deadline {
                return Ok(target);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn promote_command(
        &mut self,
        request: PromoteRequest,
    ) -> Result<PromoteResult, CommandError> {
        let started = Instant::now();
        self.running_settings()?;
        let pod = self.inputs.pod.clone();
        let target = self.authority_target_expecting(&pod).await?;
        if target.as_deref() != Some(self.inputs.pod.as_str()) {
            return Err(CommandError::Conflict(format!(
                "the cluster's target primary is {}, not {}; refusing to promote",
                target.as_deref().unwrap_or("nobody"),
                self.inputs.pod
            )));
        }
        let snapshot = self
            .local
            .snapshot()
            .await
            .map_err(|e| CommandError::Unavailable(e.to_string()))?;
        if !snapshot.in_recovery {
            return Ok(PromoteResult {
                timeline: snapshot.timeline.unwrap_or(0),
                elapsed_ms: started.elapsed().as_millis() as u64,
                already_primary: true,
            });
        }
        if let Some(max) = request.max_lag_bytes {
            let received = snapshot
                .receive_lsn
                .or(snapshot.replay_lsn)
                .unwrap_or_default();
            let behind = self
                .primary_end
                .map(|end| end.bytes_after(received))
                .unwrap_or(0);
            if behind > max {
                return Err(CommandError::Conflict(format!(
                    "this replica is {behind} bytes behind the primary's last known position, more than the allowed {max}; refusing to promote"
                )));
            }
        }
        // A failover: the operator waited out the old holder's lease, so the
        // takeover is normally immediate; a holder still renewing is refused.
        match self.lease.acquire().await {
            Ok(()) => self.clear_error(Source::Lease),
            Err(e @ FenceError::HeldBy { .. }) => {
                return Err(CommandError::Conflict(format!("{e}; refusing to promote")));
            }
            Err(e) => {
                return Err(CommandError::Unavailable(format!(
                    "cannot take the primary lease: {e}; refusing to promote"
                )));
            }
        }
        self.promote_now().await?;
        let timeline = self.snapshot.as_ref().and_then(|s| s.timeline).unwrap_or(0);
        Ok(PromoteResult {
            timeline,
            elapsed_ms: started.elapsed().as_millis() as u64,
            already_primary: false,
        })
    }

    async fn demote_command(
        &mut self,
        request: DemoteRequest,
    ) -> Result<DemoteResult, CommandError> {
        let started = Instant::now();
        let settings = self
            .settings
            .clone()
            .ok_or_else(|| CommandError::Unavailable("no valid settings loaded".into()))?;
        if request.new_primary == self.inputs.pod {
            return Err(CommandError::Conflict(
                "newPrimary names this instance; it cannot follow itself".into(),
            ));
        }
        let target = self
            .authority_target_expecting(&request.new_primary)
            .await?;
        if target.as_deref() != Some(request.new_primary.as_str()) {
            return Err(CommandError::Conflict(format!(
                "the cluster's target primary is {}, not {}; refusing to demote",
                target.as_deref().unwrap_or("nobody"),
                request.new_primary
            )));
        }
        let elapsed = || started.elapsed().as_millis() as u64;
        if self.postgres.is_none() {
            // Not running, so not writable; the start path brings it back
            // as a replica of the target.
            return Ok(DemoteResult {
                elapsed_ms: elapsed(),
                already_replica: false,
                rewound: false,
                following: false,
            });
        }
        let snapshot = self
            .local
            .snapshot()
            .await
            .map_err(|e| CommandError::Unavailable(e.to_string()))?;
        if snapshot.in_recovery {
            return Ok(DemoteResult {
                elapsed_ms: elapsed(),
                already_replica: true,
                rewound: false,
                following: snapshot.wal_receiver.as_deref() == Some("streaming"),
            });
        }
        let (rewound, following) = self.demote_now(&settings).await?;
        Ok(DemoteResult {
            elapsed_ms: elapsed(),
            already_replica: false,
            rewound,
            following,
        })
    }

    // ---- report and shutdown -------------------------------------------

    fn publish(&self) {
        let mut report = super::state::empty_report(&self.inputs.pod);
        report.target_primary = self.target.clone().flatten();
        report.lease = self.shared.lease.report();
        report.postgres_restarts = self.restarts;
        report.last_error = self
            .errors
            .values()
            .max_by_key(|(at, _)| *at)
            .map(|(_, m)| m.clone());
        if let Some(s) = &self.snapshot {
            report.running = true;
            report.role = if s.in_recovery {
                Role::Replica
            } else {
                Role::Primary
            };
            report.timeline = s.timeline;
            report.system_identifier = Some(s.system_identifier.clone());
            report.current_lsn = s.current_lsn.map(|l| l.to_string());
            report.receive_lsn = s.receive_lsn.map(|l| l.to_string());
            report.replay_lsn = s.replay_lsn.map(|l| l.to_string());
            report.flush_lsn = s.flush_lsn.map(|l| l.to_string());
            report.wal_receiver = s.wal_receiver.clone();
            report.pending_restart = s.pending_restart;
            report.standbys = s.standbys.clone();
            report.version = Some(s.version.clone());
            report.postgres_uptime_seconds = Some(s.uptime_seconds);
            if s.in_recovery {
                let replayed = s.replay_lsn.unwrap_or_default();
                let known_end = [self.primary_end, s.receive_lsn]
                    .into_iter()
                    .flatten()
                    .max()
                    .unwrap_or(replayed);
                let lag = known_end.bytes_after(replayed);
                report.lag_bytes = Some(lag);
                report.lag_seconds = Some(if lag == 0 {
                    0.0
                } else {
                    s.replay_delay_seconds.unwrap_or(0.0).max(0.0)
                });
            }
            report.ready = ready(&report, self.inputs.ready_max_lag_bytes);
        }
        self.shared.publish(report);
    }

    async fn shutdown(mut self) {
        let Some(mut child) = self.postgres.take() else {
            tracing::info!("shutting down; postgres was not running");
            self.release_lease().await;
            return;
        };
        let budget = self.inputs.shutdown_budget;
        let started = Instant::now();
        let primary = self.snapshot.as_ref().is_some_and(|s| !s.in_recovery);
        tracing::info!(budget_s = budget.as_secs(), primary, "shutting down");
        if primary {
            // Most of the shutdown checkpoint's work, done while clients still run.
            let _ = tokio::time::timeout(budget / 3, self.local.checkpoint()).await;
        }
        let remaining = budget.saturating_sub(started.elapsed());
        let status = child.stop(&supervisor::shutdown_plan(remaining)).await;
        tracing::info!(
            status = status.as_deref().unwrap_or("unknown"),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "postgres stopped; exiting"
        );
        if status.is_some() {
            // Stopped: the next primary need not wait for the lease to expire.
            self.release_lease().await;
        }
    }
}

/// SIGTERM ends a WAL receiver and the startup process starts a new one.
/// Found by its process title, not `pg_stat_wal_receiver`: that view shows
/// nothing while the receiver is still connecting, which is where one hangs
/// on a frozen primary (its kernel accepts, nothing answers, and the
/// receiver's connection loop has no timeout). `pg_terminate_backend`
/// refuses it too: it is not a backend.
fn restart_wal_receiver(postmaster: u32) {
    for pid in process::children_titled(postmaster, "walreceiver") {
        match nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        ) {
            Ok(()) => {
                tracing::info!(pid, "restarted the WAL receiver to follow the new primary")
            }
            Err(e) => tracing::warn!(pid, error = %e, "cannot restart the WAL receiver"),
        }
    }
}

/// The first retry is immediate (a single crash should cost no extra
/// time), then 1s, 2s, … up to [`MAX_BACKOFF`].
fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(Duration::from_secs(1), MAX_BACKOFF)
}

fn ready(report: &InstanceReport, max_lag: u64) -> bool {
    match report.role {
        Role::Primary => report.running,
        Role::Replica => {
            report.running
                && report.wal_receiver.as_deref() == Some("streaming")
                && report.lag_bytes.unwrap_or(u64::MAX) <= max_lag
        }
        Role::Unknown => false,
    }
}

async fn wait_exit(exit: Option<watch::Receiver<Option<String>>>) {
    match exit {
        Some(mut rx) => {
            let _ = rx.wait_for(Option::is_some).await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::state::empty_report;

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
    fn readiness_needs_streaming_within_the_lag_bound() {
        let mut r = empty_report("db-2");
        assert!(!ready(&r, 10));
        r.running = true;
        r.role = Role::Primary;
        assert!(ready(&r, 10));
        r.role = Role::Replica;
        r.wal_receiver = Some("streaming".into());
        r.lag_bytes = Some(10);
        assert!(ready(&r, 10));
        r.lag_bytes = Some(11);
        assert!(!ready(&r, 10));
        r.lag_bytes = Some(0);
        r.wal_receiver = Some("waiting".into());
        assert!(!ready(&r, 10));
    }
}
