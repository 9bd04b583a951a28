//! Create, update (PUT), patch and server-side apply: one optimistic write
//! loop (read, compute, admit, commit if unchanged, else retry) like the
//! real server's GuaranteedUpdate.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::api::{ApiState, Ctx, Reply, Request};
use crate::apply::{self, ApplyRequest, Scope};
use crate::builtin::{self, CreateContext};
use crate::crd;
use crate::fields::Shape;
use crate::meta;
use crate::patch;
use crate::resources::{Builtin, ResourceDef};
use crate::status::{ApiError, Cause};
use crate::store::{CommitError, Expect, Table, Write, rv_of};

const MAX_ATTEMPTS: usize = 64;

fn parse_json(req: &Request) -> Result<Value, ApiError> {
    serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON in request body: {e}")))
}

/// A create or update body: JSON, or protobuf for the kinds kubectl's
/// typed `create` subcommands send that way.
fn parse_object(ctx: &Ctx<'_>, req: &Request) -> Result<Value, ApiError> {
    if req.content_type.contains("protobuf") {
        return crate::protobuf::decode(ctx.def.builtin, &req.body).map_err(|e| {
            ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("cannot decode the protobuf body ({e}); send JSON"),
            )
        });
    }
    if !req.content_type.is_empty() && !req.content_type.contains("json") {
        return Err(ApiError::unsupported_media_type(&req.content_type));
    }
    parse_json(req)
}

fn parse_apply(body: &[u8]) -> Result<Value, ApiError> {
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
    serde_saphyr::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("invalid YAML in apply patch: {e}")))
}

fn scope(def: &ResourceDef, status_request: bool) -> Scope {
    match (def.status_subresource, status_request) {
        (_, true) => Scope::StatusOnly,
        (true, false) => Scope::MainOnly,
        (false, false) => Scope::Whole,
    }
}

pub fn shape<'a>(def: &'a ResourceDef, version: &str) -> Shape<'a> {
    match &def.crd {
        Some(schemas) => Shape::Schema(schemas.versions.get(version).map(|v| &v.schema)),
        None => Shape::Builtin,
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

fn check_type(ctx: &Ctx<'_>, obj: &Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && kind != ctx.def.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind of the object ({kind}) does not match the resource ({})",
            ctx.def.kind
        )));
    }
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str)
        && !ctx
            .def
            .versions
            .iter()
            .any(|v| ctx.def.api_version(v) == av)
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            ctx.api_version()
        )));
    }
    Ok(())
}

/// System metadata of a new object.
fn prepare_create(ctx: &Ctx<'_>, obj: &mut Value, keep_managed: bool) -> Result<(), ApiError> {
    check_type(ctx, obj)?;
    obj["apiVersion"] = json!(ctx.def.api_version(ctx.def.storage_version()));
    obj["kind"] = json!(ctx.def.kind);
    let namespaced = ctx.def.namespaced;
    let path_ns = ctx.target.namespace.clone();
    let meta = meta_mut(obj);
    if namespaced {
        let path_ns = path_ns.ok_or_else(|| {
            ApiError::bad_request("a namespace is required to create this resource")
        })?;
        match meta.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() && ns != path_ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                meta.insert("namespace".into(), json!(path_ns));
            }
        }
    } else {
        meta.remove("namespace");
    }
    let name = meta
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) if !prefix.is_empty() => {
                let generated = format!("{prefix}{}", meta::name_suffix());
                meta.insert("name".into(), json!(generated));
            }
            _ => {
                return Err(ApiError::invalid(
                    &ctx.def.group,
                    &ctx.def.kind,
                    "",
                    vec![Cause {
                        reason: "FieldValueRequired".into(),
                        message: "Required value: name or generateName is required".into(),
                        field: "metadata.name".into(),
                    }],
                ));
            }
        }
    }
    meta.insert("uid".into(), json!(meta::new_uid()));
    meta.insert("creationTimestamp".into(), json!(meta::now()));
    for field in [
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "resourceVersion",
        "selfLink",
        "generation",
    ] {
        meta.remove(field);
    }
    if !keep_managed {
        meta.remove("managedFields");
    }
    if ctx.def.tracks_generation {
        meta.insert("generation".into(), json!(1));
    }
    Ok(())
}

fn namespace_ready(ctx: &Ctx<'_>, obj: &Value) -> Result<(), ApiError> {
    if !ctx.def.namespaced {
        return Ok(());
    }
    let ns = meta_str(obj, "namespace").unwrap_or("");
    let namespaces = ctx
        .state
        .store
        .table("", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces are not served"))?;
    match namespaces.get(&(String::new(), ns.to_string())) {
        None => Err(ApiError::not_found(crate::status::Subject {
            group: "",
            resource: "namespaces",
            name: ns,
        })),
        Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => {
            Err(ApiError::forbidden(format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                ctx.def.plural,
                meta_str(obj, "name").unwrap_or("")
            )))
        }
        Some(_) => Ok(()),
    }
}

/// `fieldValidation=Strict` (kubectl's default): unknown fields are an
/// error instead of being dropped.
fn strict(req: &Request) -> bool {
    req.param("fieldValidation") == Some("Strict")
}

/// Paths set (non-null) in `input` that admission dropped from `output`:
/// fields the schema or type does not know. `.status` (dropped on create)
/// and Secret `stringData` (folded into data) are not unknown.
fn unknown_fields(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (key, value) in i {
                if path.is_empty() && matches!(key.as_str(), "status" | "stringData") {
                    continue;
                }
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match o.get(key) {
                    Some(v) => unknown_fields(value, v, &child, out),
                    None if !value.is_null() => out.push(child),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(o)) if i.len() == o.len() => {
            for (n, (a, b)) in i.iter().zip(o).enumerate() {
                unknown_fields(a, b, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Kind-specific admission, schema validation and metadata checks.
fn admit(
    ctx: &Ctx<'_>,
    obj: Value,
    old: Option<&Value>,
    creating: bool,
    strict: bool,
) -> Result<Value, ApiError> {
    let input = strict.then(|| obj.clone());
    let obj = admit_inner(ctx, obj, old, creating)?;
    if let Some(input) = input {
        let mut unknown = vec![];
        unknown_fields(&input, &obj, "", &mut unknown);
        if !unknown.is_empty() {
            let listed: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                listed.join(", ")
            )));
        }
    }
    Ok(obj)
}

fn admit_inner(
    ctx: &Ctx<'_>,
    obj: Value,
    old: Option<&Value>,
    creating: bool,
) -> Result<Value, ApiError> {
    let name = meta_str(&obj, "name").unwrap_or("").to_string();
    let invalid =
        |causes: Vec<Cause>| ApiError::invalid(&ctx.def.group, &ctx.def.kind, &name, causes);
    let mut obj = obj;
    if creating && ctx.def.status_subresource {
        obj.as_object_mut().map(|m| m.remove("status"));
    }
    match (ctx.def.builtin, &ctx.def.crd) {
        (Some(kind), _) => {
            if creating {
                let now = meta::now();
                let create_ctx = CreateContext {
                    node_name: ctx.state.node_name.as_deref(),
                    ips: &ctx.state.ips,
                    now: &now,
                };
                builtin::on_create(kind, &mut obj, &create_ctx).map_err(|c| invalid(vec![c]))?;
            }
            builtin::on_write(kind, &mut obj, old);
            obj = builtin::decode(kind, obj).map_err(|e| {
                ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: {e}",
                    ctx.def.kind, ctx.target.version, ctx.def.kind
                ))
            })?;
            if let Some(old) = old {
                let causes = builtin::validate_update(kind, old, &obj);
                if !causes.is_empty() {
                    return Err(invalid(causes));
                }
            }
            if kind == Builtin::CustomResourceDefinition {
                crd::resource_def(&obj).map_err(invalid)?;
                obj["status"] = crd::established_status(&obj, &meta::now());
            }
        }
        (None, Some(schemas)) => {
            let schema = schemas
                .versions
                .get(&ctx.target.version)
                .ok_or_else(|| ApiError::internal("no schema for the requested version"))?;
            crd::admit(schema, &ctx.state.cel, &mut obj, old).map_err(invalid)?;
        }
        (None, None) => {}
    }
    let mut causes: Vec<Cause> = meta::validate_name(ctx.def.builtin, &name)
        .into_iter()
        .collect();
    causes.extend(meta::validate_metadata(&obj["metadata"]));
    if matches!(ctx.def.builtin, Some(Builtin::Secret | Builtin::ConfigMap)) {
        causes.extend(meta::validate_data_size(&obj));
    }
    if !causes.is_empty() {
        return Err(invalid(causes));
    }
    Ok(obj)
}

fn created(ctx: &Ctx<'_>, object: &Value) -> Reply {
    after_commit(ctx, object, false);
    if ctx.def.builtin == Some(Builtin::Namespace) {
        populate_namespace(ctx.state, meta_str(object, "name").unwrap_or(""));
    }
    Reply::json(201, &ctx.present(object))
}

/// What the service-account and root-CA controllers put in every new
/// namespace: the `default` ServiceAccount and the `kube-root-ca.crt`
/// ConfigMap.
fn populate_namespace(state: &ApiState, namespace: &str) {
    let objects = [
        (
            "serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
        ),
        (
            "configmaps",
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt"},
                   "data": {"ca.crt": state.ca_pem}}),
        ),
    ];
    for (plural, mut obj) in objects {
        let Some(table) = state.store.table("", plural) else {
            continue;
        };
        meta_mut(&mut obj).insert("namespace".into(), json!(namespace));
        // Already there (a namespace re-created while the old one's
        // objects were still being deleted) is fine.
        system_create(state, &table, obj);
    }
}

/// Side effects of a committed write on the set of served resources.
pub fn after_commit(ctx: &Ctx<'_>, object: &Value, removed: bool) {
    if ctx.def.builtin != Some(Builtin::CustomResourceDefinition) {
        return;
    }
    match (removed, crd::resource_def(object)) {
        (false, Ok(def)) => {
            ctx.state.store.define(def);
        }
        (true, Ok(def)) => ctx.state.store.undefine(&def.group, &def.plural),
        (_, Err(_)) => {}
    }
}

pub fn create(ctx: &Ctx<'_>, req: &Request) -> Result<Reply, ApiError> {
    let mut obj = parse_object(ctx, req)?;
    prepare_create(ctx, &mut obj, false)?;
    namespace_ready(ctx, &obj)?;
    let obj = admit(ctx, obj, None, true, strict(req))?;
    let name = meta_str(&obj, "name").unwrap_or("").to_string();
    if req.dry_run() {
        return Ok(Reply::json(201, &ctx.present(&obj)));
    }
    match ctx.table.commit(
        &ctx.state.store,
        &ctx.key(&name),
        Expect::Absent,
        Write::Store(obj),
    ) {
        Ok(stored) => Ok(created(ctx, &stored)),
        Err(CommitError::Changed) => Err(ApiError::already_exists(ctx.def.subject(&name))),
    }
}

/// How a write computes the new object from the stored one.
enum Change<'a> {
    Replace(&'a Value),
    MergePatch(&'a Value),
    JsonPatch(&'a [u8]),
    StrategicPatch(&'a Value),
    Apply {
        config: &'a Value,
        manager: &'a str,
        force: bool,
    },
}

pub fn update(ctx: &Ctx<'_>, req: &Request, name: &str) -> Result<Reply, ApiError> {
    let body = parse_object(ctx, req)?;
    check_type(ctx, &body)?;
    if let Some(body_name) = meta_str(&body, "name")
        && body_name != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    modify(ctx, req, name, Change::Replace(&body))
}

pub fn patch(ctx: &Ctx<'_>, req: &Request, name: &str) -> Result<Reply, ApiError> {
    let content_type = req.content_type.split(';').next().unwrap_or("").trim();
    match content_type {
        "application/merge-patch+json" => {
            modify(ctx, req, name, Change::MergePatch(&parse_json(req)?))
        }
        "application/json-patch+json" => modify(ctx, req, name, Change::JsonPatch(&req.body)),
        "application/strategic-merge-patch+json" => {
            if ctx.def.builtin.is_none() {
                return Err(ApiError::unsupported_media_type(content_type));
            }
            modify(ctx, req, name, Change::StrategicPatch(&parse_json(req)?))
        }
        "application/apply-patch+yaml" => {
            let manager = req.param("fieldManager").unwrap_or("");
            if manager.is_empty() {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
                ));
            }
            let config = parse_apply(&req.body)?;
            check_type(ctx, &config)?;
            if config.get("apiVersion").is_none() || config.get("kind").is_none() {
                return Err(ApiError::bad_request(
                    "apiVersion and kind must be set in an apply patch",
                ));
            }
            if let Some(n) = meta_str(&config, "name")
                && n != name
            {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            modify(
                ctx,
                req,
                name,
                Change::Apply {
                    config: &config,
                    manager,
                    force: req.flag("force"),
                },
            )
        }
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn skeleton(ctx: &Ctx<'_>, name: &str) -> Value {
    let mut meta = json!({"name": name});
    if let Some(ns) = &ctx.target.namespace {
        meta["namespace"] = json!(ns);
    }
    json!({"apiVersion": ctx.def.api_version(ctx.def.storage_version()), "kind": ctx.def.kind, "metadata": meta})
}

fn apply_request<'a>(
    ctx: &'a Ctx<'_>,
    manager: &'a str,
    force: bool,
    status: bool,
    now: &'a str,
    api_version: &'a str,
) -> ApplyRequest<'a> {
    ApplyRequest {
        manager,
        force,
        scope: scope(&ctx.def, status),
        shape: shape(&ctx.def, &ctx.target.version),
        api_version,
        now,
    }
}

fn modify(ctx: &Ctx<'_>, req: &Request, name: &str, change: Change<'_>) -> Result<Reply, ApiError> {
    let key = ctx.key(name);
    let status_request = ctx.target.subresource.as_deref() == Some("status");
    let now = meta::now();
    let api_version = ctx.api_version();
    for _ in 0..MAX_ATTEMPTS {
        let Some(current) = ctx.table.get(&key) else {
            let Change::Apply {
                config,
                manager,
                force,
            } = change
            else {
                return Err(ApiError::not_found(ctx.def.subject(name)));
            };
            if status_request {
                return Err(ApiError::not_found(ctx.def.subject(name)));
            }
            let areq = apply_request(ctx, manager, force, false, &now, &api_version);
            let mut obj = apply::apply(&skeleton(ctx, name), config, &areq)
                .map_err(|c| ApiError::apply_conflicts(ctx.def.subject(name), c))?;
            prepare_create(ctx, &mut obj, true)?;
            namespace_ready(ctx, &obj)?;
            let obj = admit(ctx, obj, None, true, strict(req))?;
            if req.dry_run() {
                return Ok(Reply::json(201, &ctx.present(&obj)));
            }
            match ctx
                .table
                .commit(&ctx.state.store, &key, Expect::Absent, Write::Store(obj))
            {
                Ok(stored) => return Ok(created(ctx, &stored)),
                Err(CommitError::Changed) => continue,
            }
        };
        let current_rv = rv_of(&current);
        let mut candidate = (*current).clone();
        let applied = matches!(change, Change::Apply { .. });
        match change {
            Change::Replace(body) => candidate = body.clone(),
            Change::MergePatch(p) => patch::merge_patch(&mut candidate, p),
            Change::JsonPatch(p) => patch::json_patch(&mut candidate, p)?,
            Change::StrategicPatch(p) => patch::strategic_merge(&mut candidate, p),
            Change::Apply {
                config,
                manager,
                force,
            } => {
                let areq = apply_request(ctx, manager, force, status_request, &now, &api_version);
                candidate = apply::apply(&current, config, &areq)
                    .map_err(|c| ApiError::apply_conflicts(ctx.def.subject(name), c))?;
            }
        }
        // A resourceVersion in the request is a precondition: it must match
        // now, and a concurrent write is a conflict instead of a retry. (A
        // JSON patch asserts one by leaving a different one in the result.)
        let precondition = match change {
            Change::Replace(body) | Change::MergePatch(body) | Change::StrategicPatch(body) => {
                meta_str(body, "resourceVersion")
            }
            Change::Apply { config, .. } => meta_str(config, "resourceVersion"),
            Change::JsonPatch(_) => None,
        }
        .filter(|s| !s.is_empty())
        .map(str::to_string);
        let result_rv = meta_str(&candidate, "resourceVersion").filter(|s| !s.is_empty());
        if precondition
            .iter()
            .map(String::as_str)
            .chain(result_rv)
            .any(|rv| rv.parse::<u64>().ok() != Some(current_rv))
        {
            return Err(ApiError::stale(ctx.def.subject(name)));
        }
        let candidate = finish_update(
            ctx,
            &current,
            candidate,
            status_request,
            applied,
            strict(req),
        )?;
        if candidate == *current {
            return Ok(Reply::json(200, &ctx.present(&current)));
        }
        if req.dry_run() {
            return Ok(Reply::json(200, &ctx.present(&candidate)));
        }
        let remove = ready_to_remove(&ctx.def, &candidate);
        let result = ctx.table.commit(
            &ctx.state.store,
            &key,
            Expect::Version(current_rv),
            Write::removing_if(remove, candidate),
        );
        match result {
            Ok(stored) => {
                after_commit(ctx, &stored, remove);
                return Ok(Reply::json(200, &ctx.present(&stored)));
            }
            Err(CommitError::Changed) if precondition.is_some() => {
                return Err(ApiError::stale(ctx.def.subject(name)));
            }
            Err(CommitError::Changed) => continue,
        }
    }
    Err(ApiError::new(
        409,
        "Conflict",
        format!("too many concurrent writes to {name}; try again"),
    ))
}

/// Whether an object being deleted can go: no finalizers left and, for
/// pods, the kubelet confirmed (grace period 0); namespaces also wait for
/// their `spec.finalizers`.
pub fn ready_to_remove(def: &ResourceDef, obj: &Value) -> bool {
    let meta = &obj["metadata"];
    if meta.get("deletionTimestamp").is_none() {
        return false;
    }
    let empty = |v: &Value| v.as_array().is_none_or(Vec::is_empty);
    if !empty(&meta["finalizers"]) {
        return false;
    }
    match def.builtin {
        Some(Builtin::Namespace) => empty(&obj["spec"]["finalizers"]),
        _ => meta["deletionGracePeriodSeconds"].as_i64().unwrap_or(0) == 0,
    }
}

/// Keeps what a client may not change, applies the status-subresource rules,
/// admission, and the generation rule.
fn finish_update(
    ctx: &Ctx<'_>,
    current: &Value,
    mut candidate: Value,
    status_request: bool,
    applied: bool,
    strict: bool,
) -> Result<Value, ApiError> {
    check_type(ctx, &candidate)?;
    candidate["apiVersion"] = current["apiVersion"].clone();
    candidate["kind"] = current["kind"].clone();
    {
        let current_meta = current["metadata"].as_object().cloned().unwrap_or_default();
        let meta = meta_mut(&mut candidate);
        let mut fixed = vec![
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
            "selfLink",
        ];
        if !applied {
            fixed.push("managedFields");
        }
        for field in fixed {
            match current_meta.get(field) {
                Some(v) => meta.insert(field.into(), v.clone()),
                None => meta.remove(field),
            };
        }
    }
    match scope(&ctx.def, status_request) {
        Scope::StatusOnly => {
            let status = candidate.get("status").cloned();
            let managed = candidate["metadata"].get("managedFields").cloned();
            candidate = current.clone();
            match status {
                Some(s) => candidate["status"] = s,
                None => {
                    candidate.as_object_mut().map(|m| m.remove("status"));
                }
            }
            let meta = meta_mut(&mut candidate);
            match managed {
                Some(m) => meta.insert("managedFields".into(), m),
                None => meta.remove("managedFields"),
            };
        }
        Scope::MainOnly => match current.get("status") {
            Some(s) => candidate["status"] = s.clone(),
            None => {
                candidate.as_object_mut().map(|m| m.remove("status"));
            }
        },
        Scope::Whole => {}
    }
    if current.pointer("/metadata/deletionTimestamp").is_some() {
        let before = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let after = candidate
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if after.iter().any(|f| !before.contains(f)) {
            let name = meta_str(current, "name").unwrap_or("");
            return Err(ApiError::invalid(
                &ctx.def.group,
                &ctx.def.kind,
                name,
                vec![Cause {
                    reason: "FieldValueForbidden".into(),
                    message:
                        "Forbidden: no new finalizers can be added if the object is being deleted"
                            .into(),
                    field: "metadata.finalizers".into(),
                }],
            ));
        }
    }
    let mut candidate = admit(ctx, candidate, Some(current), false, strict)?;
    if ctx.def.tracks_generation && spec_of(&candidate) != spec_of(current) {
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        meta_mut(&mut candidate).insert("generation".into(), json!(generation + 1));
    }
    if !applied {
        apply::release_changed(current, &mut candidate);
    }
    Ok(candidate)
}

/// Everything but metadata and status: what `generation` counts changes of.
fn spec_of(obj: &Value) -> Value {
    let mut copy = obj.clone();
    if let Some(map) = copy.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    copy
}

/// Creates an object on behalf of a controller (no admission); false if
/// it already exists.
pub fn system_create(state: &ApiState, table: &Arc<Table>, mut obj: Value) -> bool {
    let meta = meta_mut(&mut obj);
    meta.insert("uid".into(), json!(meta::new_uid()));
    meta.insert("creationTimestamp".into(), json!(meta::now()));
    let key = crate::store::key_of(&obj);
    table
        .commit(&state.store, &key, Expect::Absent, Write::Store(obj))
        .is_ok()
}

/// A system write (garbage collector, deletion): applies `change` to the
/// stored object until it commits, removing the object when it is being
/// deleted and nothing holds it any more. Returns false if it is gone.
pub fn system_update(
    state: &ApiState,
    table: &Arc<Table>,
    key: &(String, String),
    change: impl Fn(&mut Value) -> bool,
) -> bool {
    let def = table.def();
    for _ in 0..MAX_ATTEMPTS {
        let Some(current) = table.get(key) else {
            return false;
        };
        let mut candidate = (*current).clone();
        if !change(&mut candidate) {
            return true;
        }
        let remove = ready_to_remove(&def, &candidate);
        let result = table.commit(
            &state.store,
            key,
            Expect::Version(rv_of(&current)),
            Write::removing_if(remove, candidate),
        );
        match result {
            Ok(stored) => {
                if def.builtin == Some(Builtin::CustomResourceDefinition)
                    && remove
                    && let Ok(d) = crd::resource_def(&stored)
                {
                    state.store.undefine(&d.group, &d.plural);
                }
                return true;
            }
            Err(CommitError::Changed) => continue,
        }
    }
    true
}
