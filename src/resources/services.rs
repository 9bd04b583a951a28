//! The Services clients and replicas connect to.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels;
use super::model::Model;
use super::names;
use crate::contract::layout;

/// `<name>-rw` (primary), `<name>-ro` (replicas), `<name>-r` (any instance)
/// and `<name>-pooler` (PgBouncer, what applications use).
pub fn all(model: &Model) -> Vec<Service> {
    let cluster = &model.name;
    vec![
        with_backrest_port(
            model,
            service(
                model,
                names::rw_service(cluster),
                labels::role_selector(cluster, labels::ROLE_PRIMARY),
                labels::COMPONENT_DATABASE,
                false,
            ),
        ),
        service(
            model,
            names::ro_service(cluster),
            labels::role_selector(cluster, labels::ROLE_REPLICA),
            labels::COMPONENT_DATABASE,
            false,
        ),
        service(
            model,
            names::r_service(cluster),
            labels::instances_selector(cluster),
            labels::COMPONENT_DATABASE,
            false,
        ),
        service(
            model,
            names::pooler(cluster),
            labels::pooler_selector(cluster),
            labels::COMPONENT_POOLER,
            true,
        ),
    ]
}

/// With backups from a replica, standbys reach the primary's pgBackRest
/// server through `-rw` too.
fn with_backrest_port(model: &Model, mut service: Service) -> Service {
    if super::backup::standby_backups(model)
        && let Some(ports) = service.spec.as_mut().and_then(|s| s.ports.as_mut())
    {
        let port = i32::from(layout::BACKREST_TLS_PORT);
        ports.push(ServicePort {
            name: Some("pgbackrest".into()),
            port,
            target_port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        });
    }
    service
}

fn service(
    model: &Model,
    name: String,
    selector: BTreeMap<String, String>,
    component: &str,
    pooler: bool,
) -> Service {
    let port = if pooler {
        layout::POOLER_PORT
    } else {
        layout::POSTGRES_PORT
    };
    Service {
        metadata: model.child_meta(name, labels::common(&model.name, component)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some(if pooler { "pgbouncer" } else { "postgresql" }.into()),
                port: i32::from(port),
                target_port: Some(IntOrString::Int(i32::from(port))),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::model::fixtures::model;

    #[test]
    fn four_services_with_role_selectors() {
        let services = all(&model());
        let by_name: BTreeMap<_, _> = services
            .iter()
            .map(|s| (s.metadata.name.clone().unwrap(), s.spec.clone().unwrap()))
            .collect();
        assert_eq!(
            by_name.keys().collect::<Vec<_>>(),
            ["db-pooler", "db-r", "db-ro", "db-rw"]
        );
        assert_eq!(
            by_name["db-rw"].selector.as_ref().unwrap()[labels::ROLE],
            "primary"
        );
        assert_eq!(
            by_name["db-ro"].selector.as_ref().unwrap()[labels::ROLE],
            "replica"
        );
        assert!(
            !by_name["db-r"]
                .selector
                .as_ref()
                .unwrap()
                .contains_key(labels::ROLE)
        );
        assert_eq!(
            by_name["db-pooler"].selector.as_ref().unwrap()[labels::COMPONENT],
            "pooler"
        );
        for spec in by_name.values() {
            assert_eq!(spec.ports.as_ref().unwrap()[0].port, 5432);
        }
    }
}
