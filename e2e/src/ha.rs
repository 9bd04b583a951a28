//! Steps of the high-availability scenarios, through the Kubernetes API and
//! the cluster's Service names only: create an HA cluster, read what its
//! status says about the primary, failovers and switchovers, request a
//! switchover, and connect as its clients do.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use capstan::api::{
    FailoverStatus, InstanceStatus, PostgresCluster, RetentionRule, SwitchoverStatus,
};
use capstan::contract::layout::{POOLER_PORT, POSTGRES_PORT};
use capstan::resources::{labels, names};
use kube::Api;
use kube::api::{Patch, PatchParams};

use crate::E2eError;
use crate::cluster::{self, FIELD_MANAGER};
use crate::harness::{ensure_namespace, wait_for};
use crate::sql::{self, Login};
use crate::target::Target;

/// Detection bound the scenarios use (`spec.failover.detectionSeconds`).
pub const DETECTION_SECONDS: i32 = 4;
/// Creation of three instances and two poolers.
pub const READY_WITHIN: Duration = Duration::from_secs(180);
/// From a lost primary to a completed failover: detection, promotion and
/// the repointing, with room for a slow machine.
pub const FAILOVER_WITHIN: Duration = Duration::from_secs(90);
/// A switchover, requested to completed.
pub const SWITCHOVER_WITHIN: Duration = Duration::from_secs(90);
/// An old primary back as a streaming replica (pg_rewind or a re-clone).
pub const REJOIN_WITHIN: Duration = Duration::from_secs(180);
/// Table the writers fill with numbered rows.
pub const WRITES_TABLE: &str = "ha_writes";

/// Status polling interval: fine enough to see short phases.
const POLL: Duration = Duration::from_millis(100);

/// A Service or pod address with the name its certificate carries.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub host: String,
    pub addr: SocketAddr,
}

/// Who connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum As {
    /// The application user, to the application database.
    App,
    /// The superuser, to `postgres`.
    Superuser,
}

/// An HA cluster under test and its clients' credentials.
#[derive(Clone, Debug)]
pub struct HaCluster {
    pub ns: String,
    pub name: String,
    pub ca: String,
    pub user: String,
    pub password: String,
    pub dbname: String,
    pub superuser_password: String,
}

/// `examples/<file>` in `ns` with the scenarios' settings: detection after
/// [`DETECTION_SECONDS`], volumes deleted with the cluster (cleanup is one
/// delete).
pub fn ha_example(file: &str, ns: &str) -> Result<PostgresCluster, E2eError> {
    let mut c = cluster::load_example(&cluster::example(file), ns)?;
    c.spec.failover.detection_seconds = DETECTION_SECONDS;
    c.spec.storage.retention.when_deleted = RetentionRule::Delete;
    Ok(c)
}

impl HaCluster {
    /// Applies `cluster` in its namespace, waits until it is Ready, loads
    /// the credentials and creates [`WRITES_TABLE`] through the pooler.
    pub async fn create(target: &Target, cluster: &PostgresCluster) -> Result<HaCluster, E2eError> {
        let client = target.client();
        let ns = cluster.metadata.namespace.clone().unwrap_or_default();
        let name = cluster.metadata.name.clone().unwrap_or_default();
        ensure_namespace(&client, &ns).await?;
        let started = std::time::Instant::now();
        cluster::apply(&client, cluster).await?;
        let ready = cluster::wait_ready(&client, &ns, &name, READY_WITHIN).await?;
        // The CA clients trust: Capstan's `<name>-ca`, or the user's own
        // with provided certificates.
        let ca_secret = ready
            .status
            .as_ref()
            .and_then(|s| s.tls.as_ref())
            .map_or_else(|| names::ca_secret(&name), |t| t.ca_secret.clone());
        eprintln!(
            "[{ns}] cluster {name} Ready after {:.1}s",
            started.elapsed().as_secs_f64()
        );
        let secret = |s: String, key: &'static str| {
            let client = client.clone();
            let ns = ns.clone();
            async move { cluster::secret_value(&client, &ns, &s, key).await }
        };
        let ha = HaCluster {
            ca: secret(ca_secret, "ca.crt").await?,
            user: secret(names::app_secret(&name), "username").await?,
            password: secret(names::app_secret(&name), "password").await?,
            dbname: secret(names::app_secret(&name), "dbname").await?,
            superuser_password: secret(names::superuser_secret(&name), "password").await?,
            ns,
            name,
        };
        let conn = ha.connect(&ha.pooler(target).await?, As::App).await?;
        conn.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {WRITES_TABLE} (n bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"
        ))
        .await
        .map_err(|e| E2eError::Sql(format!("create {WRITES_TABLE}: {e}")))?;
        Ok(ha)
    }

    /// `<name>-<suffix>.<ns>.svc` and where it is reachable from here.
    pub async fn service(&self, target: &Target, service: &str) -> Result<Endpoint, E2eError> {
        Ok(Endpoint {
            host: format!("{service}.{}.svc", self.ns),
            addr: target
                .service_addr(&self.ns, service, POSTGRES_PORT)
                .await?,
        })
    }

    /// The pooler Service: where applications connect.
    pub async fn pooler(&self, target: &Target) -> Result<Endpoint, E2eError> {
        self.service(target, &names::pooler(&self.name)).await
    }

    /// The primary Service.
    pub async fn rw(&self, target: &Target) -> Result<Endpoint, E2eError> {
        self.service(target, &names::rw_service(&self.name)).await
    }

    /// One instance pod directly, verified against the name of the `-r`
    /// Service (every instance's certificate carries it).
    pub async fn pod(&self, target: &Target, instance: &str) -> Result<Endpoint, E2eError> {
        Ok(Endpoint {
            host: format!("{}.{}.svc", names::r_service(&self.name), self.ns),
            addr: target.pod_addr(&self.ns, instance, POSTGRES_PORT).await?,
        })
    }

    pub fn login<'a>(&'a self, endpoint: &'a Endpoint, who: As) -> Login<'a> {
        let (dbname, user, password) = match who {
            As::App => (
                self.dbname.as_str(),
                self.user.as_str(),
                self.password.as_str(),
            ),
            As::Superuser => ("postgres", "postgres", self.superuser_password.as_str()),
        };
        Login {
            host: &endpoint.host,
            addr: endpoint.addr,
            dbname,
            user,
            password,
            ca_pem: &self.ca,
        }
    }

    pub async fn connect(
        &self,
        endpoint: &Endpoint,
        who: As,
    ) -> Result<tokio_postgres::Client, E2eError> {
        sql::connect(&self.login(endpoint, who)).await
    }

    /// `pg_postmaster_start_time()` of each instance: unchanged means
    /// reloaded, never restarted.
    pub async fn start_times(
        &self,
        target: &Target,
        instances: &[String],
    ) -> Result<BTreeMap<String, String>, E2eError> {
        let mut out = BTreeMap::new();
        for name in instances {
            let admin = self
                .connect(&self.pod(target, name).await?, As::Superuser)
                .await?;
            let t = sql::value(&admin, "SELECT pg_postmaster_start_time()::text").await?;
            out.insert(name.clone(), t);
        }
        Ok(out)
    }

    /// The cluster as the API server has it now.
    pub async fn get(&self, target: &Target) -> Result<PostgresCluster, E2eError> {
        cluster::get(&target.client(), &self.ns, &self.name).await
    }

    /// Every number in [`WRITES_TABLE`], read at `endpoint` (a primary or
    /// a replica) as the application user.
    pub async fn written(&self, endpoint: &Endpoint) -> Result<BTreeSet<i64>, E2eError> {
        let conn = self.connect(endpoint, As::App).await?;
        let rows = sql::column(&conn, &format!("SELECT n FROM {WRITES_TABLE}")).await?;
        rows.into_iter()
            .flatten()
            .map(|n| {
                n.parse()
                    .map_err(|_| E2eError::Sql(format!("{WRITES_TABLE}.n {n:?} is not a number")))
            })
            .collect()
    }

    /// Waits until `replicas` standbys have replayed everything the
    /// primary had written when this was called.
    pub async fn wait_replicated(
        &self,
        target: &Target,
        replicas: usize,
        timeout: Duration,
    ) -> Result<(), E2eError> {
        let admin = self.connect(&self.rw(target).await?, As::Superuser).await?;
        let lsn = sql::value(&admin, "SELECT pg_current_wal_lsn()").await?;
        let query =
            format!("SELECT count(*) FROM pg_stat_replication WHERE replay_lsn >= '{lsn}'::pg_lsn");
        wait_for(
            &format!("{replicas} replicas to replay up to {lsn}"),
            timeout,
            Duration::from_millis(100),
            || async {
                let n: usize = sql::value(&admin, &query).await.ok()?.parse().ok()?;
                (n >= replicas).then_some(())
            },
        )
        .await
    }

    /// Waits until each of `replicas` streams from the primary behind
    /// `<name>-rw` (listed in its `pg_stat_replication` as `streaming`).
    pub async fn wait_streaming(
        &self,
        target: &Target,
        replicas: &[&str],
        timeout: Duration,
    ) -> Result<(), E2eError> {
        let rw = self.rw(target).await?;
        wait_for(
            &format!("{replicas:?} streaming from the primary"),
            timeout,
            Duration::from_millis(100),
            || async {
                let admin = self.connect(&rw, As::Superuser).await.ok()?;
                let streaming = sql::column(
                    &admin,
                    "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'",
                )
                .await
                .ok()?;
                replicas
                    .iter()
                    .all(|r| streaming.iter().flatten().any(|s| s == r))
                    .then_some(())
            },
        )
        .await
    }

    /// `pg_is_in_recovery()` on `instance`, asked directly.
    pub async fn in_recovery(&self, target: &Target, instance: &str) -> Result<bool, E2eError> {
        let conn = self
            .connect(&self.pod(target, instance).await?, As::App)
            .await?;
        Ok(sql::value(&conn, "SELECT pg_is_in_recovery()").await? == "t")
    }

    /// Waits until the status names a ready primary other than `old`, with a
    /// completed failover away from `old`. A `Blocked` failover fails at once.
    pub async fn wait_failover(
        &self,
        target: &Target,
        old: &str,
        timeout: Duration,
    ) -> Result<(PostgresCluster, FailoverStatus), E2eError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(c) = self.get(target).await
                && let Some(f) = failover(&c).filter(|f| f.from == old)
            {
                if f.phase == "Blocked" {
                    return Err(E2eError::Check(format!(
                        "failover from {old} blocked: {}",
                        f.message
                    )));
                }
                let moved = current_primary(&c).is_some_and(|p| *p == f.to && p != old);
                if f.phase == "Completed" && moved && target_primary(&c) == Some(&f.to) {
                    return Ok((c.clone(), f.clone()));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let now = self.get(target).await.ok();
                return Err(E2eError::Timeout(
                    format!(
                        "a completed failover away from {old} (status now: {})",
                        now.as_ref().map(status_summary).unwrap_or_default()
                    ),
                    timeout,
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Freezes the primary (SIGSTOP of every process of its pod; harness
    /// only) and waits for a completed failover away from it: (old
    /// primary, new primary).
    pub async fn fail_over(&self, target: &mut Target) -> Result<(String, String), E2eError> {
        let old = current_primary(&self.get(target).await?)
            .cloned()
            .ok_or_else(|| E2eError::Check("no current primary".into()))?;
        let frozen = target
            .harness()
            .ok_or_else(|| E2eError::Setup("freezing a pod needs the local harness".into()))?
            .runtime()
            .freeze_pod(&self.ns, &old)
            .map_err(|e| E2eError::Check(format!("freeze {old}: {e}")))?;
        let t0 = std::time::Instant::now();
        eprintln!("[{}] froze primary {old} ({frozen} processes)", self.ns);
        let (_, failover) = self.wait_failover(target, &old, FAILOVER_WITHIN).await?;
        eprintln!(
            "[{}] failover {old} -> {} completed {:.1}s after the freeze",
            self.ns,
            failover.to,
            t0.elapsed().as_secs_f64()
        );
        Ok((old, failover.to))
    }

    /// Waits until `instance` is listed as a ready replica and answers as
    /// one (`pg_is_in_recovery()` asked on its pod): the status alone may
    /// still describe it from before it was lost.
    pub async fn wait_replica(
        &self,
        target: &Target,
        instance: &str,
        timeout: Duration,
    ) -> Result<InstanceStatus, E2eError> {
        wait_for(
            &format!("{instance} back as a ready replica"),
            timeout,
            Duration::from_millis(250),
            || async {
                let c = self.get(target).await.ok()?;
                let status = instance_status(&c, instance)
                    .filter(|i| i.role == labels::ROLE_REPLICA && i.ready)
                    .cloned()?;
                self.in_recovery(target, instance)
                    .await
                    .ok()
                    .filter(|r| *r)
                    .map(|_| status)
            },
        )
        .await
    }

    /// Waits until `status.currentPrimary` is `instance`.
    pub async fn wait_current_primary(
        &self,
        target: &Target,
        instance: &str,
        timeout: Duration,
    ) -> Result<PostgresCluster, E2eError> {
        wait_for(
            &format!("currentPrimary {instance}"),
            timeout,
            POLL,
            || async {
                let c = self.get(target).await.ok()?;
                (current_primary(&c).map(String::as_str) == Some(instance)).then_some(c)
            },
        )
        .await
    }

    /// Waits until every instance is ready and the cluster reports Ready.
    pub async fn wait_ready(
        &self,
        target: &Target,
        timeout: Duration,
    ) -> Result<PostgresCluster, E2eError> {
        cluster::wait_ready(&target.client(), &self.ns, &self.name, timeout).await
    }

    /// Sets the `capstan.dev/switchover` annotation to `request`.
    pub async fn request_switchover(&self, target: &Target, request: &str) -> Result<(), E2eError> {
        let api: Api<PostgresCluster> = Api::namespaced(target.client(), &self.ns);
        let patch = serde_json::json!({
            "metadata": {"annotations": {labels::SWITCHOVER_ANNOTATION: request}}
        });
        api.patch(
            &self.name,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            },
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|e| E2eError::Kube(format!("annotate {}/{}", self.ns, self.name), e))?;
        Ok(())
    }

    /// Waits until the switchover `request` is `Completed`; `Failed` fails.
    pub async fn wait_switchover(
        &self,
        target: &Target,
        request: &str,
        timeout: Duration,
    ) -> Result<(PostgresCluster, SwitchoverStatus), E2eError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(c) = self.get(target).await
                && let Some(s) = switchover(&c).filter(|s| s.request == request)
            {
                match s.phase.as_str() {
                    "Completed" => return Ok((c.clone(), s.clone())),
                    "Failed" => {
                        return Err(E2eError::Check(format!(
                            "switchover {request} failed: {}",
                            s.message
                        )));
                    }
                    _ => {}
                }
            }
            if tokio::time::Instant::now() >= deadline {
                let now = self.get(target).await.ok();
                return Err(E2eError::Timeout(
                    format!(
                        "switchover {request} to complete (status now: {})",
                        now.as_ref().map(status_summary).unwrap_or_default()
                    ),
                    timeout,
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The instance pods that are not being deleted.
    pub async fn instance_pods(
        &self,
        target: &Target,
    ) -> Result<Vec<k8s_openapi::api::core::v1::Pod>, E2eError> {
        self.pods(target, &labels::instances_selector(&self.name))
            .await
    }

    /// The pooler pods that are not being deleted.
    pub async fn pooler_pods(
        &self,
        target: &Target,
    ) -> Result<Vec<k8s_openapi::api::core::v1::Pod>, E2eError> {
        self.pods(target, &labels::pooler_selector(&self.name))
            .await
    }

    /// Each pooler pod directly, verified against the pooler Service's name:
    /// a check through the Service reaches one pod of several at a time.
    pub async fn pooler_pod_endpoints(
        &self,
        target: &Target,
    ) -> Result<Vec<(String, Endpoint)>, E2eError> {
        let host = format!("{}.{}.svc", names::pooler(&self.name), self.ns);
        let mut out = Vec::new();
        for pod in self.pooler_pods(target).await? {
            let name = pod.metadata.name.unwrap_or_default();
            let addr = target.pod_addr(&self.ns, &name, POOLER_PORT).await?;
            out.push((
                name,
                Endpoint {
                    host: host.clone(),
                    addr,
                },
            ));
        }
        Ok(out)
    }

    async fn pods(
        &self,
        target: &Target,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<k8s_openapi::api::core::v1::Pod>, E2eError> {
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(target.client(), &self.ns);
        let pods = api
            .list(&kube::api::ListParams::default().labels(&labels::to_selector(selector)))
            .await
            .map_err(|e| E2eError::Kube(format!("list pods of {}", self.name), e))?;
        Ok(pods
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect())
    }

    /// Instance pod name → uid (a new uid: the pod was re-created).
    pub async fn pod_uids(
        &self,
        target: &Target,
    ) -> Result<std::collections::BTreeMap<String, String>, E2eError> {
        Ok(self
            .instance_pods(target)
            .await?
            .into_iter()
            .filter_map(|p| Some((p.metadata.name?, p.metadata.uid?)))
            .collect())
    }

    /// Deletes the cluster (its volumes go with it, see [`ha_example`]) and
    /// waits until nothing of it is left.
    pub async fn delete(&self, target: &Target) -> Result<(), E2eError> {
        let client = target.client();
        cluster::delete(&client, &self.ns, &self.name).await?;
        wait_for(
            "cluster objects gone",
            Duration::from_secs(120),
            Duration::from_millis(500),
            || async {
                let children = cluster::children(&client, &self.ns, &self.name)
                    .await
                    .ok()?;
                let volumes = cluster::volumes(&client, &self.ns, &self.name).await.ok()?;
                (children.is_empty() && volumes.is_empty()).then_some(())
            },
        )
        .await
    }
}

/// The instances `status.instances` lists, by name.
pub fn instance_names(c: &PostgresCluster) -> Vec<String> {
    c.status
        .iter()
        .flat_map(|s| &s.instances)
        .map(|i| i.name.clone())
        .collect()
}

pub fn current_primary(c: &PostgresCluster) -> Option<&String> {
    c.status.as_ref()?.current_primary.as_ref()
}

pub fn target_primary(c: &PostgresCluster) -> Option<&String> {
    c.status.as_ref()?.target_primary.as_ref()
}

pub fn failover(c: &PostgresCluster) -> Option<&FailoverStatus> {
    c.status.as_ref()?.failover.as_ref()
}

pub fn switchover(c: &PostgresCluster) -> Option<&SwitchoverStatus> {
    c.status.as_ref()?.switchover.as_ref()
}

pub fn instance_status<'a>(c: &'a PostgresCluster, name: &str) -> Option<&'a InstanceStatus> {
    c.status.as_ref()?.instances.iter().find(|i| i.name == name)
}

/// A ready replica, other than `except`, to switch over to.
pub fn ready_replica(c: &PostgresCluster, except: &[&str]) -> Option<String> {
    c.status
        .as_ref()?
        .instances
        .iter()
        .find(|i| i.role == labels::ROLE_REPLICA && i.ready && !except.contains(&i.name.as_str()))
        .map(|i| i.name.clone())
}

/// One line on the primary, instances and operations, for messages.
pub fn status_summary(c: &PostgresCluster) -> String {
    let Some(s) = c.status.as_ref() else {
        return "no status".into();
    };
    let instances: Vec<String> = s
        .instances
        .iter()
        .map(|i| {
            format!(
                "{}:{}{}{}",
                i.name,
                i.role,
                if i.ready { "" } else { "(not ready)" },
                i.timeline.map(|t| format!(",tl{t}")).unwrap_or_default()
            )
        })
        .collect();
    format!(
        "phase {:?}, target {:?}, current {:?}, instances [{}], failover {:?}, switchover {:?}",
        s.phase.map(|p| p.as_str()),
        s.target_primary,
        s.current_primary,
        instances.join(" "),
        s.failover
            .as_ref()
            .map(|f| format!("{} {}->{} ({})", f.phase, f.from, f.to, f.message)),
        s.switchover.as_ref().map(|w| format!(
            "{} {} {}->{} ({})",
            w.request, w.phase, w.from, w.to, w.message
        )),
    )
}
