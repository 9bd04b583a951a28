//! PodDisruptionBudgets: a voluntary eviction (node drain) may take one
//! replica at a time and never the primary of a replicated cluster; the
//! operator moves the primary itself, by switchover.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels;
use super::model::Model;
use super::names;

pub fn all(model: &Model) -> Vec<PodDisruptionBudget> {
    let cluster = &model.name;
    let replicas = model.spec.instances - 1;
    let mut out = vec![];
    // A single instance has nowhere to move to: blocking its eviction would
    // block node drains forever.
    if replicas >= 1 {
        out.push(pdb(
            model,
            names::primary_pdb(cluster),
            labels::role_selector(cluster, labels::ROLE_PRIMARY),
            labels::COMPONENT_DATABASE,
            IntOrString::Int(1),
            true,
        ));
    }
    if replicas >= 2 {
        out.push(pdb(
            model,
            names::replicas_pdb(cluster),
            labels::role_selector(cluster, labels::ROLE_REPLICA),
            labels::COMPONENT_DATABASE,
            IntOrString::Int(1),
            false,
        ));
    }
    if model.spec.proxy.pgbouncer.replicas >= 2 {
        out.push(pdb(
            model,
            names::pooler_pdb(cluster),
            labels::pooler_selector(cluster),
            labels::COMPONENT_POOLER,
            IntOrString::Int(1),
            false,
        ));
    }
    out
}

/// The PDB names `model` may have, to find ones to delete when not wanted.
pub fn possible_names(cluster: &str) -> [String; 3] {
    [
        names::primary_pdb(cluster),
        names::replicas_pdb(cluster),
        names::pooler_pdb(cluster),
    ]
}

fn pdb(
    model: &Model,
    name: String,
    selector: std::collections::BTreeMap<String, String>,
    component: &str,
    n: IntOrString,
    min_available: bool,
) -> PodDisruptionBudget {
    let (min, max) = if min_available {
        (Some(n), None)
    } else {
        (None, Some(n))
    };
    PodDisruptionBudget {
        metadata: model.child_meta(name, labels::common(&model.name, component)),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            }),
            min_available: min,
            max_unavailable: max,
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::model::fixtures::model;

    fn names_of(m: &Model) -> Vec<String> {
        all(m)
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect()
    }

    #[test]
    fn budgets_depend_on_the_topology() {
        let mut m = model();
        assert_eq!(names_of(&m), ["db-primary", "db-replicas", "db-pooler"]);
        m.spec.instances = 2;
        assert_eq!(names_of(&m), ["db-primary", "db-pooler"]);
        m.spec.instances = 1;
        m.spec.proxy.pgbouncer.replicas = 1;
        assert!(names_of(&m).is_empty());
    }

    #[test]
    fn primary_budget_keeps_the_primary() {
        let p = &all(&model())[0];
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.min_available, Some(IntOrString::Int(1)));
        assert_eq!(
            spec.selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[labels::ROLE],
            "primary"
        );
    }
}
