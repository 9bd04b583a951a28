//! ConfigMap `<name>-config`: the settings documents the agents read.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::labels;
use super::model::{Model, UpgradeStage};
use super::names;
use crate::api::{Ensure, SynchronousMode};
use crate::contract::layout::{self, files};
use crate::contract::roles::{DatabaseSettings, RoleSettings};
use crate::contract::settings::{
    FencingSettings, InitdbSettings, InstanceSettings, PoolerSettings, SynchronousMode as SyncMode,
    SynchronousSettings,
};
use crate::contract::upgrade::MajorUpgradeSettings;

pub fn instance_settings(model: &Model, instances: &[String]) -> InstanceSettings {
    let spec = &model.spec;
    // From the old primary's stop on, the pods that start run the new major
    // and are told which one their data may still be.
    let (postgres_version, major_upgrade) = match &model.upgrade {
        Some(u) if u.stage != UpgradeStage::Preparing => (
            u.to,
            Some(MajorUpgradeSettings {
                from_version: u32::try_from(u.from).unwrap_or_default(),
            }),
        ),
        _ => (model.postgres_version, None),
    };
    let initdb = &spec.bootstrap.initdb_or_default();
    InstanceSettings {
        cluster: model.name.clone(),
        namespace: model.namespace.clone(),
        postgres_version,
        parameters: spec.postgres.parameters.clone(),
        hba: spec.postgres.hba.clone(),
        initdb: InitdbSettings {
            database: initdb.database.clone(),
            owner: initdb.owner.clone(),
            encoding: initdb.encoding.clone(),
            locale: initdb.locale.clone(),
            data_checksums: initdb.data_checksums,
        },
        primary_host: names::rw_service(&model.name),
        primary_port: layout::POSTGRES_PORT,
        instances: instances.to_vec(),
        separate_wal: spec.wal_storage.is_some(),
        fencing: Some(fencing(model)),
        synchronous: SynchronousSettings {
            mode: match spec.replication.synchronous.mode {
                SynchronousMode::Off => SyncMode::Off,
                SynchronousMode::Quorum => SyncMode::Quorum,
                SynchronousMode::Priority => SyncMode::Priority,
            },
            number: u32::try_from(spec.replication.synchronous.number).unwrap_or(0),
        },
        backup: super::backup::settings(model),
        restore: super::restore::settings(model),
        major_upgrade,
        roles: roles(spec),
        databases: databases(spec),
    }
}

fn roles(spec: &crate::api::PostgresClusterSpec) -> Vec<RoleSettings> {
    spec.roles
        .iter()
        .map(|r| RoleSettings {
            name: r.name.clone(),
            present: r.ensure == Ensure::Present,
            login: r.login,
            create_db: r.create_db,
            connection_limit: r.connection_limit,
            in_roles: r.in_roles.clone(),
            password_from: r
                .password_secret
                .as_ref()
                .map(|s| format!("{}/{}", s.name, s.key)),
        })
        .collect()
}

fn databases(spec: &crate::api::PostgresClusterSpec) -> Vec<DatabaseSettings> {
    spec.databases
        .iter()
        .map(|d| DatabaseSettings {
            name: d.name.clone(),
            owner: d.owner.clone(),
            present: d.ensure == Ensure::Present,
            drop: d.ensure == Ensure::Absent && d.confirm_drop.as_deref() == Some(d.name.as_str()),
            extensions: d.extensions.clone(),
        })
        .collect()
}

/// Lease timing from `spec.failover.detectionSeconds` (D): the primary
/// renews every D/4 and fences itself after D/2 without a renewal; the
/// operator promotes another instance only after D without one. So the old
/// primary has stopped writing D/2 before any other can start, a margin for
/// the fence itself (an immediate stop, well under a second) and for the
/// latency of the renewal the operator saw last.
pub fn fencing(model: &Model) -> FencingSettings {
    let d = u64::try_from(model.spec.failover.detection_seconds.max(2)).unwrap_or(4) * 1000;
    FencingSettings {
        lease_name: names::primary_lease(&model.name),
        lease_duration_ms: d,
        renew_interval_ms: d / 4,
        fence_after_ms: d / 2,
    }
}

pub fn pooler_settings(model: &Model) -> PoolerSettings {
    let pgb = &model.spec.proxy.pgbouncer;
    PoolerSettings {
        cluster: model.name.clone(),
        namespace: model.namespace.clone(),
        backend_host: names::rw_service(&model.name),
        backend_port: layout::POSTGRES_PORT,
        pool_mode: pgb.pool_mode.as_str().to_string(),
        max_client_conn: pgb.max_client_conn,
        default_pool_size: pgb.default_pool_size,
        parameters: pgb.parameters.clone(),
    }
}

/// The ConfigMap, with each document pretty-printed so `kubectl get -o yaml`
/// stays readable.
pub fn config_map(model: &Model, instances: &[String]) -> Result<ConfigMap, serde_json::Error> {
    let instance = serde_json::to_string_pretty(&instance_settings(model, instances))?;
    let pooler = serde_json::to_string_pretty(&pooler_settings(model))?;
    Ok(ConfigMap {
        metadata: model.child_meta(
            names::config_map(&model.name),
            labels::common(&model.name, labels::COMPONENT_CONTROL),
        ),
        data: Some(BTreeMap::from([
            (files::INSTANCE_SETTINGS.to_string(), instance),
            (files::POOLER_SETTINGS.to_string(), pooler),
        ])),
        ..ConfigMap::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::model::fixtures::model;

    #[test]
    fn documents_round_trip_and_carry_the_spec() {
        let mut m = model();
        m.spec
            .postgres
            .parameters
            .insert("work_mem".into(), "8MB".into());
        let instances = vec!["db-1".to_string(), "db-2".to_string()];
        let cm = config_map(&m, &instances).unwrap();
        let data = cm.data.unwrap();
        let inst: InstanceSettings = serde_json::from_str(&data[files::INSTANCE_SETTINGS]).unwrap();
        assert_eq!(inst, instance_settings(&m, &instances));
        assert_eq!(inst.parameters["work_mem"], "8MB");
        assert_eq!(inst.primary_host, "db-rw");
        assert_eq!(inst.instances, instances);
        let fencing = inst.fencing.unwrap();
        assert_eq!(fencing.lease_name, "db-primary");
        assert_eq!(
            (
                fencing.lease_duration_ms,
                fencing.renew_interval_ms,
                fencing.fence_after_ms
            ),
            (4000, 1000, 2000)
        );
        assert!(
            fencing.fence_after_ms + 1000 < fencing.lease_duration_ms,
            "fence well before anyone may promote"
        );
        let pool: PoolerSettings = serde_json::from_str(&data[files::POOLER_SETTINGS]).unwrap();
        assert_eq!(pool.backend_host, "db-rw");
        assert_eq!(pool.pool_mode, "transaction");
        assert_eq!(pool.default_pool_size, 20);
    }
}
