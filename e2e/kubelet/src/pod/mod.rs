//! One task per pod: sets up its sandbox (address, cgroup, hosts file,
//! volumes), runs init containers in order and then the containers, probes
//! them, restarts them with back-off, reports status, and terminates the pod
//! gracefully when it is deleted.

mod container;
pub(crate) mod status;
mod termination;

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, HostIP, Pod, PodIP, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::dns::{HostsIdentity, write_in_place};
use crate::downward::PodFacts;
use crate::probe::{ProbeKind, ProbeTarget, Transition};
use crate::runtime::{LiveContainer, PodEvent, PodShared, RuntimeHandle};
use crate::sys::Signal;
use crate::sys::cgroup::Cgroup;
use crate::volumes::{self, Volume, VolumeInputs};
use status::{Conditions, CtrState, Term};

/// Identifies a container of the pod: init or regular, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CtrId {
    init: bool,
    index: usize,
}

pub(crate) enum Msg {
    Exited {
        id: CtrId,
        instance: u64,
        status: Option<ExitStatus>,
    },
    Probe {
        id: CtrId,
        instance: u64,
        transition: Transition,
    },
}

/// A container's live process.
struct Running {
    instance: u64,
    pid: i32,
    cgroup: Cgroup,
    started_at: Instant,
    started_wall: Time,
    container_id: String,
    target: Arc<ProbeTarget>,
    probes: Vec<AbortHandle>,
    /// SIGTERM sent; SIGKILL at this time.
    stop_deadline: Option<Instant>,
    killed: bool,
}

struct Ctr {
    spec: Container,
    state: CtrState,
    last: Option<Term>,
    run: Option<Running>,
    /// Number of times a process was started.
    runs: i32,
    ready: bool,
    started: bool,
    /// Pending (re)start at this time.
    next_start: Option<Instant>,
    backoff: Option<Duration>,
    /// Init containers: completed successfully.
    succeeded: bool,
}

impl Ctr {
    fn new(spec: Container, waiting: &str) -> Self {
        Ctr {
            spec,
            state: CtrState::waiting(waiting, None),
            last: None,
            run: None,
            runs: 0,
            ready: false,
            started: false,
            next_start: Some(Instant::now()),
            backoff: None,
            succeeded: false,
        }
    }

    fn restart_count(&self) -> i32 {
        (self.runs - 1).max(0)
    }

    /// The kubelet's crash back-off: immediate first restart, then `initial`
    /// doubling up to `max`; reset after running `reset_after`.
    fn next_delay(&mut self, ran_for: Duration, cfg: &crate::config::RestartBackoff) -> Duration {
        if ran_for >= cfg.reset_after {
            self.backoff = None;
        }
        match self.backoff {
            None => {
                self.backoff = Some(cfg.initial);
                Duration::ZERO
            }
            Some(d) => {
                self.backoff = Some((d * 2).min(cfg.max));
                d
            }
        }
    }
}

struct Sandbox {
    dir: PathBuf,
    cgroup: Cgroup,
    hosts: PathBuf,
    service_account: Option<PathBuf>,
    fs_group: Option<u32>,
    /// `None` until every volume could be set up.
    volumes: Option<BTreeMap<String, Volume>>,
}

struct Termination {
    deadline: Instant,
    /// Confirm the deletion through the API when done (not when the pod
    /// already disappeared from it).
    confirm: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

pub(crate) struct Worker {
    rt: RuntimeHandle,
    shared: Arc<Mutex<PodShared>>,
    pod: Pod,
    uid: String,
    namespace: String,
    name: String,
    pod_rx: watch::Receiver<Pod>,
    removed_rx: watch::Receiver<bool>,
    objects_rx: watch::Receiver<u64>,
    dns_rx: watch::Receiver<u64>,
    status_tx: watch::Sender<PodStatus>,
    msg_tx: mpsc::UnboundedSender<Msg>,
    msg_rx: mpsc::UnboundedReceiver<Msg>,
    start_time: Time,
    ip: Option<Ipv4Addr>,
    sandbox: Option<Sandbox>,
    setup_error: Option<String>,
    next_setup: Option<Instant>,
    init: Vec<Ctr>,
    main: Vec<Ctr>,
    conditions: Conditions,
    terminal: Option<Phase>,
    termination: Option<Termination>,
    next_instance: u64,
}

fn lock(shared: &Mutex<PodShared>) -> std::sync::MutexGuard<'_, PodShared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl Worker {
    pub(crate) fn new(
        rt: RuntimeHandle,
        pod: Pod,
        shared: Arc<Mutex<PodShared>>,
        pod_rx: watch::Receiver<Pod>,
        removed_rx: watch::Receiver<bool>,
        status_tx: watch::Sender<PodStatus>,
    ) -> Self {
        let spec = pod.spec.clone().unwrap_or_default();
        let has_init = spec.init_containers.as_ref().is_some_and(|i| !i.is_empty());
        let waiting = if has_init {
            "PodInitializing"
        } else {
            "ContainerCreating"
        };
        let init = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| Ctr::new(c.clone(), "PodInitializing"))
            .collect();
        let main = spec
            .containers
            .iter()
            .map(|c| Ctr::new(c.clone(), waiting))
            .collect();
        let (msg_tx, msg_rx) = mpsc::unbounded_channel();
        let objects_rx = rt.inner.objects_gen.subscribe();
        let dns_rx = rt.inner.dns_gen.subscribe();
        Worker {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            rt,
            shared,
            pod,
            pod_rx,
            removed_rx,
            objects_rx,
            dns_rx,
            status_tx,
            msg_tx,
            msg_rx,
            start_time: status::now(),
            ip: None,
            sandbox: None,
            setup_error: None,
            next_setup: Some(Instant::now()),
            init,
            main,
            conditions: Conditions::default(),
            terminal: None,
            termination: None,
            next_instance: 0,
        }
    }

    fn simulated(&self) -> bool {
        self.rt.inner.config.runs_simulated(&self.pod)
    }

    fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    fn grace_period(&self) -> Duration {
        let meta = self.pod.metadata.deletion_grace_period_seconds;
        let spec = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds);
        Duration::from_secs(meta.or(spec).unwrap_or(30).max(0) as u64)
    }

    fn ctr(&mut self, id: CtrId) -> &mut Ctr {
        if id.init {
            &mut self.init[id.index]
        } else {
            &mut self.main[id.index]
        }
    }

    fn ids(&self) -> Vec<CtrId> {
        (0..self.init.len())
            .map(|index| CtrId { init: true, index })
            .chain((0..self.main.len()).map(|index| CtrId { init: false, index }))
            .collect()
    }

    fn init_done(&self) -> bool {
        self.init.iter().all(|c| c.succeeded)
    }

    fn facts(&self) -> PodFacts<'_> {
        PodFacts {
            pod: &self.pod,
            pod_ip: self.ip,
            host_ip: self.rt.inner.config.node_ip,
            node_name: &self.rt.inner.config.node_name,
            node_cpus: self.rt.inner.node_cpus,
            node_memory: self.rt.inner.node_memory,
        }
    }

    pub(crate) async fn run(mut self) {
        self.publish();
        if self.pod.metadata.deletion_timestamp.is_none() && self.simulated() {
            return self.run_simulated().await;
        }
        loop {
            if self.pod.metadata.deletion_timestamp.is_some() && self.termination.is_none() {
                let grace = self.grace_period();
                self.begin_termination(grace, true);
            }
            if self.termination.is_some()
                && self.main.iter().chain(&self.init).all(|c| c.run.is_none())
            {
                break;
            }
            self.reconcile();
            self.publish();
            let wake = self
                .next_wakeup()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                Some(msg) = self.msg_rx.recv() => self.on_msg(msg).await,
                changed = self.pod_rx.changed() => match changed {
                    Ok(()) => self.on_pod_update(),
                    Err(_) => self.begin_termination(Duration::ZERO, false),
                },
                _ = self.removed_rx.changed() => self.begin_termination(Duration::ZERO, false),
                _ = self.objects_rx.changed() => self.on_objects_changed(),
                _ = self.dns_rx.changed() => self.write_hosts(),
                _ = tokio::time::sleep_until(wake) => self.on_timer(),
            }
        }
        self.finish().await;
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let mut times: Vec<Instant> = Vec::new();
        if self.sandbox.as_ref().is_none_or(|s| s.volumes.is_none()) {
            times.extend(self.next_setup);
        }
        for c in self.init.iter().chain(&self.main) {
            times.extend(c.next_start);
            if let Some(r) = &c.run
                && !r.killed
            {
                times.extend(r.stop_deadline);
            }
        }
        if let Some(t) = &self.termination {
            times.push(t.deadline);
        }
        times.into_iter().min()
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        for id in self.ids() {
            if let Some(r) = &mut self.ctr(id).run
                && !r.killed
                && r.stop_deadline.is_some_and(|d| d <= now)
            {
                r.killed = true;
                r.cgroup.kill();
            }
        }
    }

    fn on_pod_update(&mut self) {
        let new = self.pod_rx.borrow_and_update().clone();
        let labels_changed = new.metadata.labels != self.pod.metadata.labels
            || new.metadata.annotations != self.pod.metadata.annotations;
        let old_images: Vec<Option<String>> =
            self.main.iter().map(|c| c.spec.image.clone()).collect();
        self.pod = new;
        if let Some(t) = &self.termination {
            // A shorter grace period (e.g. a forced delete) cuts the wait.
            let deadline = Instant::now() + self.grace_period();
            if self.pod.metadata.deletion_timestamp.is_some() && deadline < t.deadline {
                let grace = self.grace_period();
                self.begin_termination(grace, true);
            }
            return;
        }
        // An image change restarts the container with the new image.
        let specs: Vec<Container> = self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.containers.clone())
            .collect();
        for (index, spec) in specs.into_iter().enumerate() {
            if index < self.main.len() && old_images[index] != spec.image {
                self.main[index].spec = spec;
                let id = CtrId { init: false, index };
                if self.main[index].run.is_some() {
                    let grace = self.grace_period();
                    self.stop(id, grace, "image changed");
                }
                self.main[index].next_start = Some(Instant::now());
            }
        }
        if labels_changed {
            self.sync_volumes();
        }
    }

    fn on_objects_changed(&mut self) {
        self.objects_rx.borrow_and_update();
        self.sync_volumes();
        // Containers waiting for a Secret/ConfigMap retry now.
        let now = Instant::now();
        for id in self.ids() {
            let c = self.ctr(id);
            if matches!(&c.state, CtrState::Waiting { reason, .. } if reason == "CreateContainerConfigError")
            {
                c.next_start = Some(now);
            }
        }
        if self.setup_error.is_some() {
            self.next_setup = Some(now);
        }
    }

    /// Starts whatever is due: the sandbox, the next init container, or the
    /// containers (after init).
    fn reconcile(&mut self) {
        if self.termination.is_some() || self.terminal.is_some() {
            return;
        }
        let now = Instant::now();
        if self.sandbox.as_ref().is_none_or(|s| s.volumes.is_none()) {
            if self.next_setup.is_some_and(|t| t <= now) {
                self.setup();
            }
            if self.sandbox.as_ref().is_none_or(|s| s.volumes.is_none()) {
                return;
            }
        }
        for index in 0..self.init.len() {
            if self.init[index].succeeded {
                continue;
            }
            if self.init[index].run.is_none()
                && self.init[index].next_start.is_some_and(|t| t <= now)
            {
                self.start(CtrId { init: true, index });
            }
            return;
        }
        for index in 0..self.main.len() {
            if self.main[index].run.is_none()
                && self.main[index].next_start.is_some_and(|t| t <= now)
            {
                self.start(CtrId { init: false, index });
            }
        }
    }

    // ---- sandbox ----

    fn setup(&mut self) {
        match self.try_setup() {
            Ok(()) => {
                self.setup_error = None;
                self.next_setup = None;
            }
            Err(why) => {
                tracing::info!(namespace = %self.namespace, pod = %self.name, %why, "pod sandbox not ready");
                self.setup_error = Some(why);
                self.next_setup = Some(Instant::now() + Duration::from_secs(1));
            }
        }
    }

    fn try_setup(&mut self) -> Result<(), String> {
        if self.sandbox.is_none() {
            let group = self
                .rt
                .inner
                .cgroup
                .as_ref()
                .map_err(|why| format!("cannot run processes: {why}"))?;
            let ip = match self.ip {
                Some(ip) => ip,
                None => self.rt.allocate_pod_ip().map_err(|e| e.to_string())?,
            };
            self.ip = Some(ip);
            let dir = self
                .rt
                .inner
                .config
                .state_dir
                .join("pods")
                .join(format!("{}_{}_{}", self.namespace, self.name, self.uid));
            fs::create_dir_all(dir.join("volumes"))
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let cgroup = group.child(&self.uid).map_err(|e| e.to_string())?;
            if let Err(e) = self.rt.inner.network.add_pod(ip, &cgroup) {
                tracing::warn!(error = %e, "pod connections keep the kernel's source address");
            }
            let fs_group = self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.security_context.as_ref())
                .and_then(|sc| sc.fs_group)
                .map(|g| self.rt.inner.config.ids.map_gid(g));
            {
                let mut shared = lock(&self.shared);
                shared.ip = Some(ip);
                shared.dir = Some(dir.clone());
            }
            self.sandbox = Some(Sandbox {
                hosts: dir.join("hosts"),
                service_account: None,
                dir,
                cgroup,
                fs_group,
                volumes: None,
            });
            self.write_hosts();
        }
        self.sync_volumes();
        match &self.setup_error {
            Some(e) if self.sandbox.as_ref().is_some_and(|s| s.volumes.is_none()) => Err(e.clone()),
            _ => Ok(()),
        }
    }

    fn write_hosts(&mut self) {
        self.dns_rx.borrow_and_update();
        let (Some(sb), Some(ip)) = (&self.sandbox, self.ip) else {
            return;
        };
        let spec = self.pod.spec.as_ref();
        let hostname = spec
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| self.name.clone());
        let subdomain = spec.and_then(|s| s.subdomain.clone());
        let content = self.rt.inner.resolver.table().hosts_file(&HostsIdentity {
            namespace: &self.namespace,
            hostname: &hostname,
            subdomain: subdomain.as_deref(),
            ip: IpAddr::V4(ip),
        });
        if let Err(e) = write_in_place(&sb.hosts, &content) {
            tracing::warn!(error = %e, "cannot write the pod's hosts file");
        }
    }

    /// Creates or refreshes the pod's volumes and service account files.
    fn sync_volumes(&mut self) {
        let Some(sb) = &self.sandbox else { return };
        let claims_dir = self.rt.inner.config.state_dir.join("claims");
        let volumes_dir = sb.dir.join("volumes");
        let config = &self.rt.inner.config;
        let sa_files = config
            .api_server
            .as_ref()
            .map(|a| volumes::ServiceAccountFiles {
                token: a.token.clone(),
                ca_crt: a.ca_crt.clone(),
            });
        let inputs = VolumeInputs {
            facts: self.facts(),
            objects: self.rt.inner.objects.as_ref(),
            pod_volumes_dir: &volumes_dir,
            claims_dir: &claims_dir,
            fs_group: sb.fs_group,
            service_account: sa_files.as_ref(),
            token_requests: config.token_requests,
            mounting: sb.volumes.is_none(),
        };
        let result = volumes::sync(&inputs);
        let sa_dir = sb.dir.join("serviceaccount");
        // With token requests, the pod's own volumes carry its token (the
        // API server's admission injects them); the kubelet adds nothing.
        let automount = !self.rt.inner.config.token_requests
            && self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.automount_service_account_token)
                != Some(false);
        let sa = match &sa_files {
            Some(files) if automount => {
                match volumes::sync_service_account(&sa_dir, files, &self.namespace, sb.fs_group) {
                    Ok(()) => Some(sa_dir),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot write service account files");
                        None
                    }
                }
            }
            _ => None,
        };
        let Some(sb) = &mut self.sandbox else { return };
        sb.service_account = sa;
        match result {
            Ok(v) => {
                let claims: Vec<(String, String)> =
                    v.values().filter_map(|v| v.claim.clone()).collect();
                lock(&self.shared).claims = claims;
                sb.volumes = Some(v);
                self.setup_error = None;
            }
            Err(e) => {
                // Already running containers keep their mounts; new ones wait.
                if sb.volumes.is_none() {
                    self.setup_error = Some(e.to_string());
                } else {
                    tracing::warn!(error = %e, "cannot refresh volumes");
                }
            }
        }
    }

    // ---- containers ----

    fn spawn_probe(
        &self,
        id: CtrId,
        instance: u64,
        kind: ProbeKind,
        target: &Arc<ProbeTarget>,
        started_at: Instant,
    ) -> Option<AbortHandle> {
        let spec = if id.init {
            &self.init[id.index].spec
        } else {
            &self.main[id.index].spec
        };
        let probe = match kind {
            ProbeKind::Startup => spec.startup_probe.clone(),
            ProbeKind::Liveness => spec.liveness_probe.clone(),
            ProbeKind::Readiness => spec.readiness_probe.clone(),
        }?;
        let tx = self.msg_tx.clone();
        let target = target.clone();
        let task = tokio::spawn(crate::probe::probe_loop(
            kind,
            probe,
            target,
            started_at,
            move |transition| {
                let _ = tx.send(Msg::Probe {
                    id,
                    instance,
                    transition,
                });
            },
        ));
        Some(task.abort_handle())
    }

    async fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Exited {
                id,
                instance,
                status,
            } => self.on_exit(id, instance, status).await,
            Msg::Probe {
                id,
                instance,
                transition,
            } => self.on_probe(id, instance, transition),
        }
    }

    fn on_probe(&mut self, id: CtrId, instance: u64, transition: Transition) {
        let current = self.ctr(id).run.as_ref().map(|r| r.instance);
        if current != Some(instance) || self.termination.is_some() {
            return;
        }
        let name = self.ctr(id).spec.name.clone();
        match transition {
            Transition::Ready(ready) => {
                let c = self.ctr(id);
                if c.started {
                    c.ready = ready;
                }
            }
            Transition::StartupSucceeded => {
                let (target, started_at) = {
                    let Some(r) = &self.ctr(id).run else { return };
                    (r.target.clone(), r.started_at)
                };
                let mut handles = Vec::new();
                handles.extend(self.spawn_probe(
                    id,
                    instance,
                    ProbeKind::Liveness,
                    &target,
                    started_at,
                ));
                handles.extend(self.spawn_probe(
                    id,
                    instance,
                    ProbeKind::Readiness,
                    &target,
                    started_at,
                ));
                let c = self.ctr(id);
                c.started = true;
                c.ready = c.spec.readiness_probe.is_none();
                if let Some(r) = &mut c.run {
                    r.probes.extend(handles);
                }
            }
            Transition::StartupFailed(why) | Transition::LivenessFailed(why) => {
                tracing::info!(namespace = %self.namespace, pod = %self.name, container = %name, %why, "probe failed, container will be restarted");
                let grace = self.grace_period();
                self.stop(id, grace, "probe failure");
            }
        }
    }

    /// SIGTERM now (after the preStop hook), SIGKILL after `grace`.
    fn stop(&mut self, id: CtrId, grace: Duration, why: &str) {
        let deadline = Instant::now() + grace;
        let hook = self
            .ctr(id)
            .spec
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.clone());
        let c = self.ctr(id);
        c.ready = false;
        let Some(r) = &mut c.run else { return };
        if let Some(existing) = r.stop_deadline {
            r.stop_deadline = Some(existing.min(deadline));
            if grace.is_zero() && !r.killed {
                r.killed = true;
                r.cgroup.kill();
            }
            return;
        }
        tracing::debug!(container = %c.spec.name, %why, grace_s = grace.as_secs(), "stopping container");
        for p in r.probes.drain(..) {
            p.abort();
        }
        r.stop_deadline = Some(deadline);
        if grace.is_zero() {
            r.killed = true;
            r.cgroup.kill();
            return;
        }
        let pid = r.pid;
        match hook {
            Some(hook) => {
                let target = r.target.clone();
                tokio::spawn(async move {
                    crate::probe::run_hook(&hook, grace, &target).await;
                    let _ = crate::sys::send_signal(pid, Signal::TERM);
                });
            }
            None => {
                let _ = crate::sys::send_signal(pid, Signal::TERM);
            }
        }
    }

    async fn on_exit(&mut self, id: CtrId, instance: u64, status: Option<ExitStatus>) {
        let Some(run) = self.ctr(id).run.take_if(|r| r.instance == instance) else {
            return;
        };
        for p in &run.probes {
            p.abort();
        }
        // Like a container's PID 1 exiting: everything else in it dies too.
        if !run.cgroup.kill_and_wait(Duration::from_secs(10)).await {
            tracing::warn!(container = %self.ctr(id).spec.name, "processes survived SIGKILL");
        }
        run.cgroup.remove();
        let name = self.ctr(id).spec.name.clone();
        lock(&self.shared).containers.remove(&name);
        let signal = status.and_then(|s| s.signal());
        let exit_code = status
            .and_then(|s| s.code())
            .unwrap_or(128 + signal.unwrap_or(libc::SIGKILL));
        let (spec, runs) = {
            let c = self.ctr(id);
            (c.spec.clone(), c.runs)
        };
        let message = self.sandbox.as_ref().and_then(|sb| {
            let log = crate::runtime::log_path(&sb.dir, &name, (runs - 1).max(0));
            termination::message(&sb.dir, &spec, exit_code, &log)
        });
        let term = Term {
            exit_code,
            signal,
            reason: if exit_code == 0 { "Completed" } else { "Error" }.to_string(),
            message,
            started: run.started_wall,
            finished: status::now(),
            container_id: run.container_id,
        };
        tracing::info!(namespace = %self.namespace, pod = %self.name, container = %name, exit_code, "container exited");
        self.after_exit(id, term, run.started_at.elapsed());
    }

    /// Records a finished run and decides whether and when it runs again.
    fn after_exit(&mut self, id: CtrId, term: Term, ran_for: Duration) {
        let policy = self.restart_policy().to_string();
        let backoff = self.rt.inner.config.backoff;
        let terminating = self.termination.is_some();
        let pod_ref = format!("{}_{}({})", self.name, self.namespace, self.uid);
        let c = self.ctr(id);
        c.ready = false;
        c.started = false;
        let success = term.exit_code == 0;
        if terminating {
            c.state = CtrState::Terminated(term);
            return;
        }
        if id.init && success {
            c.succeeded = true;
            c.state = CtrState::Terminated(term);
            return;
        }
        let restart = match policy.as_str() {
            "Never" => false,
            "OnFailure" => !success,
            _ => true,
        };
        if !restart {
            c.state = CtrState::Terminated(term);
            if id.init {
                self.terminal = Some(Phase::Failed);
            }
            return;
        }
        let delay = c.next_delay(ran_for, &backoff);
        c.next_start = Some(Instant::now() + delay);
        if delay.is_zero() {
            c.state = CtrState::Terminated(term.clone());
        } else {
            c.state = CtrState::waiting(
                "CrashLoopBackOff",
                Some(format!(
                    "back-off {}s restarting failed container={} pod={pod_ref}",
                    delay.as_secs(),
                    c.spec.name
                )),
            );
        }
        c.last = Some(term);
    }

    /// The container could not be started: wait (config errors) or count it
    /// as a failed run (start errors), as the kubelet does.
    fn start_failed(&mut self, id: CtrId, failure: container::StartFailure) {
        let now = Instant::now();
        match failure {
            container::StartFailure::Waiting {
                reason,
                message,
                retry,
            } => {
                let c = self.ctr(id);
                let reason = if reason == "ErrImagePull"
                    && c.state == CtrState::waiting("ErrImagePull", Some(message.clone()))
                {
                    "ImagePullBackOff"
                } else {
                    reason
                };
                tracing::info!(container = %c.spec.name, reason, %message, "container cannot start");
                c.state = CtrState::waiting(reason, Some(message));
                c.next_start = Some(now + retry);
            }
            container::StartFailure::Run(message) => {
                tracing::info!(container = %self.ctr(id).spec.name, %message, "container failed to start");
                let t = status::now();
                let term = Term {
                    exit_code: 128,
                    signal: None,
                    reason: "StartError".to_string(),
                    message: Some(message),
                    started: t.clone(),
                    finished: t,
                    container_id: String::new(),
                };
                self.after_exit(id, term, Duration::ZERO);
            }
        }
    }

    fn start(&mut self, id: CtrId) {
        self.ctr(id).next_start = None;
        let instance = self.next_instance;
        self.next_instance += 1;
        let prepared = match self.prepare(id) {
            Ok(p) => p,
            Err(f) => return self.start_failed(id, f),
        };
        let runs = self.ctr(id).runs + 1;
        self.ctr(id).runs = runs;
        let name = self.ctr(id).spec.name.clone();
        let spawned = match prepared.launch(instance, runs - 1) {
            Ok(s) => s,
            Err(f) => return self.start_failed(id, f),
        };
        let container::Launched {
            mut child,
            pid,
            cgroup,
            target,
            container_id,
        } = spawned;
        tracing::info!(namespace = %self.namespace, pod = %self.name, container = %name, pid, "container started");
        let tx = self.msg_tx.clone();
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            let _ = tx.send(Msg::Exited {
                id,
                instance,
                status,
            });
        });
        lock(&self.shared).containers.insert(
            name,
            LiveContainer {
                pid,
                cgroup: cgroup.clone(),
            },
        );
        let frozen = lock(&self.shared).frozen;
        if frozen {
            cgroup.signal(Signal::STOP);
        }
        let started_at = Instant::now();
        let target = Arc::new(target);
        let has_startup = self.ctr(id).spec.startup_probe.is_some();
        let mut probes = Vec::new();
        if !id.init {
            if has_startup {
                probes.extend(self.spawn_probe(
                    id,
                    instance,
                    ProbeKind::Startup,
                    &target,
                    started_at,
                ));
            } else {
                probes.extend(self.spawn_probe(
                    id,
                    instance,
                    ProbeKind::Liveness,
                    &target,
                    started_at,
                ));
                probes.extend(self.spawn_probe(
                    id,
                    instance,
                    ProbeKind::Readiness,
                    &target,
                    started_at,
                ));
            }
        }
        let now = status::now();
        let c = self.ctr(id);
        c.started = !has_startup || id.init;
        c.ready = !id.init && !has_startup && c.spec.readiness_probe.is_none();
        c.state = CtrState::Running { since: now.clone() };
        c.run = Some(Running {
            instance,
            pid,
            cgroup,
            started_at,
            started_wall: now,
            container_id,
            target,
            probes,
            stop_deadline: None,
            killed: false,
        });
    }

    // ---- termination ----

    fn begin_termination(&mut self, grace: Duration, confirm: bool) {
        let deadline = Instant::now() + grace;
        match &mut self.termination {
            Some(t) => {
                t.confirm &= confirm;
                if deadline >= t.deadline {
                    return;
                }
                t.deadline = deadline;
            }
            None => {
                tracing::info!(namespace = %self.namespace, pod = %self.name, grace_s = grace.as_secs(), "terminating pod");
                self.termination = Some(Termination { deadline, confirm });
            }
        }
        for id in self.ids() {
            self.ctr(id).next_start = None;
            if self.ctr(id).run.is_some() {
                self.stop(id, grace, "pod deletion");
            }
        }
    }

    fn teardown(&mut self) {
        let Some(sb) = self.sandbox.take() else {
            return;
        };
        if let Some(ip) = self.ip
            && let Err(e) = self.rt.inner.network.remove_pod(ip)
        {
            tracing::warn!(error = %e, "cannot remove the pod's network rules");
        }
        sb.cgroup.kill();
        sb.cgroup.remove();
        for sub in ["volumes", "rootfs", "serviceaccount"] {
            let _ = fs::remove_dir_all(sb.dir.join(sub));
        }
        if let Some(ip) = self.ip {
            self.rt.release_pod_ip(ip);
        }
        lock(&self.shared).containers.clear();
    }

    async fn finish(mut self) {
        if self.terminal.is_none() {
            let all_ok = self.init_done()
                && self
                    .main
                    .iter()
                    .all(|c| matches!(&c.state, CtrState::Terminated(t) if t.exit_code == 0));
            self.terminal = Some(if all_ok {
                Phase::Succeeded
            } else {
                Phase::Failed
            });
        }
        self.teardown();
        self.publish();
        // Forget first: once the deletion is confirmed, a pod of the same name
        // may come back and must not be confused with this one.
        let claims = lock(&self.shared).claims.clone();
        self.rt.forget(&self.uid, &claims);
        tracing::info!(namespace = %self.namespace, pod = %self.name, "pod terminated");
        if self.termination.as_ref().is_none_or(|t| t.confirm) {
            let _ = self.rt.inner.events.send(PodEvent::Terminated {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                uid: self.uid.clone(),
            });
        }
    }

    // ---- simulated pods ----

    async fn run_simulated(mut self) {
        match self.rt.allocate_pod_ip() {
            Ok(ip) => {
                self.ip = Some(ip);
                lock(&self.shared).ip = Some(ip);
            }
            Err(e) => self.setup_error = Some(e.to_string()),
        }
        if self.ip.is_some() {
            let now = status::now();
            for c in &mut self.init {
                c.succeeded = true;
                c.state = CtrState::Terminated(Term {
                    exit_code: 0,
                    signal: None,
                    reason: "Completed".to_string(),
                    message: None,
                    started: now.clone(),
                    finished: now.clone(),
                    container_id: String::new(),
                });
                c.next_start = None;
            }
            for c in &mut self.main {
                c.state = CtrState::Running { since: now.clone() };
                c.runs = 1;
                c.ready = true;
                c.started = true;
                c.next_start = None;
            }
        }
        self.setup_error = None;
        loop {
            self.publish();
            if self.pod.metadata.deletion_timestamp.is_some() {
                self.termination = Some(Termination {
                    deadline: Instant::now(),
                    confirm: true,
                });
                break;
            }
            tokio::select! {
                changed = self.pod_rx.changed() => match changed {
                    Ok(()) => self.pod = self.pod_rx.borrow_and_update().clone(),
                    Err(_) => break,
                },
                _ = self.removed_rx.changed() => {
                    self.termination = Some(Termination { deadline: Instant::now(), confirm: false });
                    break;
                }
            }
        }
        for c in &mut self.main {
            c.ready = false;
            let now = status::now();
            c.state = CtrState::Terminated(Term {
                exit_code: 0,
                signal: None,
                reason: "Completed".to_string(),
                message: None,
                started: now.clone(),
                finished: now,
                container_id: String::new(),
            });
        }
        self.finish().await;
    }

    // ---- status ----

    fn phase(&self) -> Phase {
        if let Some(p) = self.terminal {
            return p;
        }
        if self.ip.is_none() || !self.init_done() {
            return Phase::Pending;
        }
        let (mut pending, mut running, mut stopped, mut succeeded) = (0, 0, 0, 0);
        for c in &self.main {
            match &c.state {
                CtrState::Running { .. } => running += 1,
                CtrState::Terminated(t) => {
                    stopped += 1;
                    succeeded += i32::from(t.exit_code == 0);
                }
                CtrState::Waiting { .. } => match &c.last {
                    Some(t) => {
                        stopped += 1;
                        succeeded += i32::from(t.exit_code == 0);
                    }
                    None => pending += 1,
                },
            }
        }
        if pending > 0 {
            Phase::Pending
        } else if running > 0 {
            Phase::Running
        } else if stopped > 0 {
            match self.restart_policy() {
                "Never" | "OnFailure" if stopped == succeeded => Phase::Succeeded,
                "Never" => Phase::Failed,
                _ => Phase::Running,
            }
        } else {
            Phase::Pending
        }
    }

    fn publish(&mut self) {
        let phase = self.phase();
        if matches!(phase, Phase::Succeeded | Phase::Failed) && self.terminal.is_none() {
            // Every container is done for good: release what the pod holds.
            self.terminal = Some(phase);
            self.teardown();
        }
        let status = self.build_status(phase);
        let changed = self.status_tx.send_if_modified(|s| {
            if *s == status {
                false
            } else {
                *s = status.clone();
                true
            }
        });
        if changed {
            let _ = self.rt.inner.events.send(PodEvent::Status {
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                uid: self.uid.clone(),
                status: Box::new(status),
            });
        }
    }

    fn build_status(&mut self, phase: Phase) -> PodStatus {
        let setup_message = self.setup_error.clone();
        let statuses = |ctrs: &[Ctr]| -> Vec<k8s_openapi::api::core::v1::ContainerStatus> {
            ctrs.iter()
                .map(|c| {
                    let state = match (&c.state, &setup_message) {
                        (CtrState::Waiting { reason, .. }, Some(msg))
                            if reason == "ContainerCreating" || reason == "PodInitializing" =>
                        {
                            CtrState::waiting(reason, Some(msg.clone()))
                        }
                        (s, _) => s.clone(),
                    };
                    let id = c
                        .run
                        .as_ref()
                        .map(|r| r.container_id.as_str())
                        .or(match &c.state {
                            CtrState::Terminated(t) if !t.container_id.is_empty() => {
                                Some(t.container_id.as_str())
                            }
                            _ => None,
                        });
                    status::container_status(
                        &c.spec.name,
                        c.spec.image.as_deref().unwrap_or_default(),
                        &state,
                        c.last.as_ref(),
                        c.ready,
                        c.started,
                        c.restart_count(),
                        id,
                    )
                })
                .collect()
        };
        let init_statuses = statuses(&self.init);
        let main_statuses = statuses(&self.main);

        let terminal = matches!(phase, Phase::Succeeded | Phase::Failed);
        let sandbox_ready = self.sandbox.is_some() || (self.ip.is_some() && self.simulated());
        self.conditions.set(
            "PodReadyToStartContainers",
            sandbox_ready && !terminal,
            None,
            None,
        );
        let incomplete: Vec<&str> = self
            .init
            .iter()
            .filter(|c| !c.succeeded)
            .map(|c| c.spec.name.as_str())
            .collect();
        if incomplete.is_empty() {
            self.conditions.set("Initialized", true, None, None);
        } else {
            let msg = format!(
                "containers with incomplete status: [{}]",
                incomplete.join(" ")
            );
            self.conditions.set(
                "Initialized",
                false,
                Some("ContainersNotInitialized"),
                Some(msg),
            );
        }
        let unready: Vec<&str> = self
            .main
            .iter()
            .filter(|c| !c.ready)
            .map(|c| c.spec.name.as_str())
            .collect();
        let containers_ready = unready.is_empty() && !terminal;
        let unready_msg = Some(format!(
            "containers with unready status: [{}]",
            unready.join(" ")
        ));
        let (reason, msg) = if terminal {
            (Some("PodCompleted"), None)
        } else if containers_ready {
            (None, None)
        } else {
            (Some("ContainersNotReady"), unready_msg.clone())
        };
        self.conditions
            .set("ContainersReady", containers_ready, reason, msg.clone());
        let api_conditions = self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let gates_unmet: Vec<String> = self
            .pod
            .spec
            .iter()
            .flat_map(|s| s.readiness_gates.iter().flatten())
            .filter(|g| {
                !api_conditions
                    .iter()
                    .any(|c| c.type_ == g.condition_type && c.status == "True")
            })
            .map(|g| g.condition_type.clone())
            .collect();
        if containers_ready && !gates_unmet.is_empty() {
            let msg = format!(
                "corresponding condition of pod readiness gate {:?} does not exist or is not True",
                gates_unmet
            );
            self.conditions
                .set("Ready", false, Some("ReadinessGatesNotReady"), Some(msg));
        } else {
            self.conditions.set("Ready", containers_ready, reason, msg);
        }
        self.conditions.set("PodScheduled", true, None, None);
        let mut conditions = self.conditions.list().to_vec();
        conditions.extend(
            api_conditions
                .into_iter()
                .filter(|c| !status::OWNED_CONDITIONS.contains(&c.type_.as_str())),
        );

        let host_ip = self.rt.inner.config.node_ip.to_string();
        let pod_ip = self.ip.map(|ip| ip.to_string());
        PodStatus {
            phase: Some(phase.as_str().to_string()),
            conditions: Some(conditions),
            host_ip: Some(host_ip.clone()),
            host_ips: Some(vec![HostIP { ip: host_ip }]),
            pod_ip: pod_ip.clone(),
            pod_ips: pod_ip.map(|ip| vec![PodIP { ip }]),
            start_time: Some(self.start_time.clone()),
            init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
            container_statuses: Some(main_statuses),
            ..Default::default()
        }
    }
}
