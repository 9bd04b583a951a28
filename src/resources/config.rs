//! ConfigMap `<name>-config`: the settings documents the agents read.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;

use super::labels;
use super::model::Model;
use super::names;
use crate::contract::layout::{self, files};
use crate::contract::settings::{InitdbSettings, InstanceSettings, PoolerSettings};

pub fn instance_settings(model: &Model, instances: &[String]) -> InstanceSettings {
    let spec = &model.spec;
    let initdb = &spec.bootstrap.initdb;
    InstanceSettings {
        cluster: model.name.clone(),
        namespace: model.namespace.clone(),
        postgres_version: model.postgres_version,
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
        fencing: None,
        synchronous: Default::default(),
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
        let pool: PoolerSettings = serde_json::from_str(&data[files::POOLER_SETTINGS]).unwrap();
        assert_eq!(pool.backend_host, "db-rw");
        assert_eq!(pool.pool_mode, "transaction");
        assert_eq!(pool.default_pool_size, 20);
    }
}
