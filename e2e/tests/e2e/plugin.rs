//! `kubectl capstan`, run the way users run it: the built `capstan` binary
//! as `kubectl-capstan` on `PATH`, called through kubectl's plugin
//! mechanism with the kubeconfig of the control plane.
//! - bad input (an unknown cluster, a kubeconfig context that does not
//!   exist, an API server nobody answers on): one line naming the problem
//!   and the fix, a non-zero exit code, no panic;
//! - `status` on a two-instance cluster with a pooler and a volume
//!   repository, as text and as JSON/YAML: roles, timelines, the pooler's
//!   client counts read through the API server's pod proxy, certificates,
//!   WAL archiving, conditions;
//! - `psql` runs the real psql through a port-forward the API server opens
//!   (to the process kubelet here): through the pooler as the app user,
//!   to a replica (in recovery) and to the primary as the superuser, TLS
//!   verify-full on the Service names; psql's own failure is its exit
//!   code; an unknown cluster is one line;
//! - `switchover` without `--to` moves the primary to the replica; a
//!   switchover to an instance that does not exist is refused;
//! - `restart <replica>` re-creates that pod alone; `restart` re-creates
//!   every pod, the primary after a switchover, with the rows kept;
//! - `backup` creates a `PostgresBackup` that is taken and verified.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use capstan_e2e::backup;
use capstan_e2e::ha::{self, HaCluster, ha_example};
use capstan_e2e::target::{Target, fail};
use capstan_e2e::{E2eError, harness};

const MAJOR: u32 = 17;

/// `kubectl capstan …` with `kubectl-capstan` on PATH.
struct Plugin {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Plugin {
    fn new(kubeconfig: &Path) -> Result<Plugin, E2eError> {
        let dir = tempfile::tempdir().map_err(|e| E2eError::Setup(format!("temp dir: {e}")))?;
        std::os::unix::fs::symlink(
            harness::capstan_binary()?,
            dir.path().join("kubectl-capstan"),
        )
        .map_err(|e| E2eError::Setup(format!("kubectl-capstan symlink: {e}")))?;
        Ok(Plugin {
            dir,
            kubeconfig: kubeconfig.to_path_buf(),
        })
    }

    fn run(&self, args: &[&str]) -> Result<Output, E2eError> {
        let path = format!(
            "{}:{}",
            self.dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Command::new("kubectl")
            .arg("capstan")
            .args(args)
            .env("PATH", path)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("NO_COLOR")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| E2eError::Setup(format!("kubectl capstan: {e} (is kubectl installed?)")))
    }

    /// Stdout of a call that must succeed.
    fn ok(&self, args: &[&str]) -> Result<String, E2eError> {
        let out = self.run(args)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(E2eError::Check(format!(
                "kubectl capstan {}: {}\n{stdout}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        eprintln!("$ kubectl capstan {}\n{stdout}", args.join(" "));
        Ok(stdout)
    }

    /// A call that must fail with one line holding `expected`.
    fn refused(&self, args: &[&str], expected: &str) -> Result<(), E2eError> {
        let out = self.run(args)?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!(
            "$ kubectl capstan {} → {}: {stderr}",
            args.join(" "),
            out.status
        );
        let one_line = stderr.trim_end().lines().count() == 1;
        if out.status.success()
            || !one_line
            || !stderr.contains(expected)
            || stderr.contains("panicked")
        {
            return Err(E2eError::Check(format!(
                "kubectl capstan {}: expected one line with {expected:?} and a failure, got {}: {stderr}",
                args.join(" "),
                out.status
            )));
        }
        Ok(())
    }
}

fn check(ok: bool, what: &str, output: &str) -> Result<(), E2eError> {
    if ok {
        Ok(())
    } else {
        Err(E2eError::Check(format!("{what}:\n{output}")))
    }
}

async fn scenario(target: &mut Target, ns: &str, kubeconfig: &Path) -> Result<(), E2eError> {
    let plugin = Plugin::new(kubeconfig)?;

    // Bad input, before anything exists.
    plugin.refused(
        &["status", "nope", "-n", ns],
        &format!("PostgresCluster \"nope\" not found in namespace \"{ns}\""),
    )?;
    plugin.refused(
        &["psql", "nope", "-n", ns, "--", "-c", "select 1"],
        &format!("PostgresCluster \"nope\" not found in namespace \"{ns}\""),
    )?;
    plugin.refused(
        &["status", "nope", "--context", "no-such-context"],
        "cannot load the kubeconfig",
    )?;
    let nobody = plugin.dir.path().join("nobody.kubeconfig");
    std::fs::write(
        &nobody,
        "apiVersion: v1\nkind: Config\nclusters: [{name: x, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         users: [{name: x, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: x, user: x}}]\ncurrent-context: x\n",
    )
    .map_err(|e| E2eError::Setup(format!("kubeconfig: {e}")))?;
    plugin.refused(
        &[
            "status",
            "db",
            "--kubeconfig",
            &nobody.display().to_string(),
        ],
        "cannot reach the Kubernetes API server at https://127.0.0.1:1/",
    )?;

    let mut spec = ha_example("ha-cluster.yaml", ns)?;
    spec.metadata.name = Some("cli".into());
    spec.spec.instances = 2;
    spec.spec.proxy.pgbouncer.replicas = 1;
    spec.spec.postgres.version = MAJOR as i32;
    spec.spec.postgres.image = Some(backup::pgbackrest_image(MAJOR));
    spec.spec.backup = Some(
        serde_json::from_value(serde_json::json!({
            "repositories": [{"name": "repo1", "volume": {"size": "1Gi"}}],
            "archive": {"timeout": "5s"},
        }))
        .map_err(|e| E2eError::Setup(format!("spec.backup: {e}")))?,
    );
    let db = HaCluster::create(target, &spec).await?;
    let target = &*target;
    backup::write_rows(&db, target, 1..=100, std::time::Duration::from_secs(60)).await?;
    let first = ha::current_primary(&db.get(target).await?)
        .cloned()
        .unwrap_or_default();

    // status: text, JSON, YAML.
    let text = plugin.ok(&["status", "cli", "-n", ns])?;
    check(
        text.contains(&format!(
            "PostgresCluster cli in {ns}: Ready, PostgreSQL {MAJOR}, primary {first}"
        )),
        "status headline",
        &text,
    )?;
    for expected in [
        "Instances",
        "primary",
        "replica",
        "Operation\n  none",
        "Certificates",
        "Backups",
        "Ready=True",
    ] {
        check(
            text.contains(expected),
            &format!("status lacks {expected:?}"),
            &text,
        )?;
    }
    check(!text.contains('\x1b'), "colour without a terminal", &text)?;
    let json: serde_json::Value =
        serde_json::from_str(&plugin.ok(&["status", "cli", "-n", ns, "-o", "json"])?)
            .map_err(|e| E2eError::Check(format!("status -o json: {e}")))?;
    check(json["ready"] == "True", "ready", &json.to_string())?;
    check(
        json["instances"].as_array().map(Vec::len) == Some(2),
        "two instances",
        &json.to_string(),
    )?;
    let timelines: Vec<_> = json["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["timeline"].as_u64())
        .collect();
    check(
        timelines.iter().all(|t| t.is_some()),
        "every instance's timeline",
        &json.to_string(),
    )?;
    // The pooler's counts came through the API server's pod proxy.
    let pooler = &json["poolers"]["pods"][0];
    check(
        pooler["clientsWaiting"].is_i64() && pooler["clientsActive"].is_i64(),
        "the pooler's client counts",
        &json.to_string(),
    )?;
    check(
        json["certificates"]
            .as_array()
            .is_some_and(|c| c.len() == 3),
        "CA, server and pooler certificates",
        &json.to_string(),
    )?;
    let yaml = plugin.ok(&["status", "cli", "-n", ns, "-o", "yaml"])?;
    check(yaml.contains("cluster: cli"), "status -o yaml", &yaml)?;

    psql(&plugin, ns)?;

    // switchover: refused to an unknown instance, then to the replica.
    plugin.refused(
        &["switchover", "cli", "-n", ns, "--to", "cli-9"],
        "PostgresCluster cli has no instance cli-9; its instances:",
    )?;
    let asked = Instant::now();
    let out = plugin.ok(&["switchover", "cli", "-n", ns])?;
    check(out.contains("Completed"), "switchover completed", &out)?;
    let second = ha::current_primary(&db.get(target).await?)
        .cloned()
        .unwrap_or_default();
    check(
        second != first,
        &format!("the primary moved from {first}"),
        &second,
    )?;
    eprintln!(
        "[{ns}] switchover {first} -> {second} in {:.1}s",
        asked.elapsed().as_secs_f64()
    );

    // restart one replica: that pod alone.
    let before = db.pod_uids(target).await?;
    let asked = Instant::now();
    let out = plugin.ok(&["restart", "cli", &first, "-n", ns])?;
    check(
        out.contains(&format!("{first}: restarted, ready")),
        "replica restarted",
        &out,
    )?;
    let after = db.pod_uids(target).await?;
    check(
        after[&first] != before[&first] && after[&second] == before[&second],
        "only the replica's pod re-created",
        &format!("{before:?} → {after:?}"),
    )?;
    eprintln!(
        "[{ns}] restart {first}: {:.1}s",
        asked.elapsed().as_secs_f64()
    );

    // restart the cluster: every pod, the primary through a switchover.
    db.wait_streaming(
        target,
        &[first.as_str()],
        std::time::Duration::from_secs(60),
    )
    .await?;
    let before = db.pod_uids(target).await?;
    let asked = Instant::now();
    plugin.ok(&["restart", "cli", "-n", ns])?;
    let after = db.pod_uids(target).await?;
    check(
        before
            .iter()
            .all(|(name, uid)| after.get(name).is_some_and(|u| u != uid)),
        "every pod re-created",
        &format!("{before:?} → {after:?}"),
    )?;
    let third = ha::current_primary(&db.get(target).await?)
        .cloned()
        .unwrap_or_default();
    check(third == first, "the primary moved by a switchover", &third)?;
    let rows = db.written(&db.pooler(target).await?).await?;
    check(
        rows == (1..=100).collect(),
        "rows kept",
        &format!("{} rows", rows.len()),
    )?;
    eprintln!(
        "[{ns}] restart cli: {:.1}s, primary {second} -> {third}",
        asked.elapsed().as_secs_f64()
    );

    // backup: refused for a repository the cluster lacks, then taken and
    // verified.
    plugin.refused(
        &["backup", "cli", "-n", ns, "--repository", "repo2"],
        "PostgresCluster cli has no repository repo2; its repositories: repo1",
    )?;
    let asked = Instant::now();
    let out = plugin.ok(&["backup", "cli", "-n", ns, "--name", "cli-by-hand"])?;
    check(out.contains("verification Passed"), "backup verified", &out)?;
    let taken = backup::get(target, ns, "cli-by-hand").await?;
    check(
        backup::phase(&taken) == "Completed",
        "PostgresBackup Completed",
        backup::phase(&taken),
    )?;
    eprintln!(
        "[{ns}] backup taken and verified in {:.1}s",
        asked.elapsed().as_secs_f64()
    );
    let text = plugin.ok(&["status", "cli", "-n", ns])?;
    check(
        text.contains("cli-by-hand"),
        "status lists the backup",
        &text,
    )?;
    db.delete(target).await
}

/// `kubectl capstan psql`: the real psql's output, through a port-forward.
fn psql(plugin: &Plugin, ns: &str) -> Result<(), E2eError> {
    let lines = |out: &str| {
        out.lines()
            .map(str::trim)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let out = plugin.ok(&["psql", "cli", "-n", ns, "--", "-c", "select 1"])?;
    check(
        lines(&out) == ["?column?", "----------", "1", "(1 row)", ""],
        "psql through the pooler: select 1",
        &out,
    )?;
    let out = plugin.ok(&[
        "psql",
        "cli",
        "-n",
        ns,
        "--",
        "-tAc",
        "select current_user, current_database(), ssl from pg_stat_ssl where pid = pg_backend_pid()",
    ])?;
    // The pooler's own server connection is TLS too; what psql sees is
    // the app user in its database.
    check(
        out.trim().starts_with("orders|orders|"),
        "psql through the pooler as the app user",
        &out,
    )?;
    let out = plugin.ok(&[
        "psql",
        "cli",
        "-n",
        ns,
        "--replica",
        "--",
        "-c",
        "select pg_is_in_recovery()",
    ])?;
    check(
        lines(&out)
            == [
                "pg_is_in_recovery",
                "-------------------",
                "t",
                "(1 row)",
                "",
            ],
        "psql --replica: in recovery",
        &out,
    )?;
    let out = plugin.ok(&[
        "psql",
        "cli",
        "-n",
        ns,
        "--superuser",
        "--",
        "-tAc",
        "select current_user, pg_is_in_recovery(), ssl from pg_stat_ssl where pid = pg_backend_pid()",
    ])?;
    check(
        out.trim() == "postgres|f|t",
        "psql --superuser: the primary, over TLS",
        &out,
    )?;
    // psql's own failure: its message and its exit code.
    let out = plugin.run(&["psql", "cli", "-n", ns, "--", "-c", "select nope"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "$ kubectl capstan psql cli -n {ns} -- -c 'select nope' → {}: {stderr}",
        out.status
    );
    check(
        out.status.code() == Some(1) && stderr.contains("column \"nope\" does not exist"),
        "psql's error and exit code 1",
        &stderr,
    )
}

#[test]
fn kubectl_capstan_status_switchover_restart_and_backup() {
    capstan_e2e::scenario(|| async {
        let Some(mut target) = backup::harness_for_backups(
            MAJOR,
            "the plugin scenario needs this machine's kubeconfig of the harness",
        )
        .await
        else {
            return;
        };
        let ns = format!("e2e-plugin-{}", std::process::id());
        let kubeconfig = target
            .local()
            .map(|h| h.kubeconfig().to_path_buf())
            .expect("local harness");
        if let Err(e) = scenario(&mut target, &ns, &kubeconfig).await {
            fail(&target, &ns, e).await;
        }
    });
}
