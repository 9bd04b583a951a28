//! PodDisruptionBudgets: the eviction subresource (which refuses evictions
//! a budget does not allow) and the budget status the disruption
//! controller maintains. Budgets are computed from live pods: a pod is
//! healthy when its Ready condition is True and it is not being deleted;
//! the expected count is the number of pods the selector matches (the real
//! controller asks the pods' workload controllers for their scale).

use std::sync::Arc;

use serde_json::{Value, json};

use crate::api::{ApiState, Ctx, Reply, Request};
use crate::delete::{DeleteOptions, delete_object};
use crate::status::ApiError;
use crate::store::{Table, key_of};
use crate::write::system_update;

fn label_selector_matches(selector: &Value, labels: &Value) -> bool {
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let match_labels = selector["matchLabels"].as_object();
    let labels_ok = match_labels
        .into_iter()
        .flatten()
        .all(|(k, v)| label(k) == v.as_str());
    let expressions_ok = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str() {
                Some("In") => label(key).is_some_and(|l| values.contains(&l)),
                Some("NotIn") => label(key).is_none_or(|l| !values.contains(&l)),
                Some("Exists") => label(key).is_some(),
                Some("DoesNotExist") => label(key).is_none(),
                _ => false,
            }
        });
    // An empty selector matches every pod of the namespace (policy/v1).
    labels_ok && expressions_ok
}

fn healthy(pod: &Value) -> bool {
    pod.pointer("/metadata/deletionTimestamp").is_none()
        && pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// `minAvailable`/`maxUnavailable` as a pod count (percentages round up).
fn scaled(value: &Value, total: i64) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let pct: i64 = s.strip_suffix('%')?.parse().ok()?;
            Some((pct * total + 99) / 100)
        }
        _ => None,
    }
}

struct Budget {
    expected: i64,
    current_healthy: i64,
    desired_healthy: i64,
}

impl Budget {
    fn disruptions_allowed(&self) -> i64 {
        (self.current_healthy - self.desired_healthy).max(0)
    }
}

fn budget(pdb: &Value, pods: &[&Value]) -> Budget {
    let expected = pods.len() as i64;
    let current_healthy = pods.iter().filter(|p| healthy(p)).count() as i64;
    let spec = &pdb["spec"];
    let desired_healthy = if let Some(min) = scaled(&spec["minAvailable"], expected) {
        min
    } else if let Some(max) = scaled(&spec["maxUnavailable"], expected) {
        (expected - max).max(0)
    } else {
        expected
    };
    Budget {
        expected,
        current_healthy,
        desired_healthy,
    }
}

fn matching_pods<'a>(pdb: &Value, pods: &'a [Arc<Value>]) -> Vec<&'a Value> {
    pods.iter()
        .map(|p| &**p)
        .filter(|p| label_selector_matches(&pdb["spec"]["selector"], &p["metadata"]["labels"]))
        .collect()
}

fn tables(state: &ApiState) -> Option<(Arc<Table>, Arc<Table>)> {
    Some((
        state.store.table("", "pods")?,
        state.store.table("policy", "poddisruptionbudgets")?,
    ))
}

/// `POST …/pods/<name>/eviction`.
pub fn evict(ctx: &Ctx<'_>, req: &Request, name: &str) -> Result<Reply, ApiError> {
    let namespace = ctx.target.namespace.clone().unwrap_or_default();
    let eviction: Value = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("invalid Eviction: {e}")))?;
    let opts: DeleteOptions = match eviction.get("deleteOptions") {
        Some(o) => serde_json::from_value(o.clone())
            .map_err(|e| ApiError::bad_request(format!("invalid deleteOptions: {e}")))?,
        None => DeleteOptions::default(),
    };
    let (pods, pdbs) =
        tables(ctx.state).ok_or_else(|| ApiError::internal("pods or PDBs are not served"))?;
    // One eviction at a time, so two cannot both spend the last disruption.
    let _serial = ctx.state.eviction.lock().unwrap_or_else(|e| e.into_inner());
    let pod = pods
        .get(&(namespace.clone(), name.to_string()))
        .ok_or_else(|| ApiError::not_found(ctx.def.subject(name)))?;
    let terminal = matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    if !terminal && pod.pointer("/metadata/deletionTimestamp").is_none() {
        let (ns_pods, _) = pods.list(&ctx.state.store, Some(&namespace));
        let (ns_pdbs, _) = pdbs.list(&ctx.state.store, Some(&namespace));
        let covering: Vec<&Arc<Value>> = ns_pdbs
            .iter()
            .filter(|b| label_selector_matches(&b["spec"]["selector"], &pod["metadata"]["labels"]))
            .collect();
        if covering.len() > 1 {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        if let Some(pdb) = covering.first() {
            let b = budget(pdb, &matching_pods(pdb, &ns_pods));
            let always = pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow";
            let allowed = if healthy(&pod) {
                b.disruptions_allowed() >= 1
            } else {
                always || b.current_healthy >= b.desired_healthy
            };
            if !allowed {
                let pdb_name = pdb["metadata"]["name"].as_str().unwrap_or("");
                let mut err = ApiError::new(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                );
                err.details = Some(json!({"causes": [{
                    "reason": "DisruptionBudget",
                    "message": format!(
                        "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                        b.desired_healthy, b.current_healthy
                    ),
                }]}));
                return Err(err);
            }
        }
    }
    delete_object(ctx.state, &pods, &(namespace, name.to_string()), &opts)?;
    Ok(Reply::json(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
    ))
}

/// Brings every budget's status up to date (only writing when it changed).
pub fn update_statuses(state: &ApiState) {
    let Some((pods, pdbs)) = tables(state) else {
        return;
    };
    let (all_pdbs, _) = pdbs.list(&state.store, None);
    for pdb in all_pdbs {
        let namespace = pdb["metadata"]["namespace"].as_str().unwrap_or("");
        let (ns_pods, _) = pods.list(&state.store, Some(namespace));
        let b = budget(&pdb, &matching_pods(&pdb, &ns_pods));
        let status = json!({
            "observedGeneration": pdb["metadata"]["generation"],
            "expectedPods": b.expected,
            "currentHealthy": b.current_healthy,
            "desiredHealthy": b.desired_healthy,
            "disruptionsAllowed": b.disruptions_allowed(),
            "conditions": [{
                "type": "DisruptionAllowed",
                "status": if b.disruptions_allowed() > 0 { "True" } else { "False" },
                "reason": if b.disruptions_allowed() > 0 { "SufficientPods" } else { "InsufficientPods" },
                "message": "",
                "observedGeneration": pdb["metadata"]["generation"],
                "lastTransitionTime": pdb["status"]["conditions"][0]["lastTransitionTime"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(crate::meta::now),
            }],
        });
        let same = [
            "observedGeneration",
            "expectedPods",
            "currentHealthy",
            "desiredHealthy",
            "disruptionsAllowed",
        ]
        .iter()
        .all(|k| pdb["status"][k] == status[k]);
        if !same {
            system_update(state, &pdbs, &key_of(&pdb), |obj| {
                let mut status = status.clone();
                if obj["status"]["conditions"][0]["status"] != status["conditions"][0]["status"] {
                    status["conditions"][0]["lastTransitionTime"] = json!(crate::meta::now());
                }
                obj["status"] = status;
                true
            });
        }
    }
}
