//! Client load for the HA scenarios and measurements: a writer committing
//! numbered rows (and remembering which commits were acknowledged), a
//! `pgbench` runner with its results parsed, and percentile summaries.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::SimpleQueryMessage;

use crate::E2eError;
use crate::ha::{As, Endpoint, HaCluster, WRITES_TABLE};

/// A commit the server acknowledged.
#[derive(Clone, Debug)]
pub struct Ack {
    pub n: i64,
    /// When the INSERT was sent.
    pub sent: Instant,
    /// When its success arrived.
    pub acked: Instant,
    /// Which PostgreSQL server committed it: its address and postmaster
    /// start time (a restart in place changes the second).
    pub server: String,
}

/// An attempt that failed (`n` is `None` when connecting failed). Whether a
/// failed INSERT committed is unknown, so its number is never reused and
/// never counted as acknowledged.
#[derive(Clone, Debug)]
pub struct Failure {
    pub n: Option<i64>,
    pub at: Instant,
    pub error: String,
}

#[derive(Clone, Debug, Default)]
pub struct WriteLog {
    pub acks: Vec<Ack>,
    pub failures: Vec<Failure>,
}

impl WriteLog {
    /// The first commit sent at or after `t` and acknowledged.
    pub fn first_ack_sent_after(&self, t: Instant) -> Option<&Ack> {
        self.acks.iter().find(|a| a.sent >= t)
    }

    /// The first commit sent at or after `t` by a server other than `server`.
    pub fn first_ack_from_other(&self, t: Instant, server: &str) -> Option<&Ack> {
        self.acks.iter().find(|a| a.sent >= t && a.server != server)
    }

    /// Acknowledged numbers missing from `present`.
    pub fn missing(&self, present: &BTreeSet<i64>) -> Vec<i64> {
        self.acks
            .iter()
            .map(|a| a.n)
            .filter(|n| !present.contains(n))
            .collect()
    }

    /// Acknowledged numbers, in order.
    pub fn acked(&self) -> BTreeSet<i64> {
        self.acks.iter().map(|a| a.n).collect()
    }
}

/// SQL naming the server that runs it: address and postmaster start.
pub const SERVER_IDENTITY: &str =
    "host(inet_server_addr()) || ' ' || pg_postmaster_start_time()::text";

/// Commits `INSERT INTO ha_writes (n)` with n = 1, 2, … one at a time
/// through one connection, reconnecting after any error; every statement
/// and connection attempt is bounded so a frozen server costs at most
/// `op_timeout`. Stops (and its task ends) when dropped.
pub struct Writer {
    log: Arc<Mutex<WriteLog>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

/// Writer settings.
#[derive(Clone, Debug)]
pub struct WriterOptions {
    /// Bound on each connection attempt and each INSERT.
    pub op_timeout: Duration,
    /// Pause between two commits, and after a failure.
    pub pause: Duration,
    /// Numbers start after this one (a second writer on the same table
    /// continues where the first stopped).
    pub start_after: i64,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            op_timeout: Duration::from_secs(2),
            pause: Duration::from_millis(10),
            start_after: 0,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Writer {
    pub fn start(cluster: &HaCluster, endpoint: &Endpoint, options: WriterOptions) -> Writer {
        let log = Arc::new(Mutex::new(WriteLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(write_loop(
            cluster.clone(),
            endpoint.clone(),
            options,
            log.clone(),
            stop.clone(),
        ));
        Writer { log, stop, task }
    }

    pub fn log(&self) -> WriteLog {
        lock(&self.log).clone()
    }

    /// Waits for a commit sent at or after `t` to be acknowledged.
    pub async fn wait_ack_after(&self, t: Instant, timeout: Duration) -> Result<Ack, E2eError> {
        self.wait_ack(|log| log.first_ack_sent_after(t).cloned(), timeout)
            .await
    }

    /// Waits for a commit sent at or after `t` to be acknowledged by a
    /// server other than `server` (another instance, or the same one
    /// restarted).
    pub async fn wait_ack_from_other(
        &self,
        t: Instant,
        server: &str,
        timeout: Duration,
    ) -> Result<Ack, E2eError> {
        self.wait_ack(|log| log.first_ack_from_other(t, server).cloned(), timeout)
            .await
    }

    async fn wait_ack(
        &self,
        find: impl Fn(&WriteLog) -> Option<Ack>,
        timeout: Duration,
    ) -> Result<Ack, E2eError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ack) = find(&lock(&self.log)) {
                return Ok(ack);
            }
            if Instant::now() >= deadline {
                let log = self.log();
                let last = log
                    .failures
                    .last()
                    .map(|f| f.error.clone())
                    .unwrap_or_else(|| "none".into());
                return Err(E2eError::Timeout(
                    format!(
                        "a write through the pooler to succeed again ({} failures since the start, last: {last})",
                        log.failures.len()
                    ),
                    timeout,
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops after the statement in flight and returns the log.
    pub async fn stop(mut self) -> WriteLog {
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(15), &mut self.task).await;
        self.log()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn write_loop(
    cluster: HaCluster,
    endpoint: Endpoint,
    options: WriterOptions,
    log: Arc<Mutex<WriteLog>>,
    stop: Arc<AtomicBool>,
) {
    let mut n = options.start_after;
    let mut conn: Option<tokio_postgres::Client> = None;
    let fail = |n: Option<i64>, error: String| {
        lock(&log).failures.push(Failure {
            n,
            at: Instant::now(),
            error,
        });
    };
    while !stop.load(Ordering::Relaxed) {
        let client = match conn.take().filter(|c| !c.is_closed()) {
            Some(c) => c,
            None => {
                match tokio::time::timeout(options.op_timeout, cluster.connect(&endpoint, As::App))
                    .await
                {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        fail(None, e.to_string());
                        tokio::time::sleep(options.pause).await;
                        continue;
                    }
                    Err(_) => {
                        fail(None, "connect timed out".into());
                        continue;
                    }
                }
            }
        };
        n += 1;
        let sent = Instant::now();
        let insert =
            format!("INSERT INTO {WRITES_TABLE} (n) VALUES ({n}) RETURNING {SERVER_IDENTITY}");
        match tokio::time::timeout(options.op_timeout, client.simple_query(&insert)).await {
            Ok(Ok(messages)) => {
                let acked = Instant::now();
                let server = messages
                    .iter()
                    .find_map(|m| match m {
                        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
                        _ => None,
                    })
                    .unwrap_or_default();
                lock(&log).acks.push(Ack {
                    n,
                    sent,
                    acked,
                    server,
                });
                conn = Some(client);
            }
            Ok(Err(e)) => {
                fail(Some(n), e.to_string());
                if !client.is_closed() {
                    conn = Some(client);
                }
            }
            // The connection is left behind: the statement may still be
            // waiting in it.
            Err(_) => fail(Some(n), "INSERT timed out".into()),
        }
        tokio::time::sleep(options.pause).await;
    }
}

/// Nearest-rank percentile `p` (0–100) of `samples`.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `<what>: n=… p50=… p99=… max=… <unit>`.
pub fn summary(what: &str, unit: &str, samples: &[f64]) -> String {
    match (
        percentile(samples, 50.0),
        percentile(samples, 99.0),
        percentile(samples, 100.0),
    ) {
        (Some(p50), Some(p99), Some(max)) => format!(
            "{what}: n={} p50={p50:.0} p99={p99:.0} max={max:.0} {unit}",
            samples.len()
        ),
        _ => format!("{what}: no samples"),
    }
}

/// The `pgbench` to use: `$CAPSTAN_PGBENCH`, else PostgreSQL 15's from
/// Debian. `None` when it is not installed.
pub fn pgbench_binary() -> Option<PathBuf> {
    let path = std::env::var_os("CAPSTAN_PGBENCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin/pgbench"));
    path.is_file().then_some(path)
}

/// pgbench against one endpoint as the application user, over TLS with the
/// server name verified (`sslmode=verify-full`); the password goes through
/// the environment, never the command line.
pub struct Pgbench {
    binary: PathBuf,
    endpoint: Endpoint,
    dbname: String,
    user: String,
    password: String,
    ca_file: PathBuf,
    work: tempfile::TempDir,
}

/// What one pgbench run reported.
#[derive(Clone, Debug, Default)]
pub struct PgbenchReport {
    /// `number of transactions actually processed`.
    pub processed: u64,
    /// `number of failed transactions` (PostgreSQL 15+ pgbench).
    pub failed: u64,
    /// Clients that gave up (`client N aborted …`).
    pub aborted_clients: u64,
    /// The run ended early (`Run was aborted`) or pgbench exited non-zero.
    pub run_aborted: bool,
    /// Longest transaction in the per-transaction log, in milliseconds.
    pub max_latency_ms: f64,
    /// Error lines pgbench printed (first few).
    pub errors: Vec<String>,
    /// The summary pgbench printed.
    pub output: String,
}

impl Pgbench {
    pub fn new(
        binary: &Path,
        cluster: &HaCluster,
        endpoint: &Endpoint,
    ) -> Result<Pgbench, E2eError> {
        let work = tempfile::Builder::new()
            .prefix("capstan-pgbench-")
            .tempdir()
            .map_err(|e| E2eError::Setup(format!("pgbench work directory: {e}")))?;
        let ca_file = work.path().join("ca.crt");
        std::fs::write(&ca_file, &cluster.ca)
            .map_err(|e| E2eError::Setup(format!("{}: {e}", ca_file.display())))?;
        Ok(Pgbench {
            binary: binary.to_path_buf(),
            endpoint: endpoint.clone(),
            dbname: cluster.dbname.clone(),
            user: cluster.user.clone(),
            password: cluster.password.clone(),
            ca_file,
            work,
        })
    }

    fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.binary);
        let hostaddr: IpAddr = self.endpoint.addr.ip();
        cmd.env("PGHOST", &self.endpoint.host)
            .env("PGHOSTADDR", hostaddr.to_string())
            .env("PGPORT", self.endpoint.addr.port().to_string())
            .env("PGUSER", &self.user)
            .env("PGDATABASE", &self.dbname)
            .env("PGPASSWORD", &self.password)
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", &self.ca_file)
            .env("PGCONNECT_TIMEOUT", "10")
            .current_dir(self.work.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// `pgbench -i -s <scale>`: creates and fills the pgbench tables.
    pub async fn init(&self, scale: u32) -> Result<(), E2eError> {
        let out = self
            .command()
            .args(["-i", "-q", "-s", &scale.to_string()])
            .output()
            .await
            .map_err(|e| E2eError::Setup(format!("{}: {e}", self.binary.display())))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(E2eError::Check(format!(
                "pgbench -i failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Starts `pgbench -c <clients> -j 2 -T <duration>` with the
    /// per-transaction log, in the background.
    pub fn start(&self, clients: u32, duration: Duration) -> Result<RunningPgbench, E2eError> {
        let logs = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(self.work.path())
            .map_err(|e| E2eError::Setup(format!("pgbench log directory: {e}")))?;
        let child = self
            .command()
            .args([
                "-c",
                &clients.to_string(),
                "-j",
                "2",
                "-T",
                &duration.as_secs().max(1).to_string(),
                "-P",
                "1",
                "-l",
                "--log-prefix",
            ])
            .arg(logs.path().join("tx"))
            .spawn()
            .map_err(|e| E2eError::Setup(format!("{}: {e}", self.binary.display())))?;
        Ok(RunningPgbench { child, logs })
    }
}

pub struct RunningPgbench {
    child: tokio::process::Child,
    logs: tempfile::TempDir,
}

impl RunningPgbench {
    /// Waits for the end of the run (bounded by `timeout`) and parses it.
    pub async fn finish(self, timeout: Duration) -> Result<PgbenchReport, E2eError> {
        let RunningPgbench { child, logs } = self;
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| E2eError::Timeout("pgbench to finish".into(), timeout))?
            .map_err(|e| E2eError::Check(format!("pgbench: {e}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut report = parse_pgbench(&stdout, &stderr);
        report.run_aborted |= !out.status.success();
        report.max_latency_ms = max_logged_latency_ms(logs.path())?;
        Ok(report)
    }
}

fn number_after(line: &str, prefix: &str) -> Option<u64> {
    let digits: String = line
        .strip_prefix(prefix)?
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The counts pgbench's summary (stdout) and errors (stderr) give.
pub fn parse_pgbench(stdout: &str, stderr: &str) -> PgbenchReport {
    let mut report = PgbenchReport {
        output: stdout.to_string(),
        ..PgbenchReport::default()
    };
    for line in stdout.lines() {
        if let Some(n) = number_after(line, "number of transactions actually processed:") {
            report.processed = n;
        }
        if let Some(n) = number_after(line, "number of failed transactions:") {
            report.failed = n;
        }
    }
    for line in stderr.lines().filter(|l| !l.starts_with("progress:")) {
        if line.contains("client") && line.contains("aborted") {
            report.aborted_clients += 1;
        }
        if line.contains("Run was aborted") {
            report.run_aborted = true;
        }
        if line.contains("error") && report.errors.len() < 10 {
            report.errors.push(line.to_string());
        }
    }
    report
}

/// Longest transaction in pgbench's per-transaction logs (`-l`): lines
/// `client_id transaction_no time script_no time_epoch time_us`, `time` in
/// microseconds (or `failed`/`skipped`).
pub fn max_logged_latency_ms(dir: &Path) -> Result<f64, E2eError> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| E2eError::Check(format!("{}: {e}", dir.display())))?;
    let mut max_us = 0u64;
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            if let Some(us) = line
                .split_whitespace()
                .nth(2)
                .and_then(|t| t.parse::<u64>().ok())
            {
                max_us = max_us.max(us);
            }
        }
    }
    Ok(max_us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), Some(10.0));
        assert_eq!(percentile(&samples, 99.0), Some(20.0));
        assert_eq!(percentile(&samples, 100.0), Some(20.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
    }

    #[test]
    fn parses_a_clean_run() {
        let stdout = "transaction type: <builtin: TPC-B (sort of)>\nscaling factor: 1\nnumber of clients: 8\nnumber of threads: 2\nmaximum number of tries: 1\nduration: 20 s\nnumber of transactions actually processed: 12345\nnumber of failed transactions: 0 (0.000%)\nlatency average = 12.9 ms\n";
        let stderr = "progress: 1.0 s, 600.0 tps, lat 13.1 ms stddev 4.0, 0 failed\n";
        let r = parse_pgbench(stdout, stderr);
        assert_eq!(r.processed, 12345);
        assert_eq!(r.failed, 0);
        assert_eq!(r.aborted_clients, 0);
        assert!(!r.run_aborted);
        assert!(r.errors.is_empty());
    }

    #[test]
    fn counts_aborted_clients_and_failures() {
        let stdout = "number of transactions actually processed: 700/800\nnumber of failed transactions: 3 (0.4%)\n";
        let stderr = "pgbench: error: client 3 aborted in command 4 (SQL) of script 0; perhaps the backend died while processing\npgbench: error: client 5 aborted in command 8 (SQL) of script 0; FATAL:  terminating connection\npgbench: error: Run was aborted; the above results are incomplete.\n";
        let r = parse_pgbench(stdout, stderr);
        assert_eq!(r.processed, 700);
        assert_eq!(r.failed, 3);
        assert_eq!(r.aborted_clients, 2);
        assert!(r.run_aborted);
        assert_eq!(r.errors.len(), 3);
    }

    #[test]
    fn reads_the_longest_logged_transaction() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tx.100"),
            "0 1 1500 0 1700000000 1\n1 1 failed 0 1700000000 2\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("tx.100.1"), "2 7 273000 0 1700000001 5\n").unwrap();
        assert_eq!(max_logged_latency_ms(dir.path()).unwrap(), 273.0);
    }
}
