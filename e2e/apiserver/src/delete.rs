//! Deletion: finalizers and `deletionTimestamp`, graceful pod deletion
//! (left to the kubelet, which confirms with `gracePeriodSeconds=0`),
//! propagation policies (the `orphan` and `foregroundDeletion` finalizers,
//! acted on by the garbage collector) and preconditions.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{ApiState, Ctx, Reply, Request, filter};
use crate::meta;
use crate::resources::{Builtin, ResourceDef};
use crate::status::{self, ApiError};
use crate::store::{CommitError, Expect, ObjKey, Table, Write, rv_of};
use crate::write::{after_commit, ready_to_remove};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub orphan_dependents: Option<bool>,
    #[serde(default)]
    pub preconditions: Preconditions,
    #[serde(default)]
    pub dry_run: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl DeleteOptions {
    fn from_request(req: &Request) -> Result<Self, ApiError> {
        let mut opts: DeleteOptions = if req.body.iter().all(u8::is_ascii_whitespace) {
            DeleteOptions::default()
        } else {
            serde_json::from_slice(&req.body)
                .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?
        };
        if let Some(g) = req.param("gracePeriodSeconds") {
            opts.grace_period_seconds = Some(
                g.parse()
                    .map_err(|_| ApiError::bad_request("gracePeriodSeconds must be an integer"))?,
            );
        }
        if let Some(p) = req.param("propagationPolicy") {
            opts.propagation_policy = Some(p.to_string());
        }
        if req.dry_run() {
            opts.dry_run = vec!["All".into()];
        }
        Ok(opts)
    }

    fn policy(&self) -> Result<Option<&'static str>, ApiError> {
        match (self.propagation_policy.as_deref(), self.orphan_dependents) {
            (Some("Orphan"), _) | (None, Some(true)) => Ok(Some("orphan")),
            (Some("Foreground"), _) => Ok(Some("foregroundDeletion")),
            (Some("Background") | None, _) => Ok(None),
            (Some(other), _) => Err(ApiError::bad_request(format!(
                "unsupported propagationPolicy {other:?}: Orphan, Foreground or Background"
            ))),
        }
    }
}

pub enum Outcome {
    /// Still there, being deleted.
    Pending(Arc<Value>),
    /// Gone; the final state.
    Removed(Arc<Value>),
}

fn grace_period(def: &ResourceDef, obj: &Value, opts: &DeleteOptions) -> i64 {
    if def.builtin != Some(Builtin::Pod) {
        return 0;
    }
    let scheduled = obj["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    let terminal = matches!(
        obj["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    );
    if !scheduled || terminal {
        return 0;
    }
    opts.grace_period_seconds
        .or_else(|| obj["spec"]["terminationGracePeriodSeconds"].as_i64())
        .unwrap_or(30)
        .max(0)
}

/// Deletes one object (also used by the garbage collector and namespace
/// cleanup).
pub fn delete_object(
    state: &ApiState,
    table: &Arc<Table>,
    key: &ObjKey,
    opts: &DeleteOptions,
) -> Result<Outcome, ApiError> {
    let def = table.def();
    let finalizer = opts.policy()?;
    loop {
        let current = table
            .get(key)
            .ok_or_else(|| ApiError::not_found(def.subject(&key.1)))?;
        if let Some(uid) = &opts.preconditions.uid
            && current["metadata"]["uid"].as_str() != Some(uid)
        {
            return Err(ApiError::conflict(
                def.subject(&key.1),
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    current["metadata"]["uid"].as_str().unwrap_or("")
                ),
            ));
        }
        if let Some(rv) = &opts.preconditions.resource_version
            && rv.parse::<u64>().ok() != Some(rv_of(&current))
        {
            return Err(ApiError::conflict(
                def.subject(&key.1),
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    rv_of(&current)
                ),
            ));
        }
        let mut candidate = (*current).clone();
        let meta = candidate["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::internal("stored object without metadata"))?;
        if meta.contains_key("deletionTimestamp") {
            // Already being deleted: only a shorter grace period changes
            // anything (the kubelet's final gracePeriodSeconds=0).
            let grace = meta["deletionGracePeriodSeconds"].as_i64().unwrap_or(0);
            match opts.grace_period_seconds {
                Some(g) if g < grace => {
                    meta.insert("deletionGracePeriodSeconds".into(), json!(g.max(0)));
                }
                _ => return Ok(Outcome::Pending(current)),
            }
        } else {
            let grace = grace_period(&def, &current, opts);
            if let Some(f) = finalizer {
                let list = meta.entry("finalizers").or_insert_with(|| json!([]));
                if let Some(items) = list.as_array_mut()
                    && !items.iter().any(|x| x == f)
                {
                    items.push(json!(f));
                }
            }
            meta.insert("deletionTimestamp".into(), json!(meta::now_plus(grace)));
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            if def.tracks_generation {
                let generation = meta.get("generation").and_then(Value::as_i64).unwrap_or(0);
                meta.insert("generation".into(), json!(generation + 1));
            }
            if def.builtin == Some(Builtin::Namespace) {
                candidate["status"]["phase"] = json!("Terminating");
            }
        }
        let remove = ready_to_remove(&def, &candidate);
        if !opts.dry_run.is_empty() {
            let shown = Arc::new(candidate);
            return Ok(if remove {
                Outcome::Removed(shown)
            } else {
                Outcome::Pending(shown)
            });
        }
        match table.commit(
            &state.store,
            key,
            Expect::Version(rv_of(&current)),
            Write::removing_if(remove, candidate),
        ) {
            Ok(stored) if remove => return Ok(Outcome::Removed(stored)),
            Ok(stored) => return Ok(Outcome::Pending(stored)),
            Err(CommitError::Changed) => continue,
        }
    }
}

pub fn delete(ctx: &Ctx<'_>, req: &Request, name: &str) -> Result<Reply, ApiError> {
    let opts = DeleteOptions::from_request(req)?;
    match delete_object(ctx.state, &ctx.table, &ctx.key(name), &opts)? {
        Outcome::Pending(obj) => Ok(Reply::json(202, &ctx.present(&obj))),
        Outcome::Removed(obj) => {
            after_commit(ctx, &obj, true);
            let uid = obj["metadata"]["uid"].as_str().unwrap_or("");
            Ok(Reply::json(
                200,
                &status::success(ctx.def.subject(name), uid),
            ))
        }
    }
}

pub fn delete_collection(ctx: &Ctx<'_>, req: &Request) -> Result<Reply, ApiError> {
    let opts = DeleteOptions::from_request(req)?;
    let filter = filter(ctx, req)?;
    let (items, _) = ctx
        .table
        .list(&ctx.state.store, ctx.target.namespace.as_deref());
    let mut deleted = vec![];
    for item in items.iter().filter(|o| filter.matches(o)) {
        let key = (
            item["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            item["metadata"]["name"].as_str().unwrap_or("").to_string(),
        );
        match delete_object(ctx.state, &ctx.table, &key, &opts) {
            Ok(Outcome::Pending(obj)) => deleted.push(ctx.present(&obj)),
            Ok(Outcome::Removed(obj)) => {
                after_commit(ctx, &obj, true);
                deleted.push(ctx.present(&obj));
            }
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Reply::json(
        200,
        &json!({
            "kind": format!("{}List", ctx.def.kind),
            "apiVersion": ctx.api_version(),
            "metadata": {"resourceVersion": ctx.state.store.current_rv().to_string()},
            "items": deleted,
        }),
    ))
}
