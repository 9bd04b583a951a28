//! Upkeep of a running instance, every tick: follow the role the cluster
//! names (the steps are in [`super::role`]), reload changed configuration
//! and certificates, keep the primary's replication slots and the roles'
//! passwords in step with the settings and Secrets, and notice a replica
//! that stopped streaming because it diverged.

use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use crate::contract::layout::mounts;
use crate::contract::roles::ManagedReport;
use crate::contract::settings::InstanceSettings;
use crate::postgres::roles;

use super::super::authority::Authority;
use super::super::config::{self, Desired};
use super::super::inputs;
use super::super::local::Snapshot;
use super::super::managed;
use super::super::remote::{Primary, PrimaryInfo};
use super::super::secrets::{self, Password};
use super::Manager;
use super::errors::Source;
use super::role::{RoleChange, role_change};

const SLOT_SYNC_EVERY: Duration = Duration::from_secs(10);
/// A replica not streaming for this long is checked for divergence. A
/// replica that can follow a new primary streams again within a second or
/// two; one that received WAL the new primary never had (from an old
/// primary that ran on for a moment after a freeze) never will, and while
/// it waits a synchronous primary may have no standby to confirm commits.
const STUCK_AFTER: Duration = Duration::from_secs(6);
/// How often the primary goes over `spec.roles` and `spec.databases`
/// when nothing changed (rotated passwords, changes made by hand).
const MANAGED_EVERY: Duration = Duration::from_secs(10);
/// Bound of the divergence check's question to the primary.
const DIVERGENCE_CHECK_WITHIN: Duration = Duration::from_secs(2);
/// Named primary while still streaming from the old one: a switchover. Wait
/// this long for the old primary to shut down (it sends all its WAL first),
/// so the promotion loses nothing and nothing diverges.
const SWITCHOVER_WAIT: Duration = Duration::from_secs(30);

/// What the upkeep remembers between ticks; a fresh start forgets it.
#[derive(Default)]
pub(super) struct Upkeep {
    /// Digest of the role passwords last made equal to the Secrets.
    passwords_applied: Option<[u8; 32]>,
    /// Modification times of the server certificate files PostgreSQL loaded.
    pub(super) tls_stamp: Option<Vec<Option<SystemTime>>>,
    pub(super) last_slot_sync: Option<Instant>,
    not_streaming_since: Option<Instant>,
    /// Since when every snapshot showed the WAL receiver streaming.
    streaming_since: Option<Instant>,
    last_rejoin_check: Option<Instant>,
    /// `spec.postgres.parameters` PostgreSQL refused: the file content not
    /// written, and its words.
    refused: Option<(String, String)>,
    /// The last pass over `spec.roles`/`spec.databases` (primary only):
    /// when, for which settings, and what came of it.
    managed_at: Option<(Instant, String)>,
    pub(super) managed: Option<ManagedReport>,
}

impl Upkeep {
    pub(super) fn refused_parameters(&self) -> Option<String> {
        self.refused.as_ref().map(|(_, words)| words.clone())
    }

    /// Postgres (re)started: everything is checked again.
    pub(super) fn started(&mut self) {
        self.not_streaming_since = None;
        self.streaming_since = None;
        self.last_slot_sync = None;
        self.passwords_applied = None;
        self.managed_at = None;
    }
}

/// Whether something done at `last` is due again.
fn due(last: Option<Instant>, every: Duration, now: Instant) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= every)
}

/// The slots a primary keeps: one per other instance.
fn wanted_slots(instances: &[String], me: &str) -> Vec<String> {
    instances
        .iter()
        .filter(|i| *i != me)
        .map(|i| inputs::slot_name(i))
        .collect()
}

/// Stands for the role passwords, so unchanged Secrets cost no query.
fn passwords_digest<'a>(wanted: impl IntoIterator<Item = (&'a str, &'a str)>) -> [u8; 32] {
    let mut hash = Sha256::new();
    for (role, password) in wanted {
        hash.update(role.as_bytes());
        hash.update([0]);
        hash.update(password.as_bytes());
        hash.update([0]);
    }
    hash.finalize().into()
}

/// A replica not streaming since `since` is checked against the primary
/// once it has been stuck for [`STUCK_AFTER`], and then at most that often.
/// How long a WAL receiver must stream without a break to count as
/// following: one that cannot follow a new timeline connects, is told the
/// timeline ended before its own position, and retries every second, so it
/// shows `streaming` now and then without ever following.
const STEADY_STREAMING: Duration = Duration::from_secs(3);

/// The replica follows its primary: streaming at every snapshot for
/// [`STEADY_STREAMING`].
fn steadily_streaming(streaming_since: Option<Instant>, now: Instant) -> bool {
    streaming_since.is_some_and(|t| now.saturating_duration_since(t) >= STEADY_STREAMING)
}

fn stuck_check_due(since: Instant, last_check: Option<Instant>, now: Instant) -> bool {
    now.saturating_duration_since(since) >= STUCK_AFTER && due(last_check, STUCK_AFTER, now)
}

/// A replica whose primary moved to a newer timeline cannot follow it
/// without a rewind.
fn diverged(primary: &PrimaryInfo, local_timeline: u32) -> bool {
    !primary.in_recovery && primary.timeline > local_timeline
}

/// Named primary while the old one still streams to it: wait for the old
/// primary to shut down, up to [`SWITCHOVER_WAIT`].
fn await_old_primary(named_for: Duration) -> bool {
    named_for < SWITCHOVER_WAIT
}

impl<A: Authority> Manager<A> {
    pub(super) async fn refresh_snapshot(&mut self) {
        if self.postgres.is_none() {
            self.snapshot = None;
            return;
        }
        match self.local.snapshot().await {
            Ok(s) => {
                if let Some(end) = s.primary_end_lsn {
                    self.role.primary_end = Some(end);
                }
                self.snapshot = Some(s);
            }
            Err(e) => {
                tracing::debug!(error = %e, "no snapshot");
                self.snapshot = None;
            }
        }
    }

    pub(super) async fn maintain(&mut self, settings: &InstanceSettings, target: Option<&str>) {
        self.apply_settings(settings).await;
        let Some(snapshot) = self.snapshot.clone() else {
            return;
        };
        let change = role_change(&self.inputs.pod, target, snapshot.in_recovery);
        if change != RoleChange::Promote {
            self.role.named_while_streaming = None;
        }
        match change {
            RoleChange::Promote => {
                if snapshot.wal_receiver.as_deref() == Some("streaming") {
                    let since = *self.role.named_while_streaming.get_or_insert_with(|| {
                        tracing::info!("named primary while the old one still streams; waiting for it to shut down");
                        Instant::now()
                    });
                    if await_old_primary(since.elapsed()) {
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
            self.upkeep.managed = None;
            self.watch_replication(settings, &snapshot).await;
        } else {
            if !self.keep_lease().await {
                return;
            }
            self.upkeep.not_streaming_since = None;
            self.clear_error(Source::Replication);
            self.sync_slots(settings).await;
            self.sync_passwords(settings).await;
            self.sync_managed(settings).await;
        }
    }

    /// Keeps `spec.roles` and `spec.databases`: at once when they (or the
    /// settings) change, else every [`MANAGED_EVERY`], which also picks up
    /// rotated passwords and repairs changes made by hand.
    async fn sync_managed(&mut self, settings: &InstanceSettings) {
        if settings.roles.is_empty() && settings.databases.is_empty() {
            self.upkeep.managed = None;
            return;
        }
        let now = Instant::now();
        let wanted = settings.digest();
        if let Some((at, seen)) = &self.upkeep.managed_at
            && *seen == wanted
            && now.saturating_duration_since(*at) < MANAGED_EVERY
        {
            return;
        }
        self.upkeep.managed_at = Some((now, wanted));
        let passwords = if settings.roles.iter().any(|r| r.password_from.is_some()) {
            match self.passwords.read().await {
                Ok(p) => p,
                Err(e) => {
                    self.set_error(Source::Roles, format!("role passwords: {e}"));
                    return;
                }
            }
        } else {
            Default::default()
        };
        match managed::apply(
            &self.local,
            &settings.roles,
            &settings.databases,
            &passwords,
        )
        .await
        {
            Ok(report) => {
                self.clear_error(Source::Roles);
                self.upkeep.managed = Some(report);
            }
            Err(e) => self.set_error(Source::Roles, e.to_string()),
        }
    }

    /// New `spec.postgres.parameters` go to the files only if PostgreSQL
    /// accepts them; refused, the files keep the ones it runs with (a
    /// restart then still starts) and the report says why.
    pub(super) async fn gate_parameters(
        &mut self,
        rendered: &mut config::Rendered,
        settings: &InstanceSettings,
    ) {
        let pgdata = self.inputs.data_dir.clone();
        if !rendered.user_changed(&pgdata) {
            self.upkeep.refused = None;
            return;
        }
        let user = rendered.user_conf().to_string();
        let words = match &self.upkeep.refused {
            Some((content, words)) if *content == user => Some(words.clone()),
            _ => {
                let Some(bins) = self.bins.clone() else {
                    return;
                };
                config::check_parameters(&bins.tool("postgres"), &pgdata, &settings.parameters)
                    .await
                    .err()
            }
        };
        let Some(words) = words else {
            self.upkeep.refused = None;
            return;
        };
        if self.upkeep.refused.as_ref().is_none_or(|(c, _)| *c != user) {
            tracing::error!(operation = "config", refused = %words, "PostgreSQL refuses spec.postgres.parameters; keeping the current ones");
        }
        self.set_error(
            Source::Config,
            format!(
                "PostgreSQL refuses spec.postgres.parameters: {words}; it keeps running with the parameters it has"
            ),
        );
        self.upkeep.refused = Some((user, words));
        rendered.keep_user(&pgdata);
    }

    /// New parameters `postgres -C` accepted but PostgreSQL cannot start
    /// with: the file it last started with goes back, and they are refused
    /// like those `postgres -C` refuses, so the next start (right away)
    /// runs as before instead of failing in a loop.
    pub(super) fn undo_parameters(
        &mut self,
        user_conf: &std::path::Path,
        previous: &str,
        refused: &str,
        words: &str,
    ) -> Result<(), String> {
        config::write_atomic(user_conf, previous.as_bytes())
            .map_err(|e| format!("cannot restore {}: {e}", user_conf.display()))?;
        let words = format!("postgres cannot start with them: {words}");
        tracing::error!(operation = "config", refused = %words, "PostgreSQL cannot start with spec.postgres.parameters; starting with the ones it ran with");
        self.set_error(
            Source::Config,
            format!(
                "PostgreSQL refuses spec.postgres.parameters: {words}; it runs with the parameters it had"
            ),
        );
        self.upkeep.refused = Some((refused.to_string(), words));
        Ok(())
    }

    async fn apply_settings(&mut self, settings: &InstanceSettings) {
        let role = match &self.snapshot {
            Some(s) if !s.in_recovery => Desired::Primary,
            Some(_) => Desired::Replica,
            None => return,
        };
        let mut rendered = match config::render(&self.inputs, settings, role) {
            Ok(r) => r,
            Err(e) => {
                self.set_error(Source::Config, e.to_string());
                return;
            }
        };
        self.gate_parameters(&mut rendered, settings).await;
        let changed = match config::write(&self.inputs.data_dir, &rendered) {
            Ok(c) => c,
            Err(e) => {
                self.set_error(Source::Config, e.to_string());
                return;
            }
        };
        let stamp = self.inputs.server_tls().stamp();
        let tls_changed = self.upkeep.tls_stamp.as_ref() != Some(&stamp);
        self.upkeep.tls_stamp = Some(stamp);
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
        self.upkeep.last_slot_sync = None;
    }

    pub(super) async fn sync_slots(&mut self, settings: &InstanceSettings) {
        let now = Instant::now();
        if !due(self.upkeep.last_slot_sync, SLOT_SYNC_EVERY, now) {
            return;
        }
        self.upkeep.last_slot_sync = Some(now);
        let wanted = wanted_slots(&settings.instances, &self.inputs.pod);
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
        let now = Instant::now();
        if !due(self.upkeep.last_slot_sync, SLOT_SYNC_EVERY, now) {
            return;
        }
        self.upkeep.last_slot_sync = Some(now);
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
        let read = || -> Result<Vec<(String, Password)>, secrets::SecretError> {
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
        let digest = passwords_digest(wanted.iter().map(|(r, p)| (r.as_str(), p.expose())));
        if self.upkeep.passwords_applied == Some(digest) {
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
            // An unchanged password keeps its verifier: a new salt would
            // break the SCRAM keys PgBouncer holds for its server logins.
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
        self.upkeep.passwords_applied = Some(digest);
        self.clear_error(Source::Passwords);
    }

    /// A replica that stopped streaming while the primary moved to a newer
    /// timeline has diverged: rewind it.
    async fn watch_replication(&mut self, settings: &InstanceSettings, snapshot: &Snapshot) {
        let now = Instant::now();
        if snapshot.wal_receiver.as_deref() == Some("streaming") {
            let since = *self.upkeep.streaming_since.get_or_insert(now);
            if steadily_streaming(Some(since), now) {
                self.upkeep.not_streaming_since = None;
                self.clear_error(Source::Replication);
            }
            return;
        }
        self.upkeep.streaming_since = None;
        let since = *self.upkeep.not_streaming_since.get_or_insert(now);
        if !stuck_check_due(since, self.upkeep.last_rejoin_check, now) {
            return;
        }
        self.upkeep.last_rejoin_check = Some(now);
        self.set_error(
            Source::Replication,
            format!(
                "not streaming from the primary for {}s",
                since.elapsed().as_secs()
            ),
        );
        // Short: the manager's loop waits on it, and the primary it asks
        // may be the frozen one a failover is replacing; a target that
        // moves meanwhile is only noticed after this returns.
        let asked = Primary::new(&self.inputs, settings)
            .info_within(DIVERGENCE_CHECK_WITHIN)
            .await;
        let primary = match asked {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the primary");
                return;
            }
        };
        let local_timeline = snapshot.timeline.unwrap_or(0);
        if !diverged(&primary, local_timeline) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periodic_work_is_due_when_never_done_or_old_enough() {
        let now = Instant::now();
        let every = Duration::from_secs(10);
        assert!(due(None, every, now));
        assert!(!due(Some(now), every, now + Duration::from_secs(9)));
        assert!(due(Some(now), every, now + every));
    }

    #[test]
    fn a_primary_keeps_a_slot_for_every_other_instance() {
        let instances = vec!["db-1".to_string(), "db-2".into(), "db-10".into()];
        assert_eq!(wanted_slots(&instances, "db-2"), vec!["db_1", "db_10"]);
        assert!(wanted_slots(&["db-1".to_string()], "db-1").is_empty());
    }

    #[test]
    fn the_password_digest_changes_with_any_role_or_password() {
        let base = passwords_digest([("postgres", "a"), ("app", "b")]);
        assert_eq!(base, passwords_digest([("postgres", "a"), ("app", "b")]));
        assert_ne!(base, passwords_digest([("postgres", "a"), ("app", "c")]));
        assert_ne!(base, passwords_digest([("postgres", "a"), ("owner", "b")]));
        // The separators keep "ab" + "c" apart from "a" + "bc".
        assert_ne!(
            passwords_digest([("ab", "c")]),
            passwords_digest([("a", "bc")])
        );
    }

    #[test]
    fn a_stuck_replica_is_checked_after_a_while_and_then_not_too_often() {
        let since = Instant::now();
        let at = |s: u64| since + Duration::from_secs(s);
        assert!(!steadily_streaming(None, at(9)));
        assert!(!steadily_streaming(Some(at(1)), at(3)));
        assert!(steadily_streaming(Some(at(1)), at(4)));
        assert!(!stuck_check_due(since, None, at(5)));
        assert!(stuck_check_due(since, None, at(6)));
        assert!(!stuck_check_due(since, Some(at(6)), at(11)));
        assert!(stuck_check_due(since, Some(at(6)), at(12)));
    }

    #[test]
    fn only_a_primary_on_a_newer_timeline_means_divergence() {
        let primary = |in_recovery, timeline| PrimaryInfo {
            in_recovery,
            system_identifier: 7,
            timeline,
            major: 17,
        };
        assert!(diverged(&primary(false, 3), 2));
        assert!(!diverged(&primary(false, 2), 2));
        assert!(!diverged(&primary(true, 3), 2), "not a primary yet");
    }

    #[test]
    fn a_named_replica_waits_a_while_for_the_old_primary() {
        assert!(await_old_primary(Duration::from_secs(29)));
        assert!(!await_old_primary(SWITCHOVER_WAIT));
    }
}
