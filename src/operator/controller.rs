//! The `PostgresCluster` controller: one reconcile runs the pipeline of
//! `cluster/` and reports the outcome in status and Events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::agents;
use super::cluster::apply::{self, Applied, FIELD_MANAGER};
use super::cluster::observe::observe;
use super::cluster::plan::{self, Deletion, Plan};
use super::cluster::status::{self, Report, Transition};
use super::cluster::validate::validate;
use super::context::Context;
use super::error::Error;
use super::ha;
use super::metrics::ErrorCategory;
use crate::api::{PostgresCluster, PostgresClusterStatus};
use crate::resources::labels;

/// Requeue while an operation is under way (child events usually come first).
const PROGRESS_REQUEUE: Duration = Duration::from_secs(15);
/// How often a cluster waiting for a Secret its spec names looks again.
const AWAIT_OBJECT_RECHECK: Duration = Duration::from_secs(10);
/// After a write conflict.
const CONFLICT_REQUEUE: Duration = Duration::from_millis(100);
/// While a failover runs or is blocked.
const HA_REQUEUE: Duration = Duration::from_secs(1);
/// Periodic resync of a settled cluster.
const STEADY_REQUEUE: Duration = Duration::from_secs(300);
/// Child events within this window are handled by one reconcile.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Reconciles running at once (each cluster is never reconciled twice at once).
const CONCURRENCY: u16 = 8;

fn key(cluster: &PostgresCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

pub async fn reconcile(cluster: Arc<PostgresCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&cluster, &ctx).await;
    let elapsed = started.elapsed();
    ctx.metrics.duration.observe(elapsed.as_secs_f64());
    tracing::debug!(
        cluster = %cluster.name_any(),
        elapsed_ms = elapsed.as_millis(),
        ok = result.is_ok(),
        "reconciled"
    );
    if result.is_ok() {
        ctx.succeeded(&key(&cluster));
    }
    result
}

async fn reconcile_inner(cluster: &PostgresCluster, ctx: &Context) -> Result<Action, Error> {
    let name = cluster.name_any();
    let now = jiff::Timestamp::now();
    let observed = observe(&ctx.client, cluster, now.as_second())
        .await
        .map_err(Error::Observe)?;
    let generation = cluster.metadata.generation.unwrap_or(0);
    let previous = cluster.status.as_ref();

    let validated = match validate(cluster, &observed, &ctx.config.operator_image) {
        Ok(v) => v,
        Err(spec_error) => {
            warn!(cluster = %name, field = %spec_error.field, error = %spec_error, "spec cannot be applied");
            ctx.metrics.error(ErrorCategory::InvalidSpec);
            let (status, transitions) =
                status::stalled(previous, generation, Time(now), &spec_error);
            write_status(ctx, cluster, &status).await?;
            publish(ctx, cluster, &transitions).await;
            // A missing Secret the spec names may be created any time (GitOps
            // tools apply in no fixed order): look again now and then. Other
            // errors only a spec change can fix: wait for one.
            return Ok(if spec_error.awaits_object {
                Action::requeue(AWAIT_OBJECT_RECHECK)
            } else {
                Action::await_change()
            });
        }
    };

    // Instance managers decide their role from targetPrimary before they
    // start PostgreSQL, so it is recorded before any pod exists.
    if previous.and_then(|s| s.target_primary.as_ref()).is_none() {
        let plan = plan::plan(&validated.model, &observed, previous)?;
        let initial = PostgresClusterStatus {
            target_primary: Some(plan.target_primary.clone()),
            postgres_version: Some(validated.model.postgres_version),
            ..previous.cloned().unwrap_or_default()
        };
        write_status(ctx, cluster, &initial).await?;
        info!(cluster = %name, primary = %plan.target_primary, "chose the first primary");
        return Ok(Action::requeue(Duration::ZERO));
    }

    let mut observed = observed;
    let namespace = cluster.namespace().unwrap_or_default();
    // Agents exist only once pods do, and their client needs the
    // operator's certificate.
    let can_ask = !observed.pods.is_empty()
        && observed.has_secret(&crate::resources::names::operator_tls_secret(&name));
    let agent_client = if can_ask {
        match agents::client(&ctx.client, &namespace, &name).await {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(cluster = %name, error = %e, "cannot call the instance managers");
                None
            }
        }
    } else {
        None
    };
    if let Some(c) = &agent_client {
        let silent = ctx.leases.silent_holder(&namespace, &name);
        observed.reports =
            agents::reports(c, &observed.pods, &name, &namespace, silent.as_deref()).await;
    }
    let plan = plan::plan(&validated.model, &observed, previous)?;
    let mut working = previous.cloned().unwrap_or_default();
    match ha::before(
        ctx,
        cluster,
        &validated.model,
        &observed,
        &plan.instances,
        &mut working,
        agent_client.as_ref(),
    )
    .await?
    {
        ha::Next::Continue => {}
        // targetPrimary moved: plan again from what the API server has now.
        ha::Next::Restart => return Ok(Action::requeue(Duration::ZERO)),
    }
    let previous = Some(&working);
    let (applied, apply_error) = match apply::apply(
        &ctx.client,
        &validated.model,
        &plan,
        &observed.versions,
        &ctx.applied,
    )
    .await
    {
        Ok(applied) => (applied, None),
        Err(e) => (Applied::default(), Some(e)),
    };
    let mut problems: Vec<String> = applied.refused.clone();
    if let Some(e) = &apply_error {
        problems.push(e.to_string());
    }
    let (new_status, transitions) = status::compute(&Report {
        model: &validated.model,
        observed: &observed,
        plan: &plan,
        previous,
        generation,
        now: Time(now),
        blocked: validated.blocked.as_ref(),
        apply_error: (!problems.is_empty()).then(|| problems.join("; ")),
    });
    let mut new_status = new_status;
    ha::after(
        ctx,
        cluster,
        &validated.model,
        &observed,
        &mut new_status,
        agent_client.as_ref(),
    )
    .await;
    if cluster.status.as_ref() != Some(&new_status) {
        write_status(ctx, cluster, &new_status).await?;
    }
    publish(ctx, cluster, &operation_events(&plan, &applied)).await;
    publish(ctx, cluster, &transitions).await;
    if let Some(e) = apply_error {
        return Err(e.into());
    }
    let settled =
        plan.step.is_steady() && status::condition_is(Some(&new_status), status::READY, "True");
    let ha_running = new_status
        .failover
        .as_ref()
        .is_some_and(|f| f.phase == ha::PROMOTING || f.phase == ha::BLOCKED);
    Ok(Action::requeue(if ha_running {
        HA_REQUEUE
    } else if settled {
        STEADY_REQUEUE
    } else {
        PROGRESS_REQUEUE
    }))
}

/// Events for what this reconcile did, one per kind of action (Events with
/// the same reason are merged into a series by the recorder, so details of
/// later ones would be lost).
fn operation_events(plan: &Plan, applied: &Applied) -> Vec<Transition> {
    let mut out = vec![];
    let mut add = |warning: bool, reason: &str, items: Vec<String>| {
        if !items.is_empty() {
            out.push(Transition {
                warning,
                reason: reason.into(),
                message: items.join("; "),
            });
        }
    };
    add(
        false,
        "CreatedInstances",
        applied
            .created_pods
            .iter()
            .map(|pod| {
                let role = if *pod == plan.target_primary {
                    labels::ROLE_PRIMARY
                } else {
                    labels::ROLE_REPLICA
                };
                format!("created instance {pod} ({role})")
            })
            .collect(),
    );
    add(
        false,
        "DeletedPods",
        applied
            .deleted
            .iter()
            .filter_map(|d| match d {
                Deletion::Pod(p) => Some(format!("deleted pod {p}: {}", plan.step.describe())),
                _ => None,
            })
            .collect(),
    );
    add(
        false,
        "DeletedVolumes",
        applied
            .deleted
            .iter()
            .filter_map(|d| match d {
                Deletion::Pvc(p) => Some(format!("deleted volume {p} of a removed instance")),
                _ => None,
            })
            .collect(),
    );
    add(
        false,
        "CreatedSecrets",
        applied
            .created_secrets
            .iter()
            .map(|s| format!("generated {s}"))
            .collect(),
    );
    add(
        false,
        "IssuedCertificates",
        applied
            .issued
            .iter()
            .map(|(kind, reason)| format!("issued the {kind:?} certificate ({reason:?})"))
            .collect(),
    );
    add(true, "ApplyRefused", applied.refused.clone());
    out
}

async fn write_status(
    ctx: &Context,
    cluster: &PostgresCluster,
    status: &PostgresClusterStatus,
) -> Result<(), Error> {
    let api: Api<PostgresCluster> =
        Api::namespaced(ctx.client.clone(), &cluster.namespace().unwrap_or_default());
    // The resourceVersion read is a precondition: a reconcile working from
    // a stale copy must not put back a targetPrimary a failover moved.
    let body = serde_json::json!({
        "apiVersion": PostgresCluster::api_version(&()),
        "kind": PostgresCluster::kind(&()),
        "metadata": {"resourceVersion": cluster.metadata.resource_version},
        "status": status,
    });
    api.patch_status(
        &cluster.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::Status)?;
    Ok(())
}

async fn publish(ctx: &Context, cluster: &PostgresCluster, transitions: &[Transition]) {
    let reference = cluster.object_ref(&());
    for t in transitions {
        let event = Event {
            type_: if t.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: t.reason.clone(),
            note: Some(t.message.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        // An Event that cannot be written must not fail the reconcile.
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(cluster = %cluster.name_any(), reason = %t.reason, error = %e, "cannot publish Event");
        }
    }
}

pub fn error_policy(cluster: Arc<PostgresCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_conflict() {
        // Our copy was stale; the watch brings the new one at once.
        debug!(cluster = %cluster.name_any(), "conflict; reconciling again");
        return Action::requeue(CONFLICT_REQUEUE);
    }
    ctx.metrics.error(error.category());
    let wait = ctx.backoff(&key(&cluster));
    warn!(cluster = %cluster.name_any(), error = %error, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ns = ctx.config.namespace.clone();
    fn api<K>(client: &kube::Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    // Only Capstan's own children are watched, so memory stays small however
    // many other objects the namespace holds.
    let children =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGER));
    let controller = Controller::new(
        api::<PostgresCluster>(&client, &ns),
        watcher::Config::default(),
    )
    // A burst of child events (a reconcile writes many children) becomes one
    // reconcile; a bounded number run at once keeps memory flat with many
    // clusters.
    .with_config(
        kube::runtime::controller::Config::default()
            .debounce(DEBOUNCE)
            .concurrency(CONCURRENCY),
    );
    let store = controller.store();
    let pruning = ctx.clone();
    let pruner = tokio::spawn(async move {
        loop {
            tokio::time::sleep(STEADY_REQUEUE).await;
            let live: std::collections::HashSet<String> = store
                .state()
                .iter()
                .filter_map(|c| c.metadata.uid.clone())
                .collect();
            pruning.applied.retain_clusters(&live);
        }
    });
    // A primary Lease that goes silent triggers a reconcile at once, not at
    // the next child event or resync.
    let (trigger, mut expired) = tokio::sync::mpsc::channel(64);
    let lease_watch = super::leases::spawn(
        client.clone(),
        ns.clone(),
        ctx.leases.clone(),
        trigger,
        DEBOUNCE,
    );
    controller
        .reconcile_on(futures::stream::poll_fn(move |cx| expired.poll_recv(cx)))
        .owns(api::<Pod>(&client, &ns), children.clone())
        .owns(api::<PersistentVolumeClaim>(&client, &ns), children.clone())
        .owns(api::<Deployment>(&client, &ns), children.clone())
        .owns(api::<Service>(&client, &ns), children.clone())
        .owns(api::<Secret>(&client, &ns), children.clone())
        .owns(api::<ConfigMap>(&client, &ns), children)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    pruner.abort();
    lease_watch.abort();
}
