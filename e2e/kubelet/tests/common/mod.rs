//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod fake_api;
pub mod scenarios;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use capstan_e2e_kubelet::{
    Cidr, ImageTable, KubeletConfig, MemoryObjects, PodEvent, RestartBackoff, Runtime,
};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use tokio::sync::mpsc;

/// The tests need root (mount namespaces, setuid) and a cgroup2 hierarchy.
pub fn privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: needs root (mount namespaces, cgroups, setuid)");
        return false;
    }
    if !std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .contains(" - cgroup2 ")
    {
        eprintln!("skipping: no cgroup2 hierarchy mounted");
        return false;
    }
    true
}

pub fn nft_available() -> bool {
    let ok = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("skipping: the nft tool (nftables) is not installed");
    }
    ok
}

static NEXT_RANGE: AtomicU8 = AtomicU8::new(1);
static HELD: std::sync::Mutex<Vec<std::net::TcpListener>> = std::sync::Mutex::new(Vec::new());

/// A /24 of the pod and Service ranges no other kubelet uses, also across
/// test processes (nextest): the range is held by a listening socket on its
/// last address, kept until the process exits.
pub fn ranges() -> (Cidr, Cidr) {
    loop {
        let n = NEXT_RANGE.fetch_add(1, Ordering::Relaxed);
        assert!(n < 250, "out of test address ranges");
        if let Ok(l) = std::net::TcpListener::bind((format!("127.20.{n}.255"), 26999)) {
            HELD.lock().unwrap().push(l);
            return (
                format!("127.20.{n}.0/24").parse().unwrap(),
                format!("127.21.{n}.0/24").parse().unwrap(),
            );
        }
    }
}

pub fn config(state: &std::path::Path) -> KubeletConfig {
    let (pods, services) = ranges();
    let images = ImageTable::capstan_defaults("/nonexistent/capstan").with_host_image("debian");
    let mut config = KubeletConfig::new(state, pods, services, images);
    config.backoff = RestartBackoff {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(4),
        reset_after: Duration::from_secs(600),
    };
    config
}

pub struct Node {
    pub rt: Runtime,
    pub objects: Arc<MemoryObjects>,
    pub events: mpsc::UnboundedReceiver<PodEvent>,
    // Dropped last: the runtime removes its processes first.
    pub dir: tempfile::TempDir,
}

pub fn node() -> Node {
    node_with(|_| {})
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

pub fn node_with(adjust: impl FnOnce(&mut KubeletConfig)) -> Node {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    adjust(&mut cfg);
    let objects = Arc::new(MemoryObjects::new());
    let (rt, events) = Runtime::new(cfg, objects.clone()).unwrap();
    Node {
        rt,
        objects,
        events,
        dir,
    }
}

pub fn pod(value: serde_json::Value) -> Pod {
    let mut pod: Pod = serde_json::from_value(value).unwrap();
    if pod.metadata.uid.is_none() {
        pod.metadata.uid = Some(format!("uid-{}", rand_suffix()));
    }
    if pod.metadata.namespace.is_none() {
        pod.metadata.namespace = Some("ns".to_string());
    }
    pod
}

pub fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{}", t & 0xffffff, N.fetch_add(1, Ordering::Relaxed))
}

/// Polls `f` until it returns `Some`, failing the test after `secs` seconds.
pub async fn eventually<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Async variant of [`eventually`].
pub async fn eventually_async<T, F: Future<Output = Option<T>>>(
    what: &str,
    secs: u64,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn condition(status: &PodStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

pub fn ready(status: &PodStatus) -> bool {
    condition(status, "Ready")
}

pub fn phase(status: &PodStatus) -> &str {
    status.phase.as_deref().unwrap_or_default()
}

/// Waits for the pod's status to satisfy `pred`.
pub async fn wait_status(
    node: &Node,
    ns: &str,
    name: &str,
    what: &str,
    secs: u64,
    pred: impl Fn(&PodStatus) -> bool,
) -> PodStatus {
    let fut = node.rt.wait_status(ns, name, pred);
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(Some(s)) => s,
        Ok(None) => panic!("pod {ns}/{name} disappeared while waiting for {what}"),
        Err(_) => panic!(
            "timed out after {secs}s waiting for {what}; last status: {:#?}\nlogs:\n{}",
            node.rt.status(ns, name),
            all_logs(node, ns, name)
        ),
    }
}

/// Waits for `Terminated` of the pod on the event stream.
pub async fn wait_terminated(node: &mut Node, name: &str, secs: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, node.events.recv()).await {
            Ok(Some(PodEvent::Terminated { name: n, .. })) if n == name => return,
            Ok(Some(_)) => {}
            Ok(None) => panic!("event stream closed"),
            Err(_) => panic!("timed out after {secs}s waiting for pod {name} to terminate"),
        }
    }
}

/// Marks the pod deleted with `grace` seconds, as the API server would.
pub fn deleted(mut pod: Pod, grace: i64) -> Pod {
    pod.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        jiff::Timestamp::now(),
    ));
    pod.metadata.deletion_grace_period_seconds = Some(grace);
    pod
}

/// Every log file of the pod, for failure messages.
pub fn all_logs(node: &Node, ns: &str, name: &str) -> String {
    let Some(dir) = node.rt.pod_dir(ns, name) else {
        return "(no pod dir)".into();
    };
    let mut out = String::new();
    for c in std::fs::read_dir(dir.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in std::fs::read_dir(c.path()).into_iter().flatten().flatten() {
            out.push_str(&format!(
                "== {}\n{}\n",
                f.path().display(),
                std::fs::read_to_string(f.path()).unwrap_or_default()
            ));
        }
    }
    out
}
