//! The `PostgresCluster` controller: one reconcile runs the pipeline of
//! `cluster/` and reports the outcome in status and Events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, reflector, store::Writer};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::agents;
use super::cluster::apply::{self, Applied};
use super::cluster::backup;
use super::cluster::execute::{Executor, Next};
use super::cluster::observe::observe;
use super::cluster::operation::Operation;
use super::cluster::plan::{self, Deletion, Plan};
use super::cluster::restore;
use super::cluster::status::{self, Report, Transition};
use super::cluster::validate::validate;
use super::context::Context;
use super::error::Error;
use super::metrics::ErrorCategory;
use super::report::{self, reason};
use crate::api::PostgresCluster;
use crate::api::pgbackup::PostgresBackup;
use crate::resources::{labels, names};
use crate::tls;

/// Requeue while an operation is under way (child events usually come first).
const PROGRESS_REQUEUE: Duration = Duration::from_secs(15);
/// How often a cluster waiting for a Secret its spec names looks again.
const AWAIT_OBJECT_RECHECK: Duration = Duration::from_secs(10);
/// After a write conflict.
const CONFLICT_REQUEUE: Duration = Duration::from_millis(100);
/// While a failover runs or is blocked.
const HA_REQUEUE: Duration = Duration::from_secs(1);
/// While a backup runs: its end is seen in the agent's report, so this is
/// how late a finished backup is recorded (backups take minutes; the
/// figure counts against a backup's duration through Capstan).
const BACKUP_REQUEUE: Duration = Duration::from_secs(1);
/// After new settings are written: how long, and how often, the
/// instances' reports are looked at for a pending restart.
const SETTINGS_FOLLOW_UP: Duration = Duration::from_secs(120);
const SETTINGS_REQUEUE: Duration = Duration::from_secs(3);
/// How often the applied-children cache drops deleted clusters.
const PRUNE_EVERY: Duration = Duration::from_secs(300);
/// Child events within this window are handled by one reconcile.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// How long before a primary Lease expires its cluster is reconciled: the
/// debounce, then the silent holder is asked (a frozen pod never answers),
/// and the Lease is read just as it expires.
const LEASE_LEAD: Duration = DEBOUNCE.saturating_add(super::agents::SILENT_HOLDER_TIMEOUT);
/// How often a settled cluster with `autoGrow` reads its volumes' use.
const AUTO_GROW_LOOK: Duration = Duration::from_secs(5);
/// How long a reconcile waits for the watch caches' first lists.
const CACHE_WAIT: Duration = Duration::from_secs(30);
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
    let namespace = cluster.namespace().unwrap_or_default();
    // Before the first list of every watch arrived, an empty cache would
    // read as "nothing exists".
    tokio::time::timeout(CACHE_WAIT, ctx.caches.ready())
        .await
        .map_err(|_| Error::CachesNotReady)?
        .map_err(|_| Error::CachesNotReady)?;
    // Deciding from an object older than our own last step write would
    // redo that step; the watch delivers it in milliseconds.
    if let (Some(uid), Some(rv)) = (cluster.uid(), cluster.resource_version())
        && ctx.own_writes.behind(&uid, &rv)
    {
        debug!(cluster = %name, "waiting for the watch to deliver the last status write");
        return Ok(Action::requeue(Duration::from_millis(100)));
    }
    let now = jiff::Timestamp::now();
    let mut observed = observe(&ctx.client, &ctx.caches, cluster, now.as_second())
        .await
        .map_err(Error::Observe)?;
    let generation = cluster.metadata.generation.unwrap_or(0);
    let previous = cluster.status.as_ref();

    // Agents exist only once pods do, and their client needs the
    // operator's certificate. Asked before validating: what an upgrade
    // may start with depends on the primary's report (its free space).
    let agents = match (&observed.operator_tls, observed.pods.is_empty()) {
        (Some(secret), false) => match ctx.agents.connect(secret) {
            Ok(a) => Some(a),
            Err(e) => {
                warn!(cluster = %name, error = %e, "cannot call the instance managers");
                None
            }
        },
        _ => None,
    };
    if let Some(a) = &agents {
        let silent = ctx.leases.silent_holder(&namespace, &name);
        observed.reports = agents::reports(
            a.as_ref(),
            &observed.pods,
            &name,
            &namespace,
            silent.as_deref(),
        )
        .await;
        observed.pooler_reports =
            agents::pooler_reports(a.as_ref(), &observed.pooler_pods, &name, &namespace).await;
    }
    let validated = match validate(cluster, &observed, &ctx.config.operator_image) {
        Ok(v) => v,
        Err(spec_error) => {
            warn!(cluster = %name, field = %spec_error.field, error = %spec_error, "spec cannot be applied");
            ctx.metrics.error(ErrorCategory::InvalidSpec);
            let (status, transitions) =
                status::stalled(previous, generation, Time(now), &spec_error);
            report::write_status(ctx, cluster, &status).await?;
            report::publish(ctx, cluster, &transitions).await;
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
        let initial = status::first(
            previous,
            &plan.target_primary,
            validated.model.postgres_version,
            generation,
            &Time(now),
        );
        report::write_status(ctx, cluster, &initial).await?;
        info!(cluster = %name, primary = %plan.target_primary, "chose the first primary");
        return Ok(Action::requeue(Duration::ZERO));
    }

    observed.operator_build = Some(crate::agents::binary::build());
    observed.lease = ctx.leases.view(&namespace, &name);
    // Woken just ahead of an expiry (see `leases::spawn`): wait the rest
    // out here, since another request would be held back by the debounce.
    if let Some(left) = observed
        .lease
        .as_ref()
        .and_then(|l| l.until_expiry())
        .filter(|left| *left <= LEASE_LEAD)
    {
        tokio::time::sleep(left).await;
        observed.lease = ctx.leases.view(&namespace, &name);
    }
    if let Some(lease) = &observed.lease {
        observed.versions.insert(
            format!("Lease/{}", names::primary_lease(&name)),
            lease.metadata_version.clone(),
        );
    }

    let mut plan = plan::plan(&validated.model, &observed, previous)?;
    let mut working = previous.cloned().unwrap_or_default();
    let executor = Executor {
        ctx,
        cluster,
        model: &validated.model,
        observed: &observed,
        agents: agents.as_deref(),
    };
    if executor.run(&plan.operation, &mut working).await? == Next::Restart {
        return Ok(Action::requeue(Duration::ZERO));
    }
    executor.verify(&plan.verification).await;

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
    plan.schedules.keep_uncreated(&applied.created_backups);
    let mut problems: Vec<String> = applied.refused.clone();
    if let Some(e) = &apply_error {
        problems.push(e.to_string());
    }
    // A failing restore says more than anything else that waits.
    let blocked = restore::blocked(
        &validated.model,
        &observed.reports,
        &plan.target_primary,
        previous,
    )
    .or(validated.blocked)
    .or_else(|| plan.tls_refused.clone())
    .or_else(|| plan.volumes.refused.clone())
    .or_else(|| super::cluster::validate::refused_parameters(&observed.reports));
    let (new_status, transitions) = status::compute(&Report {
        model: &validated.model,
        observed: &observed,
        plan: &plan,
        previous: Some(&working),
        generation,
        now: Time(now),
        blocked: blocked.as_ref(),
        apply_error: (!problems.is_empty()).then(|| problems.join("; ")),
    });
    if cluster.status.as_ref() != Some(&new_status) {
        report::write_status(ctx, cluster, &new_status).await?;
    }
    report::publish(ctx, cluster, &operation_events(&plan, &applied)).await;
    report::publish(ctx, cluster, &transitions).await;
    if let Some(e) = apply_error {
        return Err(e.into());
    }
    let settled =
        plan.operation.is_idle() && status::condition_is(Some(&new_status), status::READY, "True");
    let failing_over = matches!(plan.operation, Operation::Failover(_));
    // A backup in flight is followed through the agent's report, a
    // verification through its pod (whose events go to the backup, not here).
    let backing_up = observed.backups.iter().any(backup::in_flight) || plan.verification.active;
    // New settings reach the pods through the kubelet's ConfigMap sync (up
    // to a minute or so); what they need (a restart) shows only in the
    // instances' reports, which nothing announces: look again meanwhile.
    let settings_landing = ctx.applied.settings_written_within(
        &validated.model.uid,
        &validated.model.name,
        SETTINGS_FOLLOW_UP,
    );
    let wait = if failing_over {
        HA_REQUEUE
    } else if backing_up {
        BACKUP_REQUEUE
    } else if settings_landing {
        SETTINGS_REQUEUE
    } else if settled {
        settled_wait(&validated.model, ctx.config.resync)
    } else {
        PROGRESS_REQUEUE
    };
    Ok(Action::requeue(until_scheduled(wait, &plan, now)))
}

/// How long a settled cluster waits for its next look: the resync, or
/// with backups configured its `archive.timeout` (at least 10 s), so
/// `status.backup.lastArchivedWal` is never older than about one archive
/// period. Costs agent questions only: an unchanged status is not written.
fn settled_wait(model: &crate::resources::model::Model, resync: Duration) -> Duration {
    let archiving = model.spec.backup.as_ref().map_or(resync, |b| {
        let archive = Duration::from_secs(crate::resources::backup::archive_timeout_seconds(b));
        resync.min(archive.max(Duration::from_secs(10)))
    });
    // Nothing announces a filling disk but the instances' reports.
    let spec = &model.spec;
    let growing = std::iter::once(&spec.storage)
        .chain(spec.wal_storage.as_ref())
        .any(|s| s.auto_grow.is_some());
    if growing {
        archiving.min(AUTO_GROW_LOOK)
    } else {
        archiving
    }
}

/// `wait`, or less when a schedule's next run comes first (a second
/// late, so the run is due when the reconcile looks).
fn until_scheduled(wait: Duration, plan: &Plan, now: jiff::Timestamp) -> Duration {
    let certificates = plan
        .certificates_due_at
        .and_then(|at| jiff::Timestamp::from_second(at).ok());
    plan.schedules
        .wake_at
        .into_iter()
        .chain(certificates)
        .filter_map(|at| Duration::try_from(at.duration_since(now)).ok())
        .min()
        .map_or(wait, |d| wait.min(d + Duration::from_secs(1)))
}

/// Events for what this reconcile did, one per kind of action (Events with
/// the same reason are merged into a series by the recorder, so details of
/// later ones would be lost).
fn operation_events(plan: &Plan, applied: &Applied) -> Vec<Transition> {
    let mut out = vec![];
    let mut add = |warning: bool, reason: &'static str, items: Vec<String>| {
        if !items.is_empty() {
            out.push(Transition {
                warning,
                reason,
                message: items.join("; "),
            });
        }
    };
    add(
        false,
        reason::CREATED_INSTANCES,
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
        reason::DELETED_PODS,
        applied
            .deleted
            .iter()
            .filter_map(|d| match d {
                Deletion::Pod(p) => Some(format!("deleted pod {p}: {}", plan.operation.describe())),
                _ => None,
            })
            .collect(),
    );
    add(
        false,
        reason::DELETED_VOLUMES,
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
        reason::CREATED_SECRETS,
        applied
            .created_secrets
            .iter()
            .map(|s| format!("generated {s}"))
            .collect(),
    );
    add(
        false,
        reason::ISSUED_CERTIFICATES,
        applied
            .issued
            .iter()
            .map(|(kind, reason)| format!("issued the {kind:?} certificate ({reason:?})"))
            .collect(),
    );
    add(false, reason::VOLUME_GROWN, plan.volumes.grown.clone());
    add(
        false,
        reason::CA_ROTATION,
        applied
            .ca_steps
            .iter()
            .map(|step| match step {
                tls::CaStep::PrepareNext => "created the next cluster CA; every ca.crt now trusts both, certificates move to it later".to_string(),
                tls::CaStep::PromoteNext => "certificates are now issued by the new cluster CA; the old one stays trusted until it expires".to_string(),
                tls::CaStep::DropPrevious => "the old cluster CA expired and is no longer trusted".to_string(),
            })
            .collect(),
    );
    add(
        false,
        reason::BACKUP_SCHEDULED,
        applied
            .created_backups
            .iter()
            .map(|b| format!("created PostgresBackup {b} for its schedule"))
            .collect(),
    );
    add(
        false,
        reason::BACKUP_EXPIRED,
        applied
            .deleted
            .iter()
            .filter_map(|d| match d {
                Deletion::ExpiredBackup { name, label, repository } => Some(format!(
                    "deleted PostgresBackup {name}: pgBackRest expired its backup {label} from {repository} (spec.backup.repositories[].retention)"
                )),
                _ => None,
            })
            .collect(),
    );
    add(
        false,
        reason::FAILED_BACKUPS_PRUNED,
        applied
            .deleted
            .iter()
            .filter_map(|d| match d {
                Deletion::FailedBackup { name, schedule } => Some(format!(
                    "deleted PostgresBackup {name}: schedule {schedule} keeps its newest {} failed ones",
                    super::cluster::retention::FAILED_KEPT_PER_SCHEDULE
                )),
                _ => None,
            })
            .collect(),
    );
    add(true, reason::APPLY_REFUSED, applied.refused.clone());
    out
}

pub fn error_policy(cluster: Arc<PostgresCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    if error.is_conflict() {
        // Our copy was stale; the watch brings the new one at once.
        debug!(cluster = %cluster.name_any(), "conflict; reconciling again");
        return Action::requeue(CONFLICT_REQUEUE);
    }
    let category = error.category();
    ctx.metrics.error(category);
    let wait = ctx.backoff(&key(&cluster));
    let message = error.to_string();
    let regarding = cluster.clone();
    tokio::spawn(async move {
        report::event(&ctx, &regarding, true, category.reason(), message).await;
    });
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
    ctx.metrics.watch_clusters(store.clone());
    let clusters = store.clone();
    let pruning = ctx.clone();
    let pruner = tokio::spawn(async move {
        loop {
            tokio::time::sleep(PRUNE_EVERY).await;
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
        LEASE_LEAD,
    );
    let Some(w) = ctx.take_writers() else {
        warn!("the watch caches are fed already; not starting a second controller");
        return;
    };
    // Children are watched once into the caches `observe` reads, and each
    // change triggers its owner's reconcile. managedFields are dropped before
    // caching: nothing reads them, and on pods they are a third of the object.
    fn cached<K>(
        writer: Writer<K>,
        events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    ) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
    where
        K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
    {
        let events = events.modify(|o| o.meta_mut().managed_fields = None);
        reflector(writer, events)
            .default_backoff()
            .touched_objects()
    }
    // For the metadata-only kinds, `Api<PartialObjectMeta<_>>` makes the
    // watch ask for metadata, so only that crosses the wire.
    fn watch<K>(
        client: &kube::Client,
        ns: &Option<String>,
        config: &watcher::Config,
    ) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + 'static,
    {
        watcher::watcher(api::<K>(client, ns), config.clone())
    }
    let c = &children;
    controller
        .reconcile_on(futures::stream::poll_fn(move |cx| expired.poll_recv(cx)))
        .owns_stream(cached(w.pods, watch(&client, &ns, c)))
        .owns_stream(cached(w.pvcs, watch(&client, &ns, c)))
        .owns_stream(cached(w.deployments, watch(&client, &ns, c)))
        .owns_stream(cached(w.secrets, watch(&client, &ns, c)))
        .owns_stream(cached(
            w.services,
            watch::<PartialObjectMeta<Service>>(&client, &ns, c),
        ))
        .owns_stream(cached(
            w.config_maps,
            watch::<PartialObjectMeta<ConfigMap>>(&client, &ns, c),
        ))
        .owns_stream(cached(
            w.service_accounts,
            watch::<PartialObjectMeta<ServiceAccount>>(&client, &ns, c),
        ))
        .owns_stream(cached(
            w.roles,
            watch::<PartialObjectMeta<Role>>(&client, &ns, c),
        ))
        .owns_stream(cached(
            w.role_bindings,
            watch::<PartialObjectMeta<RoleBinding>>(&client, &ns, c),
        ))
        .owns_stream(cached(
            w.pdbs,
            watch::<PartialObjectMeta<PodDisruptionBudget>>(&client, &ns, c),
        ))
        // A backup names its cluster in spec; any change reconciles that one.
        .watches_stream(
            cached(
                w.backups,
                watch::<PostgresBackup>(&client, &ns, &watcher::Config::default()),
            ),
            |b: PostgresBackup| {
                let ns = b.namespace();
                std::iter::once(
                    ObjectRef::new(&b.spec.cluster).within(ns.as_deref().unwrap_or_default()),
                )
            },
        )
        // A user's Secret that `spec.tls.provided` (cert-manager renews
        // it) or `spec.roles` (a rotated password) names: metadata only,
        // mapped to the clusters naming it.
        .watches_stream(
            watch::<PartialObjectMeta<Secret>>(&client, &ns, &watcher::Config::default())
                .default_backoff()
                .touched_objects(),
            move |secret: PartialObjectMeta<Secret>| {
                let ns = secret.namespace().unwrap_or_default();
                let name = secret.name_any();
                clusters
                    .state()
                    .iter()
                    .filter(|c| c.namespace().as_deref() == Some(ns.as_str()))
                    .filter(|c| provides(c, &name) || holds_role_password(c, &name))
                    .map(|c| ObjectRef::from_obj(c.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
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

/// `cluster` takes certificates from the Secret `name`.
fn provides(cluster: &PostgresCluster, name: &str) -> bool {
    let tls = &cluster.spec.tls;
    tls.mode == crate::api::TlsMode::Provided
        && tls.provided.as_ref().is_some_and(|p| {
            [
                &p.ca_secret_name,
                &p.server_secret_name,
                &p.replication_secret_name,
                &p.pooler_secret_name,
            ]
            .iter()
            .any(|s| s.as_str() == name)
        })
}

/// `cluster` takes a role's password from the Secret `name`.
fn holds_role_password(cluster: &PostgresCluster, name: &str) -> bool {
    cluster
        .spec
        .roles
        .iter()
        .any(|r| r.password_secret.as_ref().is_some_and(|s| s.name == name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::model::fixtures::model;

    #[test]
    fn a_settled_cluster_with_backups_looks_again_once_per_archive_period() {
        let resync = Duration::from_secs(300);
        let mut m = model();
        assert_eq!(settled_wait(&m, resync), resync, "no backups: the resync");
        let with_timeout = |t: &str| {
            serde_json::from_value(serde_json::json!({
                "repositories": [{"name": "repo1", "s3": {
                    "bucket": "b", "endpoint": "s3.example", "region": "r",
                    "credentials": {"secretName": "k"}}}],
                "archive": {"timeout": t}
            }))
            .unwrap()
        };
        m.spec.backup = Some(with_timeout("60s"));
        assert_eq!(settled_wait(&m, resync), Duration::from_secs(60));
        m.spec.backup = Some(with_timeout("1s"));
        assert_eq!(
            settled_wait(&m, resync),
            Duration::from_secs(10),
            "at least 10 s"
        );
        m.spec.backup = Some(with_timeout("1h"));
        assert_eq!(settled_wait(&m, resync), resync, "never past the resync");
        m.spec.storage.auto_grow = Some(crate::api::AutoGrowSpec {
            threshold: 80,
            increment: k8s_openapi::apimachinery::pkg::api::resource::Quantity("1Gi".into()),
            limit: k8s_openapi::apimachinery::pkg::api::resource::Quantity("10Gi".into()),
        });
        assert_eq!(
            settled_wait(&m, resync),
            AUTO_GROW_LOOK,
            "volumes that grow are read often"
        );
    }
}
