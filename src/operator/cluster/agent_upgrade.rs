//! Capstan upgrades restart no database: when the operator runs a new
//! binary, each agent (instance managers, then pooler supervisors) is sent
//! that binary and re-executes itself in place, keeping PostgreSQL and
//! PgBouncer running (see [`crate::agents::binary`]). The operator image is
//! left out of the pod spec hash, so a new operator image alone re-creates
//! no pod; pods created later get the new image anyway.
//!
//! Pure: which agent is next, one at a time, replicas first, the primary
//! after them, then the poolers.

use std::collections::BTreeMap;

use crate::contract::agent::AgentBuild;
use crate::contract::instance::InstanceReport;
use crate::contract::pooler::PoolerReport;

/// The agent whose binary is replaced next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// Pod name.
    pub pod: String,
    pub pooler: bool,
    /// The checksum it runs (short form).
    pub from: String,
}

/// Whether `agent` runs something else than `operator` and can take the
/// operator's binary in place (same CPU architecture, runs from the pod's
/// binary volume). An agent that cannot is updated when its pod is
/// re-created.
fn outdated(agent: Option<&AgentBuild>, operator: &AgentBuild) -> Option<String> {
    let agent = agent?;
    let (Some(theirs), Some(ours)) = (agent.sha256.as_deref(), operator.sha256.as_deref()) else {
        return None;
    };
    (theirs != ours && agent.replaceable && agent.arch == operator.arch)
        .then(|| crate::contract::agent::short_sha(theirs))
}

pub fn next(
    operator: Option<&AgentBuild>,
    primary: &str,
    instances: &BTreeMap<String, InstanceReport>,
    poolers: &BTreeMap<String, PoolerReport>,
) -> Option<Step> {
    let operator = operator?;
    let instance = |name: &String, r: &InstanceReport| {
        outdated(r.agent.as_ref(), operator).map(|from| Step {
            pod: name.clone(),
            pooler: false,
            from,
        })
    };
    let replicas = instances
        .iter()
        .filter(|(name, _)| name.as_str() != primary)
        .find_map(|(name, r)| instance(name, r));
    replicas
        .or_else(|| {
            instances
                .get_key_value(primary)
                .and_then(|(name, r)| instance(name, r))
        })
        .or_else(|| {
            poolers.iter().find_map(|(name, r)| {
                outdated(r.agent.as_ref(), operator).map(|from| Step {
                    pod: name.clone(),
                    pooler: true,
                    from,
                })
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(sha: &str) -> AgentBuild {
        AgentBuild {
            version: "0.1.0".into(),
            sha256: Some(sha.into()),
            arch: "x86_64".into(),
            replaceable: true,
        }
    }

    fn instance(sha: &str) -> InstanceReport {
        InstanceReport {
            agent: Some(build(sha)),
            ..InstanceReport::default()
        }
    }

    fn pooler(sha: &str) -> PoolerReport {
        PoolerReport {
            name: "p".into(),
            running: true,
            paused: false,
            backend_host: "db-rw".into(),
            backend_port: None,
            restarts: 0,
            reloads: 0,
            clients_active: 0,
            clients_waiting: 0,
            servers_active: 0,
            servers_idle: 0,
            last_error: None,
            agent: Some(build(sha)),
            tls: Default::default(),
        }
    }

    #[test]
    fn replicas_first_then_the_primary_then_the_poolers() {
        let op = build("new");
        let mut instances = BTreeMap::from([
            ("db-1".to_string(), instance("old")),
            ("db-2".to_string(), instance("old")),
            ("db-3".to_string(), instance("new")),
        ]);
        let mut poolers = BTreeMap::from([("db-pooler-a".to_string(), pooler("old"))]);
        let step = |i: &BTreeMap<_, _>, p: &BTreeMap<_, _>| next(Some(&op), "db-1", i, p);
        assert_eq!(step(&instances, &poolers).unwrap().pod, "db-2");
        instances.insert("db-2".into(), instance("new"));
        assert_eq!(step(&instances, &poolers).unwrap().pod, "db-1");
        instances.insert("db-1".into(), instance("new"));
        let last = step(&instances, &poolers).unwrap();
        assert_eq!((last.pod.as_str(), last.pooler), ("db-pooler-a", true));
        poolers.insert("db-pooler-a".into(), pooler("new"));
        assert_eq!(step(&instances, &poolers), None);
    }

    #[test]
    fn only_agents_that_can_take_the_binary_in_place() {
        let op = build("new");
        let mut other_arch = instance("old");
        other_arch.agent.as_mut().unwrap().arch = "aarch64".into();
        let mut fixed = instance("old");
        fixed.agent.as_mut().unwrap().replaceable = false;
        let mut hashing = instance("old");
        hashing.agent.as_mut().unwrap().sha256 = None;
        let mut silent = instance("old");
        silent.agent = None;
        for r in [other_arch, fixed, hashing, silent] {
            let instances = BTreeMap::from([("db-2".to_string(), r)]);
            assert_eq!(next(Some(&op), "db-1", &instances, &BTreeMap::new()), None);
        }
        // The operator has not hashed itself yet: nothing to compare.
        let instances = BTreeMap::from([("db-2".to_string(), instance("old"))]);
        assert_eq!(next(None, "db-1", &instances, &BTreeMap::new()), None);
        let mut unhashed = build("x");
        unhashed.sha256 = None;
        assert_eq!(
            next(Some(&unhashed), "db-1", &instances, &BTreeMap::new()),
            None
        );
    }
}
