//! `kubectl capstan status`: one screen on a cluster — instances, the
//! operation in progress, poolers and their waiting clients, certificates,
//! backups, conditions and recent Warning Events. Everything comes from the
//! API server: the cluster's status, its pods, its `PostgresBackup`s, its
//! Events, and each pooler's `/metrics` through the API server's pod proxy.
//! [`summarize`] and [`render`] are pure; `-o json|yaml` prints the summary.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::ListParams;
use serde::Serialize;

use super::{CliError, Connection, Session};
use crate::api::PostgresCluster;
use crate::api::pgbackup::PostgresBackup;
use crate::operator::cluster::operation::is_ready;
use crate::resources::labels;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The PostgresCluster.
    pub cluster: String,
    /// `text` (default), `json` or `yaml`.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub connection: Connection,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq)]
pub enum Output {
    Text,
    Json,
    Yaml,
}

/// How many recent backups and Warning Events the screen lists.
const RECENT: usize = 5;

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub cluster: String,
    pub namespace: String,
    /// The `Ready` condition's status and reason.
    pub ready: String,
    pub reason: Option<String>,
    pub phase: Option<String>,
    pub postgres_version: Option<i32>,
    pub primary: Option<String>,
    pub instances: Vec<Instance>,
    pub operation: Option<String>,
    pub poolers: Poolers,
    pub certificates: Vec<Certificate>,
    pub backups: Option<Backups>,
    /// `status.roles` and `status.databases`.
    pub managed: Vec<ManagedLine>,
    pub conditions: Vec<ConditionLine>,
    pub warnings: Vec<Warning>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedLine {
    /// `role` or `database`.
    pub kind: String,
    pub name: String,
    pub state: String,
    pub message: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub name: String,
    pub role: String,
    pub ready: bool,
    pub timeline: Option<u32>,
    pub lsn: Option<String>,
    pub lag_bytes: Option<i64>,
    pub sync_state: Option<String>,
    pub pending_restart: bool,
    /// `used/size` of the data volume's file system.
    pub data_used_bytes: Option<i64>,
    pub data_size_bytes: Option<i64>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Poolers {
    pub service: Option<String>,
    pub replicas: i32,
    pub ready_replicas: i32,
    pub pods: Vec<Pooler>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Pooler {
    pub name: String,
    pub ready: bool,
    pub clients_active: Option<i64>,
    pub clients_waiting: Option<i64>,
    /// Why the client counts are unknown.
    pub metrics_error: Option<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    pub certificate: String,
    pub not_after: String,
    pub days_left: Option<i64>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Backups {
    pub last_successful: Option<String>,
    pub next_scheduled: Option<String>,
    pub recoverable_from: Option<String>,
    pub last_archived_wal: Option<String>,
    pub archive_failure: Option<String>,
    pub recent: Vec<BackupLine>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupLine {
    pub name: String,
    pub r#type: String,
    pub phase: String,
    pub verification: Option<String>,
    pub finished: Option<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConditionLine {
    pub r#type: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Warning {
    pub reason: String,
    pub message: String,
    pub count: i32,
    pub last_seen: Option<String>,
}

/// What the pooler pods' `/metrics` said (or why nothing).
pub type PoolerMetrics = Vec<(String, Result<String, String>)>;

/// The summary of one cluster from what the API server holds.
pub fn summarize(
    cluster: &PostgresCluster,
    pods: &[Pod],
    backups: &[PostgresBackup],
    events: &[Event],
    pooler_metrics: &PoolerMetrics,
    now: jiff::Timestamp,
) -> Summary {
    let name = cluster.metadata.name.clone().unwrap_or_default();
    let status = cluster.status.clone().unwrap_or_default();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    let instances = status
        .instances
        .iter()
        .map(|i| {
            let data = i.volumes.iter().find(|v| v.volume == "data");
            Instance {
                name: i.name.clone(),
                role: i.role.clone(),
                ready: i.ready,
                timeline: i.timeline,
                lsn: i.lsn.clone(),
                lag_bytes: i.lag_bytes,
                // A primary keeps the state it had as a replica in status.
                sync_state: i
                    .sync_state
                    .clone()
                    .filter(|_| i.role != labels::ROLE_PRIMARY),
                pending_restart: i.pending_restart,
                data_used_bytes: data.and_then(|v| v.used_bytes),
                data_size_bytes: data.and_then(|v| v.size_bytes),
            }
        })
        .collect();
    let proxy = status.proxy.clone().unwrap_or_default();
    let pooler_pods = pods
        .iter()
        .filter(|p| component(p) == Some(labels::COMPONENT_POOLER))
        .filter_map(|p| {
            let pod = p.metadata.name.clone()?;
            let metrics = pooler_metrics
                .iter()
                .find(|(n, _)| *n == pod)
                .map(|(_, m)| m);
            let (active, waiting, error) = match metrics {
                Some(Ok(text)) => (
                    metric_sum(text, "pgbouncer_pools_client_active_connections"),
                    metric_sum(text, "pgbouncer_pools_client_waiting_connections"),
                    None,
                ),
                Some(Err(e)) => (None, None, Some(e.clone())),
                None => (None, None, None),
            };
            Some(Pooler {
                name: pod,
                ready: is_ready(p),
                clients_active: active,
                clients_waiting: waiting,
                metrics_error: error,
            })
        })
        .collect();
    let certificates = status
        .tls
        .as_ref()
        .map(|t| {
            [
                ("CA", &t.ca_not_after),
                ("server", &t.server_not_after),
                ("pooler", &t.pooler_not_after),
            ]
            .into_iter()
            .filter_map(|(what, at)| {
                let at = at.clone()?;
                Some(Certificate {
                    certificate: what.to_string(),
                    days_left: at
                        .parse::<jiff::Timestamp>()
                        .ok()
                        .map(|t| (t.as_second() - now.as_second()).div_euclid(86_400)),
                    not_after: at,
                })
            })
            .collect()
        })
        .unwrap_or_default();
    let mut ours: Vec<&PostgresBackup> =
        backups.iter().filter(|b| b.spec.cluster == name).collect();
    ours.sort_by_key(|b| std::cmp::Reverse(b.metadata.creation_timestamp.clone()));
    let backups = (cluster.spec.backup.is_some() || !ours.is_empty()).then(|| {
        let b = status.backup.clone().unwrap_or_default();
        Backups {
            last_successful: b.last_successful_backup.map(|l| {
                format!(
                    "{} ({}, {}) at {}",
                    l.name,
                    backup_type(l.type_),
                    l.repository,
                    l.completed_at
                )
            }),
            next_scheduled: b.next_scheduled.map(|n| {
                format!(
                    "{} ({}, schedule {})",
                    n.time,
                    backup_type(n.type_),
                    n.schedule
                )
            }),
            recoverable_from: b.first_recoverability_point,
            last_archived_wal: b
                .last_archived_wal
                .map(|w| format!("{} at {}", w.wal, w.time)),
            archive_failure: b
                .last_archive_failure
                .map(|f| format!("{} at {}: {}", f.wal, f.time, f.message)),
            recent: ours
                .iter()
                .take(RECENT)
                .map(|b| {
                    let s = b.status.clone().unwrap_or_default();
                    BackupLine {
                        name: b.metadata.name.clone().unwrap_or_default(),
                        r#type: backup_type(s.type_.unwrap_or(b.spec.type_)),
                        phase: s.phase.unwrap_or_else(|| "Pending".into()),
                        verification: s.verification.map(|v| v.phase),
                        finished: s.stopped_at,
                    }
                })
                .collect(),
        }
    });
    let mut warnings: Vec<(&Event, Option<String>)> = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| (e, event_time(e)))
        .collect();
    warnings.sort_by(|a, b| b.1.cmp(&a.1));
    Summary {
        cluster: name,
        namespace: cluster.metadata.namespace.clone().unwrap_or_default(),
        ready: ready
            .map(|c| c.status.clone())
            .unwrap_or_else(|| "Unknown".into()),
        reason: ready.map(|c| c.reason.clone()),
        phase: status.phase.map(|p| p.as_str().to_string()),
        postgres_version: status.postgres_version,
        primary: status.current_primary.clone(),
        instances,
        operation: operation(&status),
        poolers: Poolers {
            service: Some(proxy.service).filter(|s| !s.is_empty()),
            replicas: proxy.replicas,
            ready_replicas: proxy.ready_replicas,
            pods: pooler_pods,
        },
        certificates,
        backups,
        managed: [("role", &status.roles), ("database", &status.databases)]
            .into_iter()
            .flat_map(|(kind, list)| {
                list.iter().map(move |e| ManagedLine {
                    kind: kind.into(),
                    name: e.name.clone(),
                    state: e.state.clone(),
                    message: e.message.clone(),
                })
            })
            .collect(),
        conditions: status
            .conditions
            .iter()
            .map(|c| ConditionLine {
                r#type: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
            .collect(),
        warnings: warnings
            .into_iter()
            .take(RECENT)
            .map(|(e, at)| Warning {
                reason: e.reason.clone().unwrap_or_default(),
                message: e.message.clone().unwrap_or_default(),
                count: e
                    .series
                    .as_ref()
                    .and_then(|s| s.count)
                    .or(e.count)
                    .unwrap_or(1),
                last_seen: at,
            })
            .collect(),
    }
}

fn component(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()?
        .get(labels::COMPONENT)
        .map(String::as_str)
}

fn backup_type(t: crate::api::BackupType) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// When an Event was last seen (events.k8s.io events carry `eventTime` and
/// a series; core ones `lastTimestamp`).
fn event_time(e: &Event) -> Option<String> {
    let series = e
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref());
    series
        .map(|t| t.0.to_string())
        .or_else(|| e.last_timestamp.as_ref().map(|t| t.0.to_string()))
        .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
        .or_else(|| e.first_timestamp.as_ref().map(|t| t.0.to_string()))
}

/// The operation in progress, as one line.
fn operation(status: &crate::api::PostgresClusterStatus) -> Option<String> {
    if let Some(f) = status
        .failover
        .as_ref()
        .filter(|f| f.completed_at.is_none())
    {
        return Some(format!(
            "Failover {} → {}: {} ({}, since {})",
            f.from, f.to, f.message, f.phase, f.started_at
        ));
    }
    if let Some(s) = status
        .switchover
        .as_ref()
        .filter(|s| !crate::operator::cluster::switchover::is_terminal(&s.phase))
    {
        return Some(format!(
            "Switchover {} → {}: {} ({}, since {})",
            s.from, s.to, s.message, s.phase, s.started_at
        ));
    }
    if let Some(u) = status
        .upgrade
        .as_ref()
        .filter(|u| !matches!(u.phase.as_str(), "Completed" | "Failed"))
    {
        return Some(format!(
            "Major upgrade {} → {}: {} ({}, since {})",
            u.from_version, u.to_version, u.message, u.phase, u.started_at
        ));
    }
    status
        .operation
        .as_ref()
        .map(|o| format!("{}: {} (since {})", o.type_, o.message, o.started_at))
}

/// The sum of every sample of `name` in a Prometheus text exposition
/// (PgBouncer reports per database and user).
pub fn metric_sum(text: &str, name: &str) -> Option<i64> {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        // The value follows the labels (which may hold spaces in quotes).
        let after_labels = match rest.strip_prefix('{') {
            Some(r) => r.rsplit_once('}').map(|(_, v)| v).unwrap_or(""),
            None => rest,
        };
        if let Some(v) = after_labels
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            sum += v;
            found = true;
        }
    }
    found.then_some(sum as i64)
}

/// Terminal colours, only when stdout is a terminal and `NO_COLOR` is unset.
#[derive(Clone, Copy)]
pub struct Style {
    pub colour: bool,
}

impl Style {
    fn paint(self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn good(self, t: &str) -> String {
        self.paint("32", t)
    }
    fn bad(self, t: &str) -> String {
        self.paint("31", t)
    }
    fn warn(self, t: &str) -> String {
        self.paint("33", t)
    }
    fn bold(self, t: &str) -> String {
        self.paint("1", t)
    }
    /// Green for True/yes, red for False/no.
    fn truth(self, ok: bool, t: &str) -> String {
        if ok { self.good(t) } else { self.bad(t) }
    }
}

/// Columns padded to their widest cell; `paint` colours a cell after it
/// was padded, so escape codes never count as width.
fn table(rows: &[Vec<String>], paint: impl Fn(usize, usize, &str) -> String) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (r, row) in rows.iter().enumerate() {
        out.push_str("  ");
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let padded = if c + 1 == row.len() {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = widths[c])
                };
                paint(r, c, &padded)
            })
            .collect();
        out.push_str(&cells.join("  "));
        out.push('\n');
    }
    out
}

fn size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn or_dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "-".into())
}

/// The screen.
pub fn render(s: &Summary, style: Style) -> String {
    let mut out = String::new();
    let ready = match s.ready.as_str() {
        "True" => style.good("Ready"),
        _ => style.bad(&format!(
            "Not ready ({})",
            s.reason.clone().unwrap_or_else(|| "no status yet".into())
        )),
    };
    let _ = writeln!(
        out,
        "{} {} in {}: {ready}, PostgreSQL {}, primary {}",
        style.bold("PostgresCluster"),
        style.bold(&s.cluster),
        s.namespace,
        s.postgres_version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "?".into()),
        or_dash(s.primary.clone())
    );
    let _ = writeln!(out, "\n{}", style.bold("Instances"));
    if s.instances.is_empty() {
        out.push_str("  none reported yet\n");
    } else {
        let mut rows = vec![
            [
                "NAME",
                "ROLE",
                "READY",
                "TIMELINE",
                "LSN",
                "LAG",
                "SYNC",
                "DATA USED",
                "RESTART",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for i in &s.instances {
            rows.push(vec![
                i.name.clone(),
                i.role.clone(),
                if i.ready { "yes" } else { "no" }.into(),
                or_dash(i.timeline.map(|t| t.to_string())),
                or_dash(i.lsn.clone()),
                or_dash(i.lag_bytes.map(size)),
                or_dash(i.sync_state.clone()),
                match (i.data_used_bytes, i.data_size_bytes) {
                    (Some(u), Some(t)) => format!("{} / {}", size(u), size(t)),
                    _ => "-".into(),
                },
                if i.pending_restart { "pending" } else { "-" }.into(),
            ]);
        }
        let instances = &s.instances;
        out.push_str(&table(&rows, |r, c, cell| match (r, c) {
            (0, _) => cell.to_string(),
            (_, 1) if instances[r - 1].role == labels::ROLE_PRIMARY => style.bold(cell),
            (_, 2) => style.truth(instances[r - 1].ready, cell),
            (_, 8) if instances[r - 1].pending_restart => style.warn(cell),
            _ => cell.to_string(),
        }));
    }
    let _ = writeln!(
        out,
        "\n{}\n  {}",
        style.bold("Operation"),
        s.operation.clone().unwrap_or_else(|| "none".into())
    );
    let _ = writeln!(
        out,
        "\n{} ({}, {}/{} ready)",
        style.bold("Poolers"),
        or_dash(s.poolers.service.clone()),
        s.poolers.ready_replicas,
        s.poolers.replicas
    );
    if !s.poolers.pods.is_empty() {
        let mut rows = vec![
            ["NAME", "READY", "CLIENTS", "WAITING"]
                .map(String::from)
                .to_vec(),
        ];
        for p in &s.poolers.pods {
            rows.push(vec![
                p.name.clone(),
                if p.ready { "yes" } else { "no" }.into(),
                or_dash(p.clients_active.map(|n| n.to_string())),
                match (&p.clients_waiting, &p.metrics_error) {
                    (Some(n), _) => n.to_string(),
                    (None, Some(e)) => format!("unknown: {e}"),
                    (None, None) => "-".into(),
                },
            ]);
        }
        let pods = &s.poolers.pods;
        out.push_str(&table(&rows, |r, c, cell| match (r, c) {
            (0, _) => cell.to_string(),
            (_, 1) => style.truth(pods[r - 1].ready, cell),
            (_, 3) if pods[r - 1].clients_waiting.unwrap_or(0) > 0 => style.warn(cell),
            _ => cell.to_string(),
        }));
    }
    let _ = writeln!(out, "\n{}", style.bold("Certificates"));
    if s.certificates.is_empty() {
        out.push_str("  none reported yet\n");
    }
    for c in &s.certificates {
        let left = match c.days_left {
            Some(d) if d < 0 => style.bad("expired"),
            Some(d) if d < 7 => style.warn(&format!("in {d} days")),
            Some(d) => format!("in {d} days"),
            None => "?".into(),
        };
        let _ = writeln!(
            out,
            "  {:<7} expires {} ({left})",
            c.certificate, c.not_after
        );
    }
    let _ = writeln!(out, "\n{}", style.bold("Backups"));
    match &s.backups {
        None => out.push_str("  not configured (spec.backup)\n"),
        Some(b) => {
            let lines = [
                ("last good", b.last_successful.clone()),
                ("next", b.next_scheduled.clone()),
                ("recoverable from", b.recoverable_from.clone()),
                ("WAL archived", b.last_archived_wal.clone()),
            ];
            for (what, value) in lines {
                let _ = writeln!(out, "  {what:<16} {}", or_dash(value));
            }
            if let Some(f) = &b.archive_failure {
                let _ = writeln!(out, "  {:<16} {}", "archive failed", style.bad(f));
            }
            if !b.recent.is_empty() {
                let mut rows = vec![
                    ["NAME", "TYPE", "PHASE", "VERIFIED", "FINISHED"]
                        .map(String::from)
                        .to_vec(),
                ];
                for r in &b.recent {
                    rows.push(vec![
                        r.name.clone(),
                        r.r#type.clone(),
                        r.phase.clone(),
                        or_dash(r.verification.clone()),
                        or_dash(r.finished.clone()),
                    ]);
                }
                out.push_str(&table(&rows, |r, c, cell| match (r, c, cell.trim()) {
                    (0, _, _) => cell.to_string(),
                    (_, 2 | 3, "Completed" | "Passed") => style.good(cell),
                    (_, 2 | 3, "Failed") => style.bad(cell),
                    _ => cell.to_string(),
                }));
            }
        }
    }
    if !s.managed.is_empty() {
        let _ = writeln!(out, "\n{}", style.bold("Roles and databases"));
        let mut rows = vec![
            ["KIND", "NAME", "STATE", "MESSAGE"]
                .map(String::from)
                .to_vec(),
        ];
        for m in &s.managed {
            rows.push(vec![
                m.kind.clone(),
                m.name.clone(),
                m.state.clone(),
                m.message.clone(),
            ]);
        }
        out.push_str(&table(&rows, |r, c, cell| match (r, c, cell.trim()) {
            (0, _, _) => cell.to_string(),
            (_, 2, "Applied") => style.good(cell),
            (_, 2, "Failed") => style.bad(cell),
            (_, 2, "Kept" | "Pending") => style.warn(cell),
            _ => cell.to_string(),
        }));
    }
    let _ = writeln!(out, "\n{}", style.bold("Conditions"));
    for c in &s.conditions {
        let state = format!("{}={}", c.r#type, c.status);
        // Degraded and Stalled are bad when True, Reconciling is neither;
        // the others (Ready, WalArchiving, BackupVerified) are good when True.
        let state = match c.r#type.as_str() {
            "Reconciling" => state,
            "Degraded" | "Stalled" => style.truth(c.status == "False", &state),
            _ => style.truth(c.status == "True", &state),
        };
        let _ = writeln!(out, "  {state} {} {}", c.reason, c.message);
    }
    if !s.warnings.is_empty() {
        let _ = writeln!(out, "\n{}", style.bold("Recent warnings"));
        for w in &s.warnings {
            let times = if w.count > 1 {
                format!(" (×{})", w.count)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "  {} {}: {}{times}",
                or_dash(w.last_seen.clone()),
                style.warn(&w.reason),
                w.message
            );
        }
    }
    out
}

pub async fn run(args: Args) -> Result<(), CliError> {
    let session = Session::connect(&args.connection).await?;
    let cluster = session.cluster(&args.cluster).await?;
    let by_cluster = ListParams::default().labels(&format!("{}={}", labels::CLUSTER, args.cluster));
    let pods = session
        .api::<Pod>()
        .list(&by_cluster)
        .await
        .map_err(|e| session.error("listing the cluster's pods", e))?
        .items;
    // Backups and Events are context: without the right to read them the
    // rest of the screen still helps.
    let backups = session
        .api::<PostgresBackup>()
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let events = session
        .api::<Event>()
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=PostgresCluster,involvedObject.name={},type=Warning",
            args.cluster
        )))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let mut metrics = PoolerMetrics::new();
    for pod in pods
        .iter()
        .filter(|p| component(p) == Some(labels::COMPONENT_POOLER) && is_ready(p))
    {
        let name = pod.metadata.name.clone().unwrap_or_default();
        metrics.push((name.clone(), pooler_metrics(&session, &name).await));
    }
    let summary = summarize(
        &cluster,
        &pods,
        &backups,
        &events,
        &metrics,
        jiff::Timestamp::now(),
    );
    let text = match args.output {
        Output::Json => serde_json::to_string_pretty(&summary)
            .map(|t| t + "\n")
            .map_err(|e| CliError::Failed(format!("cannot write JSON: {e}")))?,
        Output::Yaml => serde_saphyr::to_string(&summary)
            .map_err(|e| CliError::Failed(format!("cannot write YAML: {e}")))?,
        Output::Text => {
            use std::io::IsTerminal;
            let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            render(&summary, Style { colour })
        }
    };
    print!("{text}");
    Ok(())
}

/// A pooler pod's `/metrics` through the API server's pod proxy (the
/// agent serves it over TLS to anyone; reaching it needs `pods/proxy`).
async fn pooler_metrics(session: &Session, pod: &str) -> Result<String, String> {
    let path = format!(
        "/api/v1/namespaces/{}/pods/https:{pod}:{}/proxy/metrics",
        session.namespace,
        crate::contract::layout::AGENT_PORT
    );
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    session
        .client
        .request_text(request)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) => s.message,
            other => other.to_string(),
        })
}

#[cfg(test)]
mod tests;
