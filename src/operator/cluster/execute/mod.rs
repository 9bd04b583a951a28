//! The executor: carries out the step [`operation::choose`] picked. The
//! only operator code that acts through the agents (promote, demote,
//! PAUSE/RECONNECT/RESUME); pods and other children are written by
//! `apply`.
//!
//! `status.targetPrimary` is the authority the instance managers follow, so
//! it only moves with an optimistic write (the resourceVersion the decision
//! was made on as a precondition): an operator working from a stale copy
//! gets a conflict instead of undoing a newer decision. Each step of a
//! failover or switchover is recorded in `status.failover` /
//! `status.switchover` before it is taken, so an operator that restarts
//! half-way finds it (see `operation`'s priorities).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use tracing::warn;

mod agent_upgrade;
mod backup;
mod failover;
mod image_check;
mod switchover;
mod upgrade;
mod verify;

use super::apply::relabel;
use super::observe::Observed;
use super::operation::{Operation, RestartWhy};
use crate::agents::client::Endpoint;
use crate::api::{PostgresCluster, PostgresClusterStatus};
use crate::operator::agents::{self, Agents};
use crate::operator::context::Context;
use crate::operator::report::{self, StatusError, reason};
use crate::resources::labels;
use crate::resources::model::Model;
use crate::resources::names;

/// How long a relabelled primary may take to appear behind `<name>-rw`
/// before clients are let through anyway.
const ENDPOINTS_WAIT: Duration = Duration::from_secs(5);
/// How long the target of a switchover may take to receive the old
/// primary's last WAL (the instance waits before promoting).
const CATCH_UP_WAIT: Duration = Duration::from_secs(10);
/// How often the `-rw` endpoints are looked at.
const POLL: Duration = Duration::from_millis(40);

/// What the reconcile does after the step.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Go on: apply the children and write status (the working status may
    /// carry updated records).
    Continue,
    /// `targetPrimary` or an operation record was written: plan again from
    /// what the API server has now.
    Restart,
}

/// What one step works with.
pub struct Executor<'a> {
    pub ctx: &'a Context,
    pub cluster: &'a PostgresCluster,
    pub model: &'a Model,
    pub observed: &'a Observed,
    /// None while no pod exists or the operator's certificate is missing.
    pub agents: Option<&'a dyn Agents>,
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

/// `record` as a merge patch that replaces `previous`: the fields
/// `previous` has and `record` does not are removed, not kept.
fn replacing<T: serde::Serialize>(record: &T, previous: Option<&T>) -> serde_json::Value {
    let mut value = serde_json::to_value(record).unwrap_or_default();
    let before = previous.and_then(|p| serde_json::to_value(p).ok());
    if let (Some(fields), Some(serde_json::Value::Object(before))) = (value.as_object_mut(), before)
    {
        for key in before.keys() {
            fields.entry(key.clone()).or_insert(serde_json::Value::Null);
        }
    }
    value
}

impl Executor<'_> {
    fn endpoint(&self, name: &str) -> Option<Endpoint> {
        agents::endpoint(
            self.observed.pod(name)?,
            &self.model.name,
            &self.model.namespace,
        )
    }

    fn poolers(&self) -> Vec<Endpoint> {
        agents::poolers(
            &self.observed.pooler_pods,
            &self.model.namespace,
            &self.model.name,
        )
    }

    /// Publishes one Event about this cluster.
    async fn event(&self, warning: bool, reason: &'static str, message: impl Into<String>) {
        report::event(self.ctx, self.cluster, warning, reason, message).await;
    }

    fn resource_version(&self) -> String {
        self.cluster.resource_version().unwrap_or_default()
    }

    /// Carries out the step of `op` that needs the agents or an operation
    /// record; other operations are pods `apply` creates or deletes.
    pub async fn run(
        &self,
        op: &Operation,
        status: &mut PostgresClusterStatus,
    ) -> Result<Next, StatusError> {
        match op {
            Operation::Failover(f) => self.failover(f, status).await,
            Operation::Switchover(s) => self.switchover(s, status).await,
            Operation::RestartPrimary { instance, why } => {
                let note = op.describe();
                if *why == RestartWhy::SingleInstance {
                    warn!(cluster = %self.model.name, instance = %instance, operation = "rolling-update", "restarting the only instance in place");
                }
                self.event(false, reason::RESTARTING_PRIMARY, note).await;
                Ok(Next::Continue)
            }
            Operation::AwaitSwitchoverRequest { .. } => {
                let told = status
                    .operation
                    .as_ref()
                    .is_some_and(|o| o.message == op.describe());
                if !told {
                    self.event(false, reason::WAITING_FOR_SWITCHOVER, op.describe())
                        .await;
                }
                Ok(Next::Continue)
            }
            Operation::MajorUpgrade(step) => self.upgrade(step, status).await,
            Operation::CheckImage(step) => self.check_image(step).await,
            Operation::UpgradeAgent(step) => {
                self.upgrade_agent(step).await;
                Ok(Next::Continue)
            }
            Operation::Backup(step) => {
                self.backup(step).await;
                Ok(Next::Continue)
            }
            Operation::RecreateReplica(_) => {
                self.event(false, reason::ROLLING_UPDATE, op.describe())
                    .await;
                Ok(Next::Continue)
            }
            _ => Ok(Next::Continue),
        }
    }

    /// Sets an instance pod's role label (the Services select on it).
    /// A change of primary takes the old one out of `<name>-rw` as its first
    /// step and labels the new one only in [`Self::route_clients`]: two label
    /// changes in quick succession find the EndpointSlice controller's cache
    /// stale, and it retries the second only after a 1 s back-off while
    /// clients wait.
    async fn set_role(&self, name: &str, role: &str) {
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &self.model.namespace);
        if let Err(e) = relabel(&pods, name, role).await {
            warn!(cluster = %self.model.name, instance = %name, error = %e, "relabel");
        }
    }

    /// Labels the new primary (the old one was labelled a replica first) and
    /// waits until `<name>-rw` lists only it, so connections opened after
    /// this reach it. Every change of primary goes through here.
    async fn route_clients(&self, to: &str) {
        self.set_role(to, labels::ROLE_PRIMARY).await;
        if let Some(ip) = self
            .observed
            .pod(to)
            .and_then(|p| p.status.as_ref()?.pod_ip.clone())
        {
            self.wait_for_rw_endpoint(&ip).await;
        }
    }

    /// Pooler server connections opened before the change go to the old
    /// primary: retire them.
    /// All at once: each waits until its backend accepts connections, and
    /// the clients of a pooler asked last would wait for the others.
    async fn reconnect_poolers(&self) {
        let Some(agents) = self.agents else { return };
        let poolers = self.poolers();
        futures::future::join_all(poolers.iter().map(|ep| async move {
            if let Err(e) = agents.reconnect(ep).await {
                warn!(cluster = %self.model.name, pooler = %ep.name, error = %e, "RECONNECT failed");
            }
        }))
        .await;
    }

    async fn wait_for_rw_endpoint(&self, ip: &str) {
        let api: Api<EndpointSlice> =
            Api::namespaced(self.ctx.client.clone(), &self.model.namespace);
        let selector = format!(
            "kubernetes.io/service-name={}",
            names::rw_service(&self.model.name)
        );
        let deadline = Instant::now() + ENDPOINTS_WAIT;
        loop {
            let only_new = api
                .list(&ListParams::default().labels(&selector))
                .await
                .map(|l| {
                    let ready: Vec<String> = l
                        .items
                        .iter()
                        .flat_map(|s| s.endpoints.iter())
                        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                        .flat_map(|e| e.addresses.iter().cloned())
                        .collect();
                    ready == [ip.to_string()]
                })
                .unwrap_or(false);
            if only_new || Instant::now() >= deadline {
                if !only_new {
                    warn!(cluster = %self.model.name, "the -rw Service does not list the new primary yet; going on anyway");
                }
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
