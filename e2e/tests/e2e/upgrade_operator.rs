//! Upgrading Capstan itself: only the operator's image changes, under
//! writes through `<name>-pooler`. The agents (the instance managers and
//! the pooler supervisors) end up running the new binary, as
//! `status.instances[].agentBuild` and `status.proxy.agentBuilds` report,
//! while no pod is re-created, no PostgreSQL and no PgBouncer process
//! restarts (same PIDs on the harness, same `pg_postmaster_start_time()`
//! everywhere), and the writer sees no failed write. Afterwards the cluster
//! is Ready, the replicas stream, the rows are there and a new write
//! commits.
//!
//! On the harness the new image is `capstan-e2e/capstan:next` (the built
//! binary with bytes appended: another SHA-256), installed by `helm upgrade
//! --reuse-values`; every agent must report the first 12 hex digits of its
//! SHA-256, and the executable of every agent process (`/proc/<pid>/exe`)
//! must be that file. On a real cluster the Deployment `capstan-operator` is pointed
//! at `$CAPSTAN_E2E_NEXT_IMAGE` (skipped when unset); every agent must then
//! report one build, other than the one reported before.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use capstan::resources::labels;
use capstan_e2e::E2eError;
use capstan_e2e::ha::{self, As, HaCluster, ha_example};
use capstan_e2e::harness::{file_sha256, wait_for};
use capstan_e2e::load::{Writer, WriterOptions};
use capstan_e2e::sql;
use capstan_e2e::target::{NEXT_IMAGE_ENV, Target, fail};

/// Writes before the image changes.
const CHANGE_AFTER: Duration = Duration::from_secs(5);
/// From the image change until every agent reports the new build.
const BUILDS_WITHIN: Duration = Duration::from_secs(180);
/// Writes after every agent reported it, before the writer stops.
const WRITE_ON: Duration = Duration::from_secs(5);
/// The cluster Ready and the replicas streaming, once the agents are new.
const SETTLED_WITHIN: Duration = Duration::from_secs(60);
const ROWS: i64 = 1000;
const TABLE: &str = "operator_upgrade_rows";

/// The executable's file name in a command line (`/usr/lib/postgresql/17/bin/postgres -D …` → `postgres`).
fn program(cmdline: &str) -> &str {
    let first = cmdline.split_whitespace().next().unwrap_or_default();
    first.rsplit('/').next().unwrap_or(first)
}

/// On the harness: the PID of the pod's server process (the postmaster, or
/// PgBouncer) and of its agent (`capstan instance` / `capstan pooler`).
fn processes(target: &Target, ns: &str, pod: &str) -> Result<Option<(i32, i32)>, E2eError> {
    let Some(harness) = target.local() else {
        return Ok(None);
    };
    let procs = harness
        .runtime()
        .processes(ns, pod)
        .map_err(|e| E2eError::Check(format!("processes of {ns}/{pod}: {e}")))?;
    let one = |what: &str, matches: &dyn Fn(&str) -> bool| {
        let pids: Vec<i32> = procs
            .iter()
            .filter(|(_, _, cmd)| matches(cmd))
            .map(|(pid, _, _)| *pid)
            .collect();
        match pids.as_slice() {
            [pid] => Ok(*pid),
            _ => Err(E2eError::Check(format!(
                "{ns}/{pod}: expected one {what} process, found {pids:?} among {procs:?}"
            ))),
        }
    };
    let server = one("server", &|cmd| {
        let args: Vec<&str> = cmd.split_whitespace().collect();
        match program(cmd) {
            // Its children are `postgres: <cluster>: <what>`.
            "postgres" => args.contains(&"-D"),
            "pgbouncer" => true,
            _ => false,
        }
    })?;
    // Not `capstan` children such as an archive_command.
    let agent = one("agent", &|cmd| {
        let arg = cmd.split_whitespace().nth(1);
        program(cmd) == "capstan" && matches!(arg, Some("instance" | "pooler"))
    })?;
    Ok(Some((server, agent)))
}

/// What an operator upgrade must leave alone, and the agents' PIDs
/// (printed: whether they were replaced in place is theirs to decide).
#[derive(Debug)]
struct Snapshot {
    /// Pod → uid, instances and poolers.
    uids: BTreeMap<String, String>,
    /// Pod → postmaster or PgBouncer PID (harness).
    servers: BTreeMap<String, i32>,
    /// Pod → agent PID (harness).
    agents: BTreeMap<String, i32>,
    /// Instance → `pg_postmaster_start_time()`, asked on its pod.
    started: BTreeMap<String, String>,
    /// The primary's, asked through the pooler.
    started_via_pooler: String,
}

const START_TIME: &str = "SELECT pg_postmaster_start_time()::text";

async fn snapshot(
    target: &Target,
    ha: &HaCluster,
    instances: &[String],
) -> Result<Snapshot, E2eError> {
    let mut pods = ha.instance_pods(target).await?;
    pods.extend(ha.pooler_pods(target).await?);
    let mut snap = Snapshot {
        uids: BTreeMap::new(),
        servers: BTreeMap::new(),
        agents: BTreeMap::new(),
        started: BTreeMap::new(),
        started_via_pooler: String::new(),
    };
    for pod in pods {
        let (Some(name), Some(uid)) = (pod.metadata.name, pod.metadata.uid) else {
            continue;
        };
        if let Some((server, agent)) = processes(target, &ha.ns, &name)? {
            snap.servers.insert(name.clone(), server);
            snap.agents.insert(name.clone(), agent);
        }
        snap.uids.insert(name, uid);
    }
    for name in instances {
        let admin = ha
            .connect(&ha.pod(target, name).await?, As::Superuser)
            .await?;
        snap.started
            .insert(name.clone(), sql::value(&admin, START_TIME).await?);
    }
    let app = ha.connect(&ha.pooler(target).await?, As::App).await?;
    snap.started_via_pooler = sql::value(&app, START_TIME).await?;
    Ok(snap)
}

/// What the agents report (`instances[].agentBuild`, `proxy.agentBuilds`).
#[derive(Debug, Default)]
struct Builds {
    /// Instance → its agent's build, if reported.
    instances: BTreeMap<String, Option<String>>,
    /// One per pooler pod that reported.
    poolers: Vec<String>,
}

async fn agent_builds(target: &Target, ha: &HaCluster) -> Result<Builds, E2eError> {
    let cluster = ha.get(target).await?;
    let status = cluster.status.unwrap_or_default();
    Ok(Builds {
        instances: status
            .instances
            .iter()
            .map(|i| (i.name.clone(), i.agent_build.clone()))
            .collect(),
        poolers: status.proxy.map(|p| p.agent_builds).unwrap_or_default(),
    })
}

/// The build every agent reports, when they all report the same one:
/// `expected` (harness), or else any but `before` (real cluster).
fn upgraded_build(
    builds: &Builds,
    instances: usize,
    poolers: usize,
    expected: Option<&str>,
    before: Option<&str>,
) -> Option<String> {
    let first = builds.instances.values().next()?.clone()?;
    let every = builds
        .instances
        .values()
        .map(Option::as_deref)
        .chain(builds.poolers.iter().map(|b| Some(b.as_str())))
        .all(|b| b == Some(first.as_str()));
    let right = match expected {
        Some(expected) => first == expected,
        None => before != Some(first.as_str()),
    };
    (every && right && builds.instances.len() == instances && builds.poolers.len() == poolers)
        .then_some(first)
}

/// The single build reported before the upgrade, if the agents agree on one.
fn common_build(builds: &Builds) -> Option<String> {
    let all: Vec<Option<&str>> = builds
        .instances
        .values()
        .map(Option::as_deref)
        .chain(builds.poolers.iter().map(|b| Some(b.as_str())))
        .collect();
    let first = (*all.first()?)?;
    all.iter()
        .all(|b| *b == Some(first))
        .then(|| first.to_string())
}

/// Pods of `before` whose entry differs in `after` (or is gone there).
fn changed<V: PartialEq + std::fmt::Debug>(
    before: &BTreeMap<String, V>,
    after: &BTreeMap<String, V>,
) -> Vec<String> {
    before
        .iter()
        .filter(|(pod, v)| after.get(*pod) != Some(v))
        .map(|(pod, v)| format!("{pod}: {v:?} -> {:?}", after.get(pod)))
        .collect()
}

async fn scenario(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let Some(image) = target.next_operator_image() else {
        eprintln!(
            "skipped: set {NEXT_IMAGE_ENV} to the Capstan image to upgrade the operator to (another build than the one installed)"
        );
        return Ok(());
    };
    let spec = ha_example("ha-cluster.yaml", ns)?;
    let ha = HaCluster::create(target, &spec).await?;
    let c = ha.get(target).await?;
    let primary = ha::current_primary(&c)
        .cloned()
        .ok_or_else(|| E2eError::Check("no current primary".into()))?;
    let instances = ha::instance_names(&c);
    assert_eq!(instances.len(), 3, "{}", ha::status_summary(&c));
    let replicas: Vec<&str> = instances
        .iter()
        .map(String::as_str)
        .filter(|i| *i != primary)
        .collect();

    let app = ha.connect(&ha.pooler(target).await?, As::App).await?;
    app.batch_execute(&format!(
        "CREATE TABLE {TABLE} (id bigint PRIMARY KEY, note text NOT NULL);
         INSERT INTO {TABLE} SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g;"
    ))
    .await
    .map_err(|e| E2eError::Sql(format!("create {TABLE}: {e}")))?;
    drop(app);

    let before = snapshot(target, &ha, &instances).await?;
    let poolers = before.uids.len() - instances.len();
    assert_eq!(poolers, 2, "two pooler pods: {:?}", before.uids);
    if target.local().is_some() {
        assert_eq!(before.servers.len(), 5, "{before:?}");
    }
    let builds_before = agent_builds(target, &ha).await?;
    let build_before = common_build(&builds_before);
    eprintln!(
        "[{ns}] before: pods {:?}; postmaster/pgbouncer PIDs {:?}; agent PIDs {:?}; postmasters started {:?}; agent builds {builds_before:?}",
        before.uids, before.servers, before.agents, before.started
    );
    let next_sha256 = match target.local() {
        Some(h) => Some(h.next_binary_sha256()?),
        None => None,
    };
    let expected: Option<String> = next_sha256.as_ref().map(|s| s.chars().take(12).collect());

    // Generous per-statement bound: a failure must be an error, not a slow commit.
    let writer = Writer::start(
        &ha,
        &ha.pooler(target).await?,
        WriterOptions {
            op_timeout: Duration::from_secs(5),
            ..WriterOptions::default()
        },
    );
    tokio::time::sleep(CHANGE_AFTER).await;

    let changed_at = Instant::now();
    target.upgrade_operator().await?;
    let rolled = changed_at.elapsed();
    eprintln!(
        "[{ns}] operator upgraded to {image} (new pod Ready, old one gone) {:.1}s after the image change; expecting agent build {}",
        rolled.as_secs_f64(),
        expected
            .as_deref()
            .map(str::to_string)
            .unwrap_or_else(|| format!("other than {build_before:?}"))
    );
    let waited = wait_for(
        "every agent to report the new build",
        BUILDS_WITHIN.saturating_sub(rolled),
        Duration::from_millis(500),
        || async {
            let builds = agent_builds(target, &ha).await.ok()?;
            upgraded_build(
                &builds,
                instances.len(),
                poolers,
                expected.as_deref(),
                build_before.as_deref(),
            )
        },
    )
    .await;
    let build = match waited {
        Ok(build) => build,
        Err(e) => {
            let now = agent_builds(target, &ha).await;
            return Err(E2eError::Check(format!(
                "{e}; agent builds now: {now:?}, before: {builds_before:?}"
            )));
        }
    };
    let reported = changed_at.elapsed();
    eprintln!(
        "[{ns}] every agent reports build {build} {:.1}s after the image change",
        reported.as_secs_f64()
    );

    tokio::time::sleep(WRITE_ON).await;
    let after = snapshot(target, &ha, &instances).await?;
    let log = writer.stop().await;
    let longest = log
        .acks
        .iter()
        .map(|a| a.acked - a.sent)
        .max()
        .unwrap_or_default();
    let longest_gap = log
        .acks
        .windows(2)
        .map(|w| w[1].acked - w[0].acked)
        .max()
        .unwrap_or_default();
    eprintln!(
        "[{ns}] writes through the pooler: {} acknowledged, {} failed; longest write {:.0} ms, longest gap between commits {:.0} ms",
        log.acks.len(),
        log.failures.len(),
        longest.as_secs_f64() * 1000.0,
        longest_gap.as_secs_f64() * 1000.0
    );
    eprintln!(
        "[{ns}] after: agent PIDs {:?} (before {:?})",
        after.agents, before.agents
    );

    // What the agents run, seen from the host rather than from their reports.
    if let Some(sha256) = &next_sha256 {
        for (pod, pid) in &after.agents {
            let exe = file_sha256(Path::new(&format!("/proc/{pid}/exe")))?;
            assert_eq!(&exe, sha256, "the executable of {pod}'s agent (PID {pid})");
        }
    }

    let recreated = changed(&before.uids, &after.uids);
    assert!(recreated.is_empty(), "pods re-created: {recreated:?}");
    let restarted = changed(&before.servers, &after.servers);
    assert!(
        restarted.is_empty(),
        "postmaster or PgBouncer processes replaced: {restarted:?}"
    );
    let restarted = changed(&before.started, &after.started);
    assert!(
        restarted.is_empty(),
        "pg_postmaster_start_time() changed: {restarted:?}"
    );
    assert_eq!(
        before.started_via_pooler, after.started_via_pooler,
        "the primary's pg_postmaster_start_time() through the pooler"
    );
    assert!(
        log.failures.is_empty(),
        "writes failed across the operator upgrade: {:?}",
        log.failures.iter().take(10).collect::<Vec<_>>()
    );
    assert!(!log.acks.is_empty(), "the writer committed nothing");

    // The cluster as it was: Ready, same primary, replicas streaming.
    let c = ha.wait_ready(target, SETTLED_WITHIN).await?;
    assert_eq!(
        ha::current_primary(&c),
        Some(&primary),
        "{}",
        ha::status_summary(&c)
    );
    for replica in &replicas {
        let status = ha::instance_status(&c, replica);
        assert!(
            status.is_some_and(|i| i.role == labels::ROLE_REPLICA && i.ready),
            "{replica} a ready replica: {}",
            ha::status_summary(&c)
        );
    }
    ha.wait_streaming(target, &replicas, SETTLED_WITHIN).await?;
    ha.wait_replicated(target, replicas.len(), SETTLED_WITHIN)
        .await?;
    let lag: Vec<(String, Option<i64>)> = c
        .status
        .iter()
        .flat_map(|s| &s.instances)
        .map(|i| (i.name.clone(), i.lag_bytes))
        .collect();

    // The rows, every acknowledged write, and a new write.
    let rw = ha.rw(target).await?;
    let app = ha.connect(&ha.pooler(target).await?, As::App).await?;
    let rows = sql::value(&app, &format!("SELECT count(*) FROM {TABLE}")).await?;
    assert_eq!(rows, ROWS.to_string(), "rows of {TABLE}");
    let missing = log.missing(&ha.written(&rw).await?);
    assert!(
        missing.is_empty(),
        "acknowledged writes missing: {missing:?}"
    );
    let next = ROWS + 1;
    let inserted = sql::value(
        &app,
        &format!("INSERT INTO {TABLE} VALUES ({next}, 'after the upgrade') RETURNING id"),
    )
    .await?;
    assert_eq!(inserted, next.to_string());
    eprintln!(
        "[{ns}] after the upgrade: Ready, primary {primary}, replicas {replicas:?} streaming (lag bytes {lag:?}), {ROWS} rows, a new write committed; operator rolled in {:.1}s, agents on {build} after {:.1}s",
        rolled.as_secs_f64(),
        reported.as_secs_f64()
    );
    ha.delete(target).await
}

#[test]
fn an_operator_upgrade_replaces_the_agents_and_restarts_no_server() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-operator-upgrade-{}", std::process::id());
        if let Err(e) = scenario(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}
