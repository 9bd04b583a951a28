//! The role decisions, as pure functions of what the cluster's authority
//! says and what this instance has. Everything that writes follows from
//! here, so every case is spelled out and tested.

/// What the data directory holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    Missing,
    /// No `standby.signal`: it was a primary when it stopped.
    Primary,
    Standby,
}

/// How to bring PostgreSQL up when it is not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPlan {
    Initdb,
    Clone,
    StartPrimary,
    StartReplica,
    /// A former primary that must follow another: rewind (or re-clone) first.
    Rejoin,
    Wait(String),
}

pub fn start_plan(me: &str, target: Option<&str>, data: DataKind) -> StartPlan {
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

/// What a running instance must change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleChange {
    None,
    Promote,
    Demote,
}

pub fn role_change(me: &str, target: Option<&str>, in_recovery: bool) -> RoleChange {
    match target {
        Some(t) if t == me && in_recovery => RoleChange::Promote,
        Some(t) if t != me && !in_recovery => RoleChange::Demote,
        // Nobody named: keep what runs (a primary stays; fencing comes with the lease).
        _ => RoleChange::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn running_instances_follow_the_target() {
        assert_eq!(role_change("db-2", Some("db-2"), true), RoleChange::Promote);
        assert_eq!(role_change("db-2", Some("db-2"), false), RoleChange::None);
        assert_eq!(role_change("db-1", Some("db-2"), false), RoleChange::Demote);
        assert_eq!(role_change("db-1", Some("db-2"), true), RoleChange::None);
        assert_eq!(role_change("db-1", None, false), RoleChange::None);
        assert_eq!(role_change("db-1", None, true), RoleChange::None);
    }
}
