//! Doubles for the controller tests: kube's `tower-test` API server that
//! records every request and keeps the cluster object (status writes with
//! resourceVersion preconditions, pod role labels, `-rw` endpoints), and a
//! fake agent that plays the instance managers and pooler supervisors.
//! Both can be told to hang at the n-th action, to kill the "operator" at
//! that step.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus, Secret};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tower_test::mock;

use capstan::agents::client::{ClientError, Endpoint};
use capstan::api::PostgresCluster;
use capstan::contract::instance::{
    DemoteResult, InstanceReport, PromoteRequest, PromoteResult, Role,
};
use capstan::contract::pooler::{PauseRequest, PauseResult};
use capstan::operator::agents::{Agents, AgentsError, Connect};
use capstan::operator::cache::Writers;
use capstan::operator::context::{Context, OperatorConfig};
use capstan::operator::controller::reconcile;
use capstan::operator::metrics::Metrics;
use capstan::pooler::switchover::PoolerControl;
use capstan::postgres::lsn::Lsn;

/// Counts the actions (writes to the API server, agent calls) of one run
/// and hangs forever at the chosen one: the operator "dies" there.
#[derive(Default)]
pub struct Tripwire {
    count: AtomicUsize,
    /// 1-based; 0 = never.
    at: AtomicUsize,
    /// Every step of an operation in order: pod writes, status patches and
    /// agent calls (children applies and Events are left out).
    timeline: Mutex<Vec<String>>,
}

impl Tripwire {
    pub fn arm(&self, at: usize) {
        self.count.store(0, Ordering::SeqCst);
        self.at.store(at, Ordering::SeqCst);
    }

    /// True when this action is the one to hang at.
    fn trips(&self) -> bool {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        n == self.at.load(Ordering::SeqCst)
    }

    pub fn actions(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn note(&self, step: String) {
        self.timeline.lock().unwrap().push(step);
    }

    pub fn take_timeline(&self) -> Vec<String> {
        std::mem::take(&mut self.timeline.lock().unwrap())
    }
}

#[derive(Clone, Debug)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

impl Call {
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

pub fn not_found(path: &str) -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{path} not found")}),
    )
}

fn conflict() -> Response<Body> {
    json_response(
        StatusCode::CONFLICT,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "the object has been modified"}),
    )
}

/// RFC 7386 merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// What the API double holds.
pub struct ApiState {
    /// The PostgresCluster, with its resourceVersion and status.
    pub cluster: Value,
    /// Pod name → (IP, role label) as written by the operator.
    pub pods: BTreeMap<String, (String, String)>,
    pub calls: Vec<Call>,
}

#[derive(Clone)]
pub struct Api {
    pub state: Arc<Mutex<ApiState>>,
    pub trip: Arc<Tripwire>,
}

impl Api {
    pub fn new(cluster: Value, trip: Arc<Tripwire>) -> Self {
        Api {
            state: Arc::new(Mutex::new(ApiState {
                cluster,
                pods: BTreeMap::new(),
                calls: vec![],
            })),
            trip,
        }
    }

    pub fn cluster(&self) -> PostgresCluster {
        serde_json::from_value(self.state.lock().unwrap().cluster.clone()).unwrap()
    }

    pub fn status(&self) -> Value {
        self.state.lock().unwrap().cluster["status"].clone()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state.lock().unwrap().calls)
    }

    /// The timeline entry of a request, if it is a step of an operation.
    fn step(call: &Call) -> Option<String> {
        let path = call.path.as_str();
        let last = path.rsplit('/').next().unwrap_or_default();
        match call.method {
            Method::PATCH if path.ends_with("/postgresclusters/db/status") => {
                if call.content_type == "application/apply-patch+yaml" {
                    Some("status".into())
                } else {
                    let mut keys: Vec<String> = call.body["status"]
                        .as_object()
                        .map(|o| o.keys().cloned().collect())
                        .unwrap_or_default();
                    keys.sort();
                    let phase =
                        |k: &str| call.body["status"][k]["phase"].as_str().map(str::to_string);
                    let detail = phase("switchover")
                        .or(phase("failover"))
                        .or(phase("upgrade"))
                        .unwrap_or_default();
                    Some(
                        format!("status {} {detail}", keys.join("+"))
                            .trim()
                            .to_string(),
                    )
                }
            }
            Method::PATCH if path.contains("/pods/") => Some(format!(
                "label {last} {}",
                call.body["metadata"]["labels"]["capstan.dev/role"]
                    .as_str()
                    .unwrap_or_default()
            )),
            Method::DELETE if path.contains("/pods/") => Some(format!("delete {last}")),
            Method::POST if path.ends_with("/pods") => Some(format!(
                "create {}",
                call.body["metadata"]["name"].as_str().unwrap_or_default()
            )),
            _ => None,
        }
    }

    fn answer(&self, call: &Call) -> Option<Response<Body>> {
        let path = call.path.as_str();
        let write = call.method != Method::GET;
        if let Some(step) = Self::step(call) {
            self.trip.note(step);
        }
        // Events are not steps of an operation.
        if write && !path.contains("/events") && self.trip.trips() {
            return None;
        }
        let mut st = self.state.lock().unwrap();
        let response = match call.method {
            Method::GET if path.ends_with("/endpointslices") => {
                // `<name>-rw` lists the pod labelled primary.
                let ips: Vec<&String> = st
                    .pods
                    .values()
                    .filter(|(_, role)| role == "primary")
                    .map(|(ip, _)| ip)
                    .collect();
                json_response(
                    StatusCode::OK,
                    &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "metadata": {},
                        "items": [{"metadata": {"name": "db-rw-x"}, "addressType": "IPv4",
                        "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>()}]}),
                )
            }
            Method::GET if path.contains("/secrets/") => not_found(path),
            Method::GET => json_response(
                StatusCode::OK,
                &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []}),
            ),
            Method::PATCH if path.ends_with("/postgresclusters/db/status") => {
                let current = st.cluster["metadata"]["resourceVersion"].clone();
                let wanted = &call.body["metadata"]["resourceVersion"];
                if !wanted.is_null() && *wanted != current {
                    return Some(conflict());
                }
                if call.content_type == "application/apply-patch+yaml" {
                    st.cluster["status"] = call.body["status"].clone();
                } else {
                    let patch = call.body["status"].clone();
                    if st.cluster["status"].is_null() {
                        st.cluster["status"] = json!({});
                    }
                    merge(&mut st.cluster["status"], &patch);
                }
                let next = current.as_str().unwrap_or("0").parse::<u64>().unwrap_or(0) + 1;
                st.cluster["metadata"]["resourceVersion"] = json!(next.to_string());
                json_response(StatusCode::OK, &st.cluster)
            }
            Method::PATCH if path.contains("/pods/") => {
                let name = path.rsplit('/').next().unwrap_or_default().to_string();
                if let Some(role) = call.body["metadata"]["labels"]["capstan.dev/role"].as_str()
                    && let Some(entry) = st.pods.get_mut(&name)
                {
                    entry.1 = role.to_string();
                }
                json_response(StatusCode::OK, &json!({"metadata": {"name": name}}))
            }
            Method::DELETE => json_response(
                StatusCode::OK,
                &json!({"kind": "Status", "status": "Success"}),
            ),
            Method::PATCH | Method::POST => {
                let mut body = call.body.clone();
                if body.get("metadata").is_none() {
                    body["metadata"] = json!({"name": "x"});
                }
                json_response(StatusCode::CREATED, &body)
            }
            _ => json_response(StatusCode::METHOD_NOT_ALLOWED, &json!({})),
        };
        Some(response)
    }

    /// Serves requests until the client is dropped.
    pub fn serve(&self) -> (Client, tokio::task::JoinHandle<()>) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        let task = tokio::spawn(async move {
            let mut handle = pin!(handle);
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let body: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
                };
                let call = Call {
                    method: parts.method.clone(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or_default().to_string(),
                    content_type: parts
                        .headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string(),
                    body,
                };
                let response = api.answer(&call);
                api.state.lock().unwrap().calls.push(call);
                match response {
                    Some(r) => send.send_response(r),
                    // The operator died waiting for this answer.
                    None => std::mem::forget(send),
                }
            }
        });
        (Client::new(service, "default"), task)
    }
}

/// The instance managers and pooler supervisors, by pod name.
#[derive(Default)]
pub struct FakeAgents {
    pub reports: Mutex<BTreeMap<String, InstanceReport>>,
    /// Pooler supervisors' reports (none: they do not answer `/status`).
    pub poolers: Mutex<BTreeMap<String, capstan::contract::pooler::PoolerReport>>,
    pub calls: Mutex<Vec<String>>,
    pub trip: Arc<Tripwire>,
}

impl FakeAgents {
    pub fn new(trip: Arc<Tripwire>) -> Arc<Self> {
        Arc::new(FakeAgents {
            trip,
            ..FakeAgents::default()
        })
    }

    pub fn set(&self, report: InstanceReport) {
        self.reports
            .lock()
            .unwrap()
            .insert(report.name.clone(), report);
    }

    pub fn remove(&self, name: &str) {
        self.reports.lock().unwrap().remove(name);
    }

    pub fn role(&self, name: &str) -> Option<Role> {
        self.reports.lock().unwrap().get(name).map(|r| r.role)
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut self.calls.lock().unwrap())
    }

    /// Records an action; hangs forever when it is the tripwire's.
    async fn act(&self, what: String) {
        let trips = self.trip.trips();
        self.trip.note(what.clone());
        self.calls.lock().unwrap().push(what);
        if trips {
            std::future::pending::<()>().await;
        }
    }
}

fn unreachable(ep: &Endpoint) -> ClientError {
    ClientError::Connect {
        endpoint: ep.name.clone(),
        address: ep.host.clone(),
        message: "connection refused".into(),
    }
}

impl PoolerControl for FakeAgents {
    fn pause<'a>(
        &'a self,
        ep: &'a Endpoint,
        _: &'a PauseRequest,
    ) -> BoxFuture<'a, Result<PauseResult, ClientError>> {
        Box::pin(async move {
            self.act(format!("pause {}", ep.name)).await;
            Ok(PauseResult { elapsed_ms: 1 })
        })
    }
    fn resume<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            self.act(format!("resume {}", ep.name)).await;
            Ok(())
        })
    }
    fn reconnect<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            self.act(format!("reconnect {}", ep.name)).await;
            Ok(())
        })
    }
}

impl Agents for FakeAgents {
    fn pooler_status<'a>(
        &'a self,
        ep: &'a Endpoint,
        _: Duration,
    ) -> BoxFuture<'a, Result<capstan::contract::pooler::PoolerReport, ClientError>> {
        Box::pin(async move {
            self.poolers
                .lock()
                .unwrap()
                .get(&ep.name)
                .cloned()
                .ok_or_else(|| unreachable(ep))
        })
    }
    /// Takes the binary at once: the next reports show its checksum.
    fn replace_binary<'a>(
        &'a self,
        ep: &'a Endpoint,
        sha256: &'a str,
        _: hyper::body::Bytes,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            self.act(format!("binary {}", ep.name)).await;
            let set = |agent: &mut Option<capstan::contract::agent::AgentBuild>| {
                if let Some(a) = agent.as_mut() {
                    a.sha256 = Some(sha256.to_string());
                }
            };
            if let Some(r) = self.reports.lock().unwrap().get_mut(&ep.name) {
                set(&mut r.agent);
            }
            if let Some(r) = self.poolers.lock().unwrap().get_mut(&ep.name) {
                set(&mut r.agent);
            }
            Ok(())
        })
    }
    fn inventory_changed<'a>(&'a self, ep: &'a Endpoint) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            self.act(format!("inventory {}", ep.name)).await;
            Ok(())
        })
    }
    fn prepare_stop<'a>(
        &'a self,
        ep: &'a Endpoint,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            self.act(format!("prepare-stop {}", ep.name)).await;
            Ok(())
        })
    }
    fn sentinel<'a>(
        &'a self,
        ep: &'a Endpoint,
        backup: &'a str,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            self.act(format!("sentinel {} {backup}", ep.name)).await;
            let reports = self.reports.lock().unwrap();
            let r = reports.get(&ep.name).ok_or_else(|| unreachable(ep))?;
            if r.role != Role::Primary {
                return Err(ClientError::Status {
                    endpoint: ep.name.clone(),
                    status: StatusCode::CONFLICT,
                    message: "not the primary".into(),
                });
            }
            Ok(())
        })
    }
    fn backup<'a>(
        &'a self,
        ep: &'a Endpoint,
        request: &'a capstan::contract::backup::BackupRequest,
    ) -> BoxFuture<'a, Result<capstan::contract::backup::BackupJob, ClientError>> {
        Box::pin(async move {
            self.act(format!("backup {} {}", ep.name, request.backup))
                .await;
            let mut reports = self.reports.lock().unwrap();
            let r = reports.get_mut(&ep.name).ok_or_else(|| unreachable(ep))?;
            let job = capstan::contract::backup::BackupJob {
                backup: request.backup.clone(),
                kind: request.kind,
                repository: request.repository,
                phase: capstan::contract::backup::JobPhase::Running,
                started_at: "2026-12-04T10:00:00Z".into(),
                finished_at: None,
                result: None,
                message: None,
            };
            r.backup = Some(job.clone());
            Ok(job)
        })
    }
    fn instance_status<'a>(
        &'a self,
        ep: &'a Endpoint,
        _: Duration,
    ) -> BoxFuture<'a, Result<InstanceReport, ClientError>> {
        Box::pin(async move {
            self.reports
                .lock()
                .unwrap()
                .get(&ep.name)
                .cloned()
                .ok_or_else(|| unreachable(ep))
        })
    }
    fn promote<'a>(
        &'a self,
        ep: &'a Endpoint,
        request: &'a PromoteRequest,
    ) -> BoxFuture<'a, Result<PromoteResult, ClientError>> {
        Box::pin(async move {
            self.act(format!("promote {}", ep.name)).await;
            let mut reports = self.reports.lock().unwrap();
            let r = reports.get_mut(&ep.name).ok_or_else(|| unreachable(ep))?;
            let already_primary = r.role == Role::Primary;
            // As the instance: a replica without the old primary's last WAL
            // is not promoted.
            let min: Option<Lsn> = request.min_wal.as_deref().and_then(|m| m.parse().ok());
            if let Some(min) = min
                && !already_primary
                && r.wal_held().is_none_or(|have| have < min)
            {
                return Err(ClientError::Status {
                    endpoint: ep.name.clone(),
                    status: StatusCode::CONFLICT,
                    message: format!("no WAL up to {min}; refusing to promote"),
                });
            }
            r.role = Role::Primary;
            r.wal_receiver = None;
            r.timeline = Some(r.timeline.unwrap_or(1) + u32::from(!already_primary));
            Ok(PromoteResult {
                timeline: r.timeline.unwrap_or(1),
                elapsed_ms: 5,
                already_primary,
            })
        })
    }
    fn demote<'a>(
        &'a self,
        ep: &'a Endpoint,
        new_primary: &'a str,
    ) -> BoxFuture<'a, Result<DemoteResult, ClientError>> {
        Box::pin(async move {
            self.act(format!("demote {} for {new_primary}", ep.name))
                .await;
            let mut reports = self.reports.lock().unwrap();
            let r = reports.get_mut(&ep.name).ok_or_else(|| unreachable(ep))?;
            let was_primary = r.role == Role::Primary;
            r.role = Role::Replica;
            r.running = false;
            Ok(DemoteResult {
                elapsed_ms: 5,
                already_replica: !was_primary,
                rewound: false,
                following: false,
                shutdown_checkpoint: r.current_lsn.clone().filter(|_| was_primary),
            })
        })
    }
}

/// Hands every cluster the same fake.
pub struct FakeConnect(pub Arc<FakeAgents>);

impl Connect for FakeConnect {
    fn connect(&self, _: &Secret) -> Result<Arc<dyn Agents>, AgentsError> {
        Ok(self.0.clone())
    }
}

pub fn context(client: Client, agents: Option<Arc<FakeAgents>>) -> Arc<Context> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "capstan-operator".into(),
            instance: Some("test".into()),
        },
    );
    let ctx = Context::new(
        client,
        recorder,
        OperatorConfig {
            operator_image: "capstan:test".into(),
            namespace: None,
            resync: Duration::from_secs(300),
        },
        Arc::new(Metrics::default()),
    );
    Arc::new(match agents {
        Some(a) => ctx.with_agents(Box::new(FakeConnect(a))),
        None => ctx,
    })
}

/// Fills the watch caches as the first lists would, plus `objects`.
pub fn seed(ctx: &Context, pods: &[Pod], secrets: &[Secret]) -> Writers {
    let mut w = ctx.take_writers().expect("writers not taken yet");
    w.mark_listed();
    for p in pods {
        w.pods
            .apply_watcher_event(&watcher::Event::Apply(p.clone()));
    }
    for s in secrets {
        w.secrets
            .apply_watcher_event(&watcher::Event::Apply(s.clone()));
    }
    w
}

/// A pod as the kubelet reports it: running, with an IP, ready or not.
pub fn running(mut pod: Pod, ip: &str, ready: bool) -> Pod {
    pod.status = Some(PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some(ip.into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..PodCondition::default()
        }]),
        ..PodStatus::default()
    });
    pod
}

pub fn cluster(spec: Value, status: Option<Value>) -> Value {
    let mut c = json!({
        "apiVersion": "capstan.dev/v1alpha1",
        "kind": "PostgresCluster",
        "metadata": {"name": "db", "namespace": "ns", "uid": "uid-7", "generation": 3, "resourceVersion": "10"},
        "spec": spec,
    });
    if let Some(s) = status {
        c["status"] = s;
    }
    c
}

/// One reconcile of what the API double holds now, bounded by `limit`
/// (None when it did not finish: the operator "died").
pub async fn reconcile_once(
    api: &Api,
    ctx: &Arc<Context>,
    limit: Duration,
) -> Option<Result<Action, capstan::operator::error::Error>> {
    let cluster = Arc::new(api.cluster());
    tokio::time::timeout(limit, reconcile(cluster, ctx.clone()))
        .await
        .ok()
}
