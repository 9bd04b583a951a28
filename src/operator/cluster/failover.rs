//! Whether the primary is lost and which replica replaces it: a pure
//! decision over the primary Lease as the operator saw it, the instance
//! managers' reports, and what status last recorded.
//!
//! Safety comes from the Lease (see `operator::leases` and
//! `instance::fencing`): nothing is promoted until the primary's Lease went
//! unrenewed for its whole duration, by which time a primary that cannot
//! renew has stopped PostgreSQL. Durability comes from the choice: the
//! replica with the most WAL received, limited to the ones that confirmed
//! every commit when synchronous replication is on.

use std::collections::BTreeMap;

use crate::api::{FailoverSpec, InstanceStatus, SynchronousMode, SynchronousSpec};
use crate::contract::instance::{InstanceReport, Role};
use crate::postgres::lsn::Lsn;

use super::super::leases::LeaseView;

/// Everything the decision looks at.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub target_primary: &'a str,
    /// Every instance of the cluster, by name.
    pub instances: &'a [String],
    /// The primary Lease; None until the operator has seen it.
    pub lease: Option<&'a LeaseView>,
    /// Reports of the instance managers that answered.
    pub reports: &'a BTreeMap<String, InstanceReport>,
    /// `status.instances` as last written (last known LSNs, sync states).
    pub recorded: &'a [InstanceStatus],
    pub failover: &'a FailoverSpec,
    pub synchronous: &'a SynchronousSpec,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do.
    Healthy,
    /// Promote `to`.
    Promote(Promotion),
    /// The primary is lost but no replica may be promoted; says why and
    /// what the user can do.
    Blocked { from: String, message: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion {
    pub from: String,
    pub to: String,
    pub candidate_lsn: Option<String>,
    pub last_known_lsn: Option<String>,
    pub message: String,
}

fn lsn_of(report: &InstanceReport) -> Option<Lsn> {
    report.wal_held()
}

/// The primary answers that it holds the Lease: the operator's view of the
/// Lease is behind (a watch that lagged or restarted), not the primary.
fn primary_vouches(input: &Input<'_>) -> bool {
    input.reports.get(input.target_primary).is_some_and(|r| {
        r.role == Role::Primary && r.lease.as_ref().is_some_and(|l| l.held && !l.fenced)
    })
}

pub fn decide(input: &Input<'_>) -> Decision {
    let Some(lease) = input.lease else {
        return Decision::Healthy;
    };
    if lease.holder.is_none() || !lease.expired() || primary_vouches(input) {
        return Decision::Healthy;
    }
    let from = input.target_primary.to_string();
    let silent = format!(
        "the primary {from} has not renewed its Lease for {:.1}s (limit {}s)",
        lease.silent_for.as_secs_f64(),
        lease.duration.as_secs()
    );
    let others: Vec<&String> = input
        .instances
        .iter()
        .filter(|n| n.as_str() != from)
        .collect();
    if others.is_empty() {
        return Decision::Blocked {
            from,
            message: format!(
                "{silent}; there is no replica to promote (spec.instances is 1); the instance manager restarts it in place when it comes back"
            ),
        };
    }
    // Replicas that answer, run PostgreSQL and follow someone.
    let mut candidates: Vec<(&String, Option<Lsn>)> = others
        .iter()
        .filter_map(|name| {
            let r = input.reports.get(name.as_str())?;
            (r.running && r.role == Role::Replica).then(|| (*name, lsn_of(r)))
        })
        .collect();
    let answering = candidates.len();
    let allow = input.failover.allow_data_loss;
    let sync = input.synchronous;
    if sync.mode != SynchronousMode::Off && !allow {
        let m = others.len();
        let n = usize::try_from(sync.number).unwrap_or(1).clamp(1, m);
        match sync.mode {
            SynchronousMode::Quorum => {
                // Every commit reached n of the m standbys: any m - n + 1 of
                // them include one that has it.
                let needed = m - n + 1;
                if answering < needed {
                    return Decision::Blocked {
                        from,
                        message: format!(
                            "{silent}; with synchronous quorum {n} of {m} replicas, {needed} must answer to be sure one has every acknowledged commit, but {answering} do; bring replicas back or set spec.failover.allowDataLoss: true"
                        ),
                    };
                }
            }
            SynchronousMode::Priority => {
                let was_sync = |name: &str| {
                    input
                        .recorded
                        .iter()
                        .any(|i| i.name == name && i.sync_state.as_deref() == Some("sync"))
                };
                candidates.retain(|(name, _)| was_sync(name));
                if candidates.is_empty() {
                    return Decision::Blocked {
                        from,
                        message: format!(
                            "{silent}; no replica that was a synchronous standby answers, and only those have every acknowledged commit; bring one back or set spec.failover.allowDataLoss: true"
                        ),
                    };
                }
            }
            SynchronousMode::Off => {}
        }
    }
    // Most WAL first; then instance order, so the choice is stable.
    candidates.sort_by_key(|c| std::cmp::Reverse(c.1));
    let Some((to, lsn)) = candidates.first().copied() else {
        return Decision::Blocked {
            from,
            message: format!(
                "{silent}; no replica answers with a running PostgreSQL; waiting for one"
            ),
        };
    };
    let last_known = input
        .recorded
        .iter()
        .find(|i| i.name == from)
        .and_then(|i| i.lsn.as_deref())
        .and_then(|s| s.parse::<Lsn>().ok());
    // Synchronous replication already guarantees the commits; the lag guard
    // protects asynchronous clusters.
    if sync.mode == SynchronousMode::Off
        && !allow
        && let (Some(known), Some(have)) = (last_known, lsn)
    {
        let behind = known.bytes_after(have);
        let max = u64::try_from(input.failover.max_lag_bytes).unwrap_or(0);
        if behind > max {
            return Decision::Blocked {
                from,
                message: format!(
                    "{silent}; the best replica {to} is {behind} bytes behind the primary's last known position {known}, more than spec.failover.maxLagBytes {max}; promoting it would lose those transactions — bring {} back, raise maxLagBytes, or set spec.failover.allowDataLoss: true",
                    input.target_primary
                ),
            };
        }
    }
    Decision::Promote(Promotion {
        message: format!(
            "{silent}; promoting {to}, the replica with the most WAL received ({})",
            lsn.map_or_else(|| "unknown".to_string(), |l| l.to_string())
        ),
        from,
        to: to.clone(),
        candidate_lsn: lsn.map(|l| l.to_string()),
        last_known_lsn: last_known.map(|l| l.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::contract::instance::LeaseReport;

    fn view(holder: Option<&str>, silent_ms: u64) -> LeaseView {
        LeaseView {
            holder: holder.map(str::to_string),
            silent_for: Duration::from_millis(silent_ms),
            duration: Duration::from_secs(4),
            ..LeaseView::default()
        }
    }

    fn replica(name: &str, lsn: &str) -> InstanceReport {
        InstanceReport {
            name: name.into(),
            role: Role::Replica,
            running: true,
            receive_lsn: Some(lsn.into()),
            ..InstanceReport::default()
        }
    }

    fn instances() -> Vec<String> {
        vec!["db-1".into(), "db-2".into(), "db-3".into()]
    }

    fn recorded(primary_lsn: &str, sync: &[(&str, &str)]) -> Vec<InstanceStatus> {
        let mut out = vec![InstanceStatus {
            name: "db-1".into(),
            role: "primary".into(),
            lsn: Some(primary_lsn.into()),
            ..InstanceStatus::default()
        }];
        for (name, state) in sync {
            out.push(InstanceStatus {
                name: (*name).into(),
                role: "replica".into(),
                sync_state: Some((*state).into()),
                ..InstanceStatus::default()
            });
        }
        out
    }

    struct Case {
        lease: Option<LeaseView>,
        reports: BTreeMap<String, InstanceReport>,
        recorded: Vec<InstanceStatus>,
        failover: FailoverSpec,
        sync: SynchronousSpec,
        instances: Vec<String>,
    }

    impl Case {
        fn new() -> Self {
            Case {
                lease: Some(view(Some("db-1"), 4500)),
                reports: [
                    ("db-2".to_string(), replica("db-2", "0/3000000")),
                    ("db-3".to_string(), replica("db-3", "0/3000100")),
                ]
                .into(),
                recorded: recorded("0/3000100", &[]),
                failover: FailoverSpec {
                    detection_seconds: 4,
                    max_lag_bytes: 1024,
                    allow_data_loss: false,
                },
                sync: SynchronousSpec::default(),
                instances: instances(),
            }
        }

        fn decide(&self) -> Decision {
            decide(&Input {
                target_primary: "db-1",
                instances: &self.instances,
                lease: self.lease.as_ref(),
                reports: &self.reports,
                recorded: &self.recorded,
                failover: &self.failover,
                synchronous: &self.sync,
            })
        }
    }

    fn promoted(d: Decision) -> String {
        match d {
            Decision::Promote(p) => p.to,
            other => panic!("expected a promotion, got {other:?}"),
        }
    }

    fn blocked(d: Decision) -> String {
        match d {
            Decision::Blocked { message, .. } => message,
            other => panic!("expected Blocked, got {other:?}"),
        }
    }

    #[test]
    fn nothing_happens_while_the_lease_is_renewed_or_unseen() {
        let mut c = Case::new();
        c.lease = Some(view(Some("db-1"), 3999));
        assert_eq!(c.decide(), Decision::Healthy);
        c.lease = None;
        assert_eq!(c.decide(), Decision::Healthy, "after an operator restart");
        c.lease = Some(view(None, 60_000));
        assert_eq!(c.decide(), Decision::Healthy, "released by a clean stop");
    }

    #[test]
    fn a_primary_that_says_it_holds_the_lease_is_believed() {
        let mut c = Case::new();
        c.reports.insert(
            "db-1".into(),
            InstanceReport {
                name: "db-1".into(),
                role: Role::Primary,
                running: true,
                lease: Some(LeaseReport {
                    holder: Some("db-1".into()),
                    held: true,
                    renewed_ms_ago: Some(500),
                    fenced: false,
                }),
                ..InstanceReport::default()
            },
        );
        assert_eq!(c.decide(), Decision::Healthy);
        // A fenced primary does not vouch.
        c.reports
            .get_mut("db-1")
            .unwrap()
            .lease
            .as_mut()
            .unwrap()
            .fenced = true;
        assert_eq!(promoted(c.decide()), "db-3");
    }

    #[test]
    fn the_replica_with_the_most_wal_is_promoted() {
        let c = Case::new();
        match c.decide() {
            Decision::Promote(p) => {
                assert_eq!(p.to, "db-3");
                assert_eq!(p.from, "db-1");
                assert_eq!(p.candidate_lsn.as_deref(), Some("0/3000100"));
                assert_eq!(p.last_known_lsn.as_deref(), Some("0/3000100"));
                assert!(p.message.contains("4.5s"), "{}", p.message);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_replica_whose_wal_receiver_just_restarted_counts_what_it_replayed() {
        // db-3 replayed past db-2's end, but its receiver restarted: the
        // receive position fell back to the segment start.
        let mut c = Case::new();
        let r = c.reports.get_mut("db-3").unwrap();
        r.receive_lsn = Some("0/3000000".into());
        r.replay_lsn = Some("0/3000200".into());
        c.reports.get_mut("db-2").unwrap().receive_lsn = Some("0/3000100".into());
        c.recorded = recorded("0/3000200", &[]);
        assert_eq!(promoted(c.decide()), "db-3");
    }

    #[test]
    fn replicas_that_do_not_answer_or_run_are_not_candidates() {
        let mut c = Case::new();
        c.reports.get_mut("db-3").unwrap().running = false;
        c.failover.max_lag_bytes = 1 << 20;
        assert_eq!(promoted(c.decide()), "db-2");
        c.reports.clear();
        assert!(blocked(c.decide()).contains("no replica answers"));
    }

    #[test]
    fn the_lag_guard_blocks_unless_data_loss_is_allowed() {
        let mut c = Case::new();
        c.reports.remove("db-3");
        // db-2 is 256 bytes behind: fine with 1024, blocked with 100.
        assert_eq!(promoted(c.decide()), "db-2");
        c.failover.max_lag_bytes = 100;
        let m = blocked(c.decide());
        assert!(
            m.contains("256 bytes behind") && m.contains("allowDataLoss"),
            "{m}"
        );
        c.failover.allow_data_loss = true;
        assert_eq!(promoted(c.decide()), "db-2");
    }

    #[test]
    fn quorum_needs_enough_answers_to_include_every_commit() {
        let mut c = Case::new();
        c.sync = SynchronousSpec {
            mode: SynchronousMode::Quorum,
            number: 1,
        };
        // ANY 1 of 2: both must answer.
        c.reports.remove("db-3");
        assert!(blocked(c.decide()).contains("2 must answer"));
        c.sync.number = 2;
        // ANY 2 of 2: every standby has every commit; one is enough, and
        // the lag guard does not apply (the primary's LSN includes
        // unacknowledged WAL).
        c.failover.max_lag_bytes = 0;
        assert_eq!(promoted(c.decide()), "db-2");
    }

    #[test]
    fn priority_promotes_only_a_former_synchronous_standby() {
        let mut c = Case::new();
        c.sync = SynchronousSpec {
            mode: SynchronousMode::Priority,
            number: 1,
        };
        c.recorded = recorded("0/3000100", &[("db-2", "sync"), ("db-3", "potential")]);
        assert_eq!(promoted(c.decide()), "db-2", "even with less WAL");
        c.reports.remove("db-2");
        assert!(blocked(c.decide()).contains("synchronous standby"));
        c.failover.allow_data_loss = true;
        assert_eq!(promoted(c.decide()), "db-3");
    }

    #[test]
    fn a_single_instance_is_never_failed_over() {
        let mut c = Case::new();
        c.instances = vec!["db-1".into()];
        assert!(blocked(c.decide()).contains("no replica to promote"));
    }
}
