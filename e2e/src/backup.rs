//! Steps of the backup scenarios, through the Kubernetes API and the
//! cluster's Service names only: an S3 store the pods reach, the
//! `spec.backup` naming it, `PostgresBackup` objects, what `status.backup`
//! says, and how far WAL archiving lags behind a commit.

/// Shared with the real-process tests: one copy of the S3 store and tool
/// lookup (`s3` needs its sibling `tools`).
#[path = "../../tests/support/tools.rs"]
pub mod tools;

#[path = "../../tests/support/s3.rs"]
pub mod s3;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use capstan::api::{
    BackupSpec, BackupStatus, BackupType, PostgresBackup, PostgresBackupSpec, PostgresCluster,
    RestoreRepository, RestoreSource, RestoreSpec, RestoreTarget,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};

use crate::E2eError;
use crate::cluster::FIELD_MANAGER;
use crate::ha::{As, HaCluster, WRITES_TABLE};
use crate::harness::wait_for;
use crate::sql;
use crate::target::Target;

/// pgBackRest the harness maps into pgBackRest images when neither
/// `CAPSTAN_PGBACKREST` nor the tools directory names one.
pub const PGBACKREST_DEFAULT: &str = "/var/cache/capstan/tools/pgbackrest-2.55.1/bin/pgbackrest";
/// Secret holding the store's access key pair.
pub const KEYS_SECRET: &str = "s3-keys";
/// Secret holding the store's test CA (`ca.crt`).
pub const CA_SECRET: &str = "s3-ca";
/// A PostgresBackup, created to finished (Completed or Failed).
pub const BACKUP_WITHIN: Duration = Duration::from_secs(180);

const POLL: Duration = Duration::from_millis(250);

/// The image `images/postgres` builds for `major` (the harness maps any
/// name containing `pgbackrest`).
pub fn pgbackrest_image(major: u32) -> String {
    format!("localhost/postgres-pgbackrest:{major}")
}

/// What the harness runs as `pgbackrest` in pgBackRest images.
pub fn pgbackrest_binary() -> PathBuf {
    s3::pgbackrest_path().unwrap_or_else(|| PathBuf::from(PGBACKREST_DEFAULT))
}

/// A port nothing listens on yet at `addr` (the test's own network
/// namespace: nobody else takes it meanwhile).
fn free_port(addr: IpAddr) -> Result<u16, E2eError> {
    TcpListener::bind(SocketAddr::new(addr, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| E2eError::Setup(format!("no free port on {addr}: {e}")))
}

/// An S3 store for the pods: moto behind nginx (TLS) on `addr`, which every
/// pod reaches (on the harness: the node address, in the test's own
/// network namespace), with a test CA and an access key moto checks every
/// request's signature against.
pub struct PodS3 {
    pub stack: s3::S3Stack,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// Which key pair a Secret gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keys {
    Right,
    /// The right key id with a wrong secret: every request is refused (403).
    WrongSecret,
}

/// What every backup scenario starts from: the target and an S3 store
/// its pods reach on the node address, for clusters on PostgreSQL
/// `major`. `None` (skipped, said why; `CI=true` fails instead) when a
/// tool is missing or the target is a real cluster.
pub async fn harness_with_store(major: u32, bucket: &str) -> Option<(Target, PodS3)> {
    let mut target = harness_for_backups(
        major,
        "the S3 store runs on the local harness's node address; a real cluster needs one of its own",
    )
    .await?;
    let harness = target.harness()?;
    let node = IpAddr::V4(harness.control_plane().addr());
    let store = PodS3::start(node, bucket)
        .await
        .expect("S3 store for the pods")?;
    eprintln!("S3 store for the pods at https://{}", store.endpoint());
    Some((target, store))
}

/// The local harness with pgBackRest and PostgreSQL `major` for its
/// pgBackRest image. `None` (skipped, said why; `CI=true` fails instead)
/// when a tool is missing, or on a real cluster (`why_harness`).
pub async fn harness_for_backups(major: u32, why_harness: &str) -> Option<Target> {
    s3::pgbackrest()?;
    let pg_bin = std::env::var_os(format!("CAPSTAN_PG{major}_BIN"));
    let debian = format!("/usr/lib/postgresql/{major}/bin/postgres");
    if pg_bin.is_none() && !std::path::Path::new(&debian).is_file() {
        return s3::missing(&format!(
            "PostgreSQL {major} (CAPSTAN_PG{major}_BIN=/opt/capstan-pg/{major}/bin)"
        ));
    }
    let mut target = Target::from_env().await.expect("e2e target");
    if target.harness().is_none() {
        eprintln!("skipped: {why_harness}");
        return None;
    }
    Some(target)
}

impl PodS3 {
    /// `None` (skip) when moto or nginx is missing outside CI.
    pub async fn start(addr: IpAddr, bucket: &str) -> Result<Option<PodS3>, E2eError> {
        let listen = s3::Listen {
            addr,
            tls_port: free_port(addr)?,
            moto_port: free_port(IpAddr::V4(Ipv4Addr::LOCALHOST))?,
        };
        let bucket = bucket.to_string();
        // Starting waits for both servers to listen.
        let started =
            tokio::task::spawn_blocking(move || s3::S3Stack::start_with_auth(listen, &bucket))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        Ok(started.map(|(stack, (id, secret))| PodS3 {
            stack,
            access_key_id: id,
            secret_access_key: secret,
        }))
    }

    /// `host:port` as `spec.backup.repositories[].s3.endpoint` takes it.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.stack.host(), self.stack.tls_port)
    }

    /// The key Secret `name` and [`CA_SECRET`] in `ns`.
    pub async fn write_secrets(
        &self,
        target: &Target,
        ns: &str,
        name: &str,
        keys: Keys,
    ) -> Result<(), E2eError> {
        let secret = match keys {
            Keys::Right => self.secret_access_key.clone(),
            Keys::WrongSecret => format!("not-{}", self.secret_access_key),
        };
        let ca = std::fs::read_to_string(&self.stack.ca_file)
            .map_err(|e| E2eError::Setup(format!("{}: {e}", self.stack.ca_file.display())))?;
        apply_secret(
            target,
            ns,
            name,
            serde_json::json!({
                "AWS_ACCESS_KEY_ID": self.access_key_id,
                "AWS_SECRET_ACCESS_KEY": secret,
            }),
        )
        .await?;
        apply_secret(target, ns, CA_SECRET, serde_json::json!({"ca.crt": ca})).await
    }

    /// `spec.backup`: `repo1` on this store (path style, TLS verified
    /// against [`CA_SECRET`], keys from `keys_secret`), WAL archived at
    /// least every `archive_timeout`.
    pub fn backup_spec(
        &self,
        keys_secret: &str,
        archive_timeout: &str,
    ) -> Result<BackupSpec, E2eError> {
        serde_json::from_value(serde_json::json!({
            "repositories": [{
                "name": "repo1",
                "s3": {
                    "endpoint": self.endpoint(),
                    "region": s3::REGION,
                    "bucket": self.stack.bucket,
                    "uriStyle": "path",
                    "verifyTls": true,
                    "caSecret": {"name": CA_SECRET, "key": "ca.crt"},
                    "credentials": {"secretName": keys_secret},
                },
            }],
            "archive": {"timeout": archive_timeout},
        }))
        .map_err(|e| E2eError::Setup(format!("spec.backup: {e}")))
    }

    /// Keys under `prefix` in the bucket, listed with the access key (moto
    /// checks every request's signature here) by boto3 from moto's
    /// virtualenv.
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>, E2eError> {
        let python = tools::find("moto_server")
            .map(|m| m.with_file_name("python3"))
            .ok_or_else(|| E2eError::Setup("moto_server (for boto3) not found".into()))?;
        let script = format!(
            "import boto3, sys\n\
             s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{port}', region_name='{region}',\n\
                               aws_access_key_id=sys.argv[1], aws_secret_access_key=sys.argv[2])\n\
             pages = s3.get_paginator('list_objects_v2').paginate(Bucket='{bucket}', Prefix=sys.argv[3])\n\
             print('\\n'.join(o['Key'] for p in pages for o in p.get('Contents', [])))\n",
            port = self.stack.moto_port,
            region = s3::REGION,
            bucket = self.stack.bucket,
        );
        let out = std::process::Command::new(&python)
            .args(["-c", &script])
            .args([&self.access_key_id, &self.secret_access_key, prefix])
            .output()
            .map_err(|e| E2eError::Setup(format!("{}: {e}", python.display())))?;
        if !out.status.success() {
            return Err(E2eError::Check(format!(
                "listing {prefix} in the store: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Deletes the objects `keys` from the bucket (a repository losing
    /// files), with boto3 as [`Self::keys`] lists them.
    pub fn delete(&self, keys: &[String]) -> Result<(), E2eError> {
        let python = tools::find("moto_server")
            .map(|m| m.with_file_name("python3"))
            .ok_or_else(|| E2eError::Setup("moto_server (for boto3) not found".into()))?;
        let script = format!(
            "import boto3, sys\n\
             s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{port}', region_name='{region}',\n\
                               aws_access_key_id=sys.argv[1], aws_secret_access_key=sys.argv[2])\n\
             for key in sys.argv[3:]:\n    s3.delete_object(Bucket='{bucket}', Key=key)\n",
            port = self.stack.moto_port,
            region = s3::REGION,
            bucket = self.stack.bucket,
        );
        let out = std::process::Command::new(&python)
            .args(["-c", &script])
            .args([&self.access_key_id, &self.secret_access_key])
            .args(keys)
            .output()
            .map_err(|e| E2eError::Setup(format!("{}: {e}", python.display())))?;
        if !out.status.success() {
            return Err(E2eError::Check(format!(
                "deleting {} key(s) from the store: {}",
                keys.len(),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// moto's and nginx's logs (for failure messages).
    pub fn logs(&self) -> String {
        self.stack.logs()
    }
}

async fn apply_secret(
    target: &Target,
    ns: &str,
    name: &str,
    data: serde_json::Value,
) -> Result<(), E2eError> {
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "stringData": data,
    }))
    .map_err(|e| E2eError::Setup(e.to_string()))?;
    Api::<Secret>::namespaced(target.client(), ns)
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .map_err(|e| E2eError::Kube(format!("apply Secret {ns}/{name}"), e))?;
    Ok(())
}

/// Creates the `PostgresBackup` `name` of `cluster`, as a user does.
pub async fn request(
    target: &Target,
    ns: &str,
    name: &str,
    cluster: &str,
    type_: BackupType,
) -> Result<(), E2eError> {
    request_verified(target, ns, name, cluster, type_, None).await
}

/// [`request`] with `spec.verify` set.
pub async fn request_verified(
    target: &Target,
    ns: &str,
    name: &str,
    cluster: &str,
    type_: BackupType,
    verify: Option<bool>,
) -> Result<(), E2eError> {
    let mut backup = PostgresBackup::new(
        name,
        PostgresBackupSpec {
            cluster: cluster.to_string(),
            type_,
            repository: None,
            verify,
        },
    );
    backup.metadata.namespace = Some(ns.to_string());
    Api::<PostgresBackup>::namespaced(target.client(), ns)
        .create(&PostParams::default(), &backup)
        .await
        .map_err(|e| E2eError::Kube(format!("create PostgresBackup {ns}/{name}"), e))?;
    Ok(())
}

pub async fn get(target: &Target, ns: &str, name: &str) -> Result<PostgresBackup, E2eError> {
    Api::<PostgresBackup>::namespaced(target.client(), ns)
        .get(name)
        .await
        .map_err(|e| E2eError::Kube(format!("get PostgresBackup {ns}/{name}"), e))
}

/// `status.phase`, `Pending` before the operator wrote one.
pub fn phase(b: &PostgresBackup) -> &str {
    b.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// `status.message`.
pub fn message(b: &PostgresBackup) -> &str {
    b.status
        .as_ref()
        .and_then(|s| s.message.as_deref())
        .unwrap_or_default()
}

/// Waits until the backup is `Completed` or `Failed`, and returns it.
pub async fn wait_finished(
    target: &Target,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<PostgresBackup, E2eError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let b = get(target, ns, name).await?;
        if matches!(phase(&b), "Completed" | "Failed") {
            return Ok(b);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(E2eError::Timeout(
                format!(
                    "PostgresBackup {ns}/{name} to finish (now {}: {})",
                    phase(&b),
                    message(&b)
                ),
                timeout,
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the backup's `status.message` satisfies `check` (while it
/// has not finished), and returns it.
pub async fn wait_message(
    target: &Target,
    ns: &str,
    name: &str,
    timeout: Duration,
    check: impl Fn(&str) -> bool,
) -> Result<PostgresBackup, E2eError> {
    wait_for(
        &format!("PostgresBackup {ns}/{name} to explain itself"),
        timeout,
        POLL,
        || async {
            let b = get(target, ns, name).await.ok()?;
            check(message(&b)).then_some(b)
        },
    )
    .await
}

/// Takes a backup of `cluster` and returns it `Completed` with what
/// pgBackRest recorded (label of its type, sizes, LSNs, duration, in
/// `repo1`), printing how long it took.
pub async fn completed(
    target: &Target,
    ns: &str,
    name: &str,
    cluster: &str,
    type_: BackupType,
) -> Result<PostgresBackup, E2eError> {
    let asked = Instant::now();
    request(target, ns, name, cluster, type_).await?;
    let b = wait_finished(target, ns, name, BACKUP_WITHIN).await?;
    if phase(&b) != "Completed" {
        return Err(E2eError::Check(format!(
            "backup {name} {}: {}",
            phase(&b),
            message(&b)
        )));
    }
    let s = b.status.clone().unwrap_or_default();
    let missing = |field: &str| E2eError::Check(format!("backup {name} has no {field}: {s:?}"));
    let label = s.label.clone().ok_or_else(|| missing("label"))?;
    let size = s.size.filter(|n| *n > 0).ok_or_else(|| missing("size"))?;
    let (start, stop) = (
        s.lsn_start.clone().ok_or_else(|| missing("lsnStart"))?,
        s.lsn_stop.clone().ok_or_else(|| missing("lsnStop"))?,
    );
    let duration = s
        .duration_seconds
        .filter(|d| *d >= 0)
        .ok_or_else(|| missing("durationSeconds"))?;
    let suffix = match type_ {
        BackupType::Full => 'F',
        BackupType::Differential => 'D',
        BackupType::Incremental => 'I',
    };
    if s.type_ != Some(type_)
        || s.repository.as_deref() != Some("repo1")
        || !label.ends_with(suffix)
    {
        return Err(E2eError::Check(format!(
            "backup {name}: not a {type_:?} backup in repo1: {s:?}"
        )));
    }
    eprintln!(
        "[{ns}] backup {name} ({type_:?}) Completed on {}: label {label}, {size} bytes ({} in the repository), WAL {start} .. {stop}; pgBackRest took {duration}s, request to Completed {:.1}s",
        s.instance.as_deref().unwrap_or("?"),
        s.repository_size.unwrap_or_default(),
        asked.elapsed().as_secs_f64()
    );
    Ok(b)
}

/// `status.backup` of the cluster.
pub fn status(c: &PostgresCluster) -> Option<&BackupStatus> {
    c.status.as_ref()?.backup.as_ref()
}

/// `status.backup.lastArchivedWal.wal`.
pub fn last_archived_wal(c: &PostgresCluster) -> Option<&str> {
    Some(status(c)?.last_archived_wal.as_ref()?.wal.as_str())
}

/// A WAL segment name (`000000020000000000000005`, also with `.partial`,
/// or a backup history file `<segment>.<offset>.backup` naming its start
/// segment) as (timeline, log, segment); `None` for timeline history files
/// and other names.
pub fn segment(name: &str) -> Option<(u32, u32, u32)> {
    let name = match name.split_once('.') {
        Some((seg, rest)) if rest == "partial" || rest.ends_with(".backup") => seg,
        Some(_) => return None,
        None => name,
    };
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let hex = |r: std::ops::Range<usize>| u32::from_str_radix(&name[r], 16).ok();
    Some((hex(0..8)?, hex(8..16)?, hex(16..24)?))
}

/// Whether archiving up to `archived` includes `wanted` (a later timeline
/// includes everything before it: the timeline switch archived it).
pub fn covers(archived: &str, wanted: &str) -> bool {
    match (segment(archived), segment(wanted)) {
        (Some((ta, la, sa)), Some((tw, lw, sw))) => ta > tw || (ta == tw && (la, sa) >= (lw, sw)),
        _ => false,
    }
}

/// The timeline of a segment name (hex, as PostgreSQL writes it).
pub fn timeline(name: &str) -> Option<u32> {
    segment(name).map(|(t, _, _)| t)
}

/// The segment the primary writes now, asked on `<name>-rw`: it holds
/// every commit acknowledged before this call.
pub async fn current_segment(ha: &HaCluster, target: &Target) -> Result<String, E2eError> {
    let admin = ha.connect(&ha.rw(target).await?, As::Superuser).await?;
    sql::value(&admin, "SELECT pg_walfile_name(pg_current_wal_lsn())").await
}

/// Waits until the primary's `pg_stat_archiver` (asked on `<name>-rw`)
/// covers `wanted`; returns when that was seen.
pub async fn wait_archived(
    ha: &HaCluster,
    target: &Target,
    wanted: &str,
    timeout: Duration,
) -> Result<Instant, E2eError> {
    let rw = ha.rw(target).await?;
    let found = wait_for(
        &format!("{wanted} archived (pg_stat_archiver on the primary)"),
        timeout,
        Duration::from_millis(100),
        || async {
            let admin = ha.connect(&rw, As::Superuser).await.ok()?;
            let last = sql::value(&admin, "SELECT last_archived_wal FROM pg_stat_archiver")
                .await
                .ok()?;
            covers(&last, wanted).then(Instant::now)
        },
    )
    .await;
    let Err(e) = found else {
        return found;
    };
    // What the archiver was doing, for whoever reads the failure.
    let seen = match ha.connect(&rw, As::Superuser).await {
        Ok(admin) => sql::value(
            &admin,
            "SELECT format('archived %s (%s at %s), failed %s (%s at %s), %s waiting, now %s', \
             archived_count, last_archived_wal, last_archived_time, failed_count, \
             last_failed_wal, last_failed_time, \
             (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'), now()) \
             FROM pg_stat_archiver",
        )
        .await
        .unwrap_or_else(|e| e.to_string()),
        Err(e) => e.to_string(),
    };
    Err(E2eError::Check(format!("{e}; pg_stat_archiver: {seen}")))
}

/// Waits until `status.backup.lastArchivedWal` satisfies `check`.
pub async fn wait_archived_in_status(
    ha: &HaCluster,
    target: &Target,
    what: &str,
    timeout: Duration,
    check: impl Fn(&str) -> bool,
) -> Result<PostgresCluster, E2eError> {
    let found = wait_for(
        &format!("status.backup.lastArchivedWal {what}"),
        timeout,
        POLL,
        || async {
            let c = ha.get(target).await.ok()?;
            last_archived_wal(&c).is_some_and(&check).then_some(c)
        },
    )
    .await;
    match found {
        Err(E2eError::Timeout(what, after)) => {
            let now = ha.get(target).await.ok();
            let wal = now.as_ref().and_then(last_archived_wal).unwrap_or("none");
            Err(E2eError::Timeout(format!("{what} (it is {wal})"), after))
        }
        other => other,
    }
}

/// Inserts rows `numbers` into [`WRITES_TABLE`] through `<name>-pooler` as
/// the application, retrying the whole batch (rows already there are kept)
/// until one attempt commits: right after a failover the pooler may still
/// refuse for a moment.
pub async fn write_rows(
    ha: &HaCluster,
    target: &Target,
    numbers: std::ops::RangeInclusive<i64>,
    timeout: Duration,
) -> Result<(), E2eError> {
    let pooler = ha.pooler(target).await?;
    let statement = format!(
        "INSERT INTO {WRITES_TABLE} (n) SELECT generate_series({}, {}) ON CONFLICT (n) DO NOTHING",
        numbers.start(),
        numbers.end()
    );
    let mut last_error = String::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        let attempt = async {
            let conn = ha.connect(&pooler, As::App).await?;
            conn.batch_execute(&statement)
                .await
                .map_err(|e| E2eError::Sql(format!("{statement}: {e}")))
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(E2eError::Timeout(
        format!("rows {numbers:?} written through the pooler (last error: {last_error})"),
        timeout,
    ))
}

/// `spec.bootstrap.restore`: the backups of `cluster` in the repository
/// of its `spec.backup` (`repo1` on the store, default path), recovered
/// up to `time` (RFC 3339).
pub fn restore_to_time(
    source: &BackupSpec,
    cluster: &str,
    time: &str,
) -> Result<RestoreSpec, E2eError> {
    let s3 = source
        .repositories
        .first()
        .and_then(|r| r.s3.clone())
        .ok_or_else(|| E2eError::Setup("the source's spec.backup has no S3 repository".into()))?;
    Ok(RestoreSpec {
        source: RestoreSource {
            repository: RestoreRepository {
                s3: Some(s3),
                azure: None,
                gcs: None,
                volume: None,
            },
            cluster: Some(cluster.to_string()),
        },
        target: Some(RestoreTarget {
            time: Some(time.to_string()),
            lsn: None,
            name: None,
            backup: None,
        }),
        database: None,
        owner: None,
    })
}

/// The primary's clock now (`clock_timestamp()`, asked on `<name>-rw`),
/// as RFC 3339 in UTC with microseconds: later than every commit
/// acknowledged before this call.
pub async fn server_time(ha: &HaCluster, target: &Target) -> Result<String, E2eError> {
    let admin = ha.connect(&ha.rw(target).await?, As::Superuser).await?;
    sql::value(
        &admin,
        r#"SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#,
    )
    .await
}

/// The timeline the primary behind `<name>-rw` writes.
pub async fn server_timeline(ha: &HaCluster, target: &Target) -> Result<u32, E2eError> {
    let admin = ha.connect(&ha.rw(target).await?, As::Superuser).await?;
    let tli = sql::value(
        &admin,
        "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
    )
    .await?;
    u32::from_str_radix(&tli, 16).map_err(|_| E2eError::Sql(format!("timeline {tli:?}")))
}

/// The condition `type_` of the cluster `ns/name` as it is now.
pub async fn condition(
    target: &Target,
    ns: &str,
    name: &str,
    type_: &str,
) -> Result<Option<Condition>, E2eError> {
    let c = crate::cluster::get(&target.client(), ns, name).await?;
    Ok(c.status
        .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == type_)))
}

/// Keys of the archived WAL segments of `stanza` under `path` (as
/// `spec.backup` sets it, e.g. `/capstan/<ns>/<cluster>`): their segment
/// names, `000000030000000000000005`.
pub fn archived_segments(s3: &PodS3, path: &str, stanza: &str) -> Result<Vec<String>, E2eError> {
    let prefix = format!("{}/archive/{stanza}/", path.trim_start_matches('/'));
    Ok(s3
        .keys(&prefix)?
        .iter()
        .filter_map(|k| k.rsplit('/').next()?.get(..24).map(str::to_string))
        .filter(|name| segment(name).is_some())
        .collect())
}

/// Restarts of the containers of the cluster's instance pods (0: no crash
/// loop), as the pods' statuses report them.
pub async fn instance_restarts(target: &Target, ns: &str, cluster: &str) -> Result<i32, E2eError> {
    use capstan::resources::labels;
    let selector = format!(
        "{}={cluster},{}={}",
        labels::CLUSTER,
        labels::COMPONENT,
        labels::COMPONENT_DATABASE
    );
    let pods = Api::<Pod>::namespaced(target.client(), ns)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| E2eError::Kube(format!("list the pods of {cluster}"), e))?;
    if pods.items.is_empty() {
        return Err(E2eError::Check(format!("{cluster} has no instance pods")));
    }
    Ok(pods
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .map(|s| s.restart_count)
        .sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_compare_by_timeline_then_position() {
        assert_eq!(
            segment("000000020000000100000005"),
            Some((2, 1, 5)),
            "hex fields"
        );
        assert_eq!(segment("00000002.history"), None);
        assert_eq!(segment("000000010000000000000007.partial"), Some((1, 0, 7)));
        assert!(covers(
            "000000010000000000000007",
            "000000010000000000000007"
        ));
        assert!(!covers(
            "000000010000000000000006",
            "000000010000000000000007"
        ));
        assert!(covers(
            "000000010000000100000000",
            "0000000100000000000000FF"
        ));
        // A later timeline has archived the earlier one's end.
        assert!(covers(
            "000000020000000000000003",
            "000000010000000000000007"
        ));
        assert!(!covers("00000002.history", "000000010000000000000001"));
        assert_eq!(timeline("0000000A0000000000000001"), Some(10));
    }
}
