//! The supervision loop: one task owns PostgreSQL and the data directory.
//! Every second (and on each API command) it reads the settings and the
//! cluster's authority, brings PostgreSQL up in the role the authority
//! names, applies configuration changes, keeps replication slots and
//! passwords in step, notices crashes and stuck replicas, and publishes the
//! report the API serves.
//!
//! This file is the thin actor: the loop, what each tick does
//! ([`tick_step`], pure) and the command dispatch. The work is in one
//! module per lifecycle, each with its pure decisions next to the steps that
//! act on them: [`start`] (bootstrap and start), [`restore`] (bootstrap
//! from a backup), [`running`] (upkeep of a running instance), [`role`]
//! (promotion, demotion, rejoining), [`fence`] (the manager's side of the
//! primary lease), [`report`] (what `/status` shows), [`errors`] (the
//! standing errors behind `lastError`).

mod archive;
mod backrest_server;
mod errors;
mod fence;
mod reexec;
pub use reexec::Handover;
mod report;
mod restore;
mod role;
mod running;
mod start;
mod upgrade;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::contract::settings::InstanceSettings;

use super::authority::Authority;
use super::binaries::Binaries;
use super::bootstrap::DataOps;
use super::config;
use super::fencing::LeaseHandle;
use super::inputs::Inputs;
use super::local::{Local, Snapshot};
use super::settings;
use super::state::{Command, Shared};
use super::supervisor::{self, PostgresChild};
use errors::{Errors, Source};

const TICK: Duration = Duration::from_secs(1);

pub struct Manager<A: Authority> {
    shared: Arc<Shared>,
    inputs: Inputs,
    local: Local,
    authority: A,
    lease: LeaseHandle,
    /// The last good settings, and the text they came from.
    settings: Option<InstanceSettings>,
    settings_text: Option<String>,
    bins: Option<Binaries>,
    postgres: Option<PostgresChild>,
    snapshot: Option<Snapshot>,
    /// The authority's last answer (None: not asked successfully yet).
    target: Option<Option<String>>,
    errors: Errors,
    restarts: start::Restarts,
    upkeep: running::Upkeep,
    role: role::RoleState,
    backup: archive::BackupUpkeep,
    backrest_server: backrest_server::ServerUpkeep,
    restore: restore::RestoreState,
    upgrade: upgrade::UpgradeState,
    /// Passwords of `spec.roles`.
    passwords: crate::instance::managed::PasswordSource,
}

/// What a tick does once settings are loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TickStep<'a> {
    /// Nothing to do: no binaries, no answer from the authority yet, or a
    /// start that waits out its backoff.
    Idle,
    /// PostgreSQL is not running: bring it up for this target primary.
    Start(Option<&'a str>),
    /// PostgreSQL runs: keep it in the role the target names (an authority
    /// that does not answer names nobody, so nothing changes role).
    Maintain(Option<&'a str>),
}

fn tick_step<'a>(
    binaries: bool,
    running: bool,
    target: Result<Option<&'a str>, ()>,
    start_due: bool,
) -> TickStep<'a> {
    match (binaries, running, target) {
        (false, _, _) => TickStep::Idle,
        (true, false, Ok(target)) if start_due => TickStep::Start(target),
        (true, false, _) => TickStep::Idle,
        (true, true, target) => TickStep::Maintain(target.ok().flatten()),
    }
}

impl<A: Authority> Manager<A> {
    /// `postgres`: the postmaster the previous manager image handed over.
    pub fn new(
        shared: Arc<Shared>,
        authority: A,
        lease: LeaseHandle,
        postgres: Option<PostgresChild>,
    ) -> Self {
        let inputs = shared.inputs.clone();
        let passwords = crate::instance::managed::PasswordSource::Dir(
            inputs.secret_dir(crate::contract::layout::mounts::ROLES),
        );
        Self {
            local: shared.local.clone(),
            shared,
            inputs,
            authority,
            lease,
            settings: None,
            settings_text: None,
            bins: None,
            postgres,
            snapshot: None,
            target: None,
            errors: Errors::default(),
            restarts: start::Restarts::new(Instant::now()),
            upkeep: running::Upkeep::default(),
            role: role::RoleState::default(),
            backup: archive::BackupUpkeep::default(),
            backrest_server: backrest_server::ServerUpkeep::default(),
            restore: restore::RestoreState::default(),
            upgrade: upgrade::UpgradeState::default(),
            passwords,
        }
    }

    /// Where `spec.roles` passwords are read (default: the `roles/`
    /// directory beside the mounted Secrets).
    pub fn with_passwords(mut self, source: crate::instance::managed::PasswordSource) -> Self {
        self.passwords = source;
        self
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
        self.errors.set(source, message);
    }

    fn clear_error(&mut self, source: Source) {
        self.errors.clear(source);
    }

    async fn tick(&mut self) {
        self.shared.beat();
        self.notice_exit();
        self.load_settings();
        if let Some(settings) = self.settings.clone() {
            self.ensure_binaries(&settings).await;
            self.keep_backup_config(&settings).await;
            let target = self.read_authority().await;
            let step = tick_step(
                self.bins.is_some(),
                self.postgres.is_some(),
                target.as_ref().map(Option::as_deref).map_err(|_| ()),
                self.restarts.due(Instant::now()),
            );
            match step {
                TickStep::Idle => {}
                TickStep::Start(target) => self.start(&settings, target).await,
                TickStep::Maintain(target) => {
                    self.refresh_snapshot().await;
                    self.maintain(&settings, target).await;
                    self.keep_archive(&settings).await;
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
            self.restarts.retry_now(Instant::now());
            return;
        }
        self.shared.metrics.postgres_restarts.inc();
        let wait = self.restarts.crashed(Instant::now());
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
                self.restarts.retry_now(Instant::now());
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
                // The upgrading primary's image is not the major asked for:
                // the operator brings the old one back.
                if let Some(up) = &settings.major_upgrade {
                    self.upgrade.refuse(
                        up.from_version,
                        u32::try_from(settings.postgres_version).unwrap_or_default(),
                        e.to_string(),
                    );
                }
            }
        }
    }

    async fn read_authority(&mut self) -> Result<Option<String>, ()> {
        match self.authority.target_primary().await {
            Ok(t) => {
                if self.target.as_ref() != Some(&t) {
                    tracing::info!(target_primary = ?t, "the cluster's target primary");
                    // A new answer is worth a start attempt now, not after the backoff.
                    self.restarts.retry_now(Instant::now());
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

    /// Marks a long operation (clone, rewind) so `/healthz` does not take
    /// the quiet loop for a wedged one.
    fn busy(&self, operation: Option<&'static str>) {
        self.shared.set_busy(operation);
        self.shared.beat();
    }

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
            Command::Reexec(sha256, reply) => self.reexec_command(reply, sha256).await,
        }
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
        let mut plan = supervisor::shutdown_plan(remaining);
        if self.shared.stops_fast() {
            plan.retain(|(mode, _)| *mode != supervisor::Mode::Smart);
        }
        let status = child.stop(&plan).await;
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

    #[test]
    fn nothing_starts_before_the_binaries_and_the_authority() {
        assert_eq!(
            tick_step(false, false, Ok(Some("db-1")), true),
            TickStep::Idle
        );
        assert_eq!(tick_step(true, false, Err(()), true), TickStep::Idle);
        assert_eq!(
            tick_step(true, false, Ok(Some("db-1")), true),
            TickStep::Start(Some("db-1"))
        );
        // The authority may name nobody yet: the start plan decides.
        assert_eq!(
            tick_step(true, false, Ok(None), true),
            TickStep::Start(None)
        );
    }

    #[test]
    fn a_start_waits_out_its_backoff() {
        assert_eq!(
            tick_step(true, false, Ok(Some("db-1")), false),
            TickStep::Idle
        );
    }

    #[test]
    fn a_running_instance_is_maintained_even_without_an_answer() {
        assert_eq!(
            tick_step(true, true, Ok(Some("db-2")), false),
            TickStep::Maintain(Some("db-2"))
        );
        assert_eq!(
            tick_step(true, true, Err(()), true),
            TickStep::Maintain(None)
        );
        assert_eq!(
            tick_step(false, true, Ok(Some("db-2")), true),
            TickStep::Idle
        );
    }
}
