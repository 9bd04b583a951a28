//! Request dispatch: discovery, list, get, and the hand-off to the write,
//! delete and watch paths. Transport-independent: the HTTPS layer turns a
//! [`Request`] into a [`Reply`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use kube::core::cel::Validator;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::builtin::IpAllocator;
use crate::resources::ResourceDef;
use crate::routes::{Route, Target, route};
use crate::selectors::{FieldSelector, Filter, LabelSelector};
use crate::status::ApiError;
use crate::store::{Store, Table};
use crate::{delete, discovery, disruption, table, watch, write};

/// Everything a request can reach.
pub struct ApiState {
    pub store: Store,
    pub tokens: RwLock<HashSet<String>>,
    /// kube's CEL engine; one per server, used under the lock.
    pub cel: Mutex<Validator>,
    pub ips: IpAllocator,
    /// Assigned to pods created without `spec.nodeName` (there is no scheduler).
    pub node_name: Option<String>,
    /// Upper bound on a watch's duration, whatever `timeoutSeconds` says.
    pub watch_timeout_cap: Option<Duration>,
    pub bookmark_interval: Duration,
    /// host:port clients use, for `/api`'s serverAddressByClientCIDRs.
    pub address: String,
    pub counts: Counters,
    /// The CA clients trust, published in every namespace.
    pub ca_pem: String,
    /// Serialises evictions (see [`crate::disruption`]).
    pub eviction: Mutex<()>,
}

/// Resource requests served, by verb.
#[derive(Debug, Default)]
pub struct Counters([AtomicU64; 8]);

/// A snapshot of [`Counters`]: how many resource requests of each verb the
/// server has answered (discovery and failed routing are not counted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    pub get: u64,
    pub list: u64,
    pub watch: u64,
    pub create: u64,
    pub update: u64,
    pub patch: u64,
    pub delete: u64,
    pub delete_collection: u64,
}

impl Counters {
    fn bump(&self, i: usize) {
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> RequestCounts {
        let n = |i: usize| self.0[i].load(Ordering::Relaxed);
        RequestCounts {
            get: n(0),
            list: n(1),
            watch: n(2),
            create: n(3),
            update: n(4),
            patch: n(5),
            delete: n(6),
            delete_collection: n(7),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Other,
}

#[derive(Debug)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub content_type: String,
    pub accept: String,
    pub body: Bytes,
}

impl Request {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.param(key), Some("true" | "1"))
    }

    pub fn dry_run(&self) -> bool {
        self.param("dryRun").is_some_and(|v| !v.is_empty())
    }
}

pub enum Reply {
    Json(u16, Bytes),
    Text(u16, &'static str),
    /// A watch: newline-delimited JSON events until the sender closes.
    Stream(mpsc::Receiver<Bytes>),
}

impl Reply {
    pub fn json(code: u16, value: &Value) -> Reply {
        Reply::Json(
            code,
            Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
        )
    }

    pub fn error(err: &ApiError) -> Reply {
        Reply::json(err.code, &err.to_status())
    }
}

impl From<Result<Reply, ApiError>> for Reply {
    fn from(result: Result<Reply, ApiError>) -> Reply {
        result.unwrap_or_else(|e| Reply::error(&e))
    }
}

/// A resolved resource request.
pub struct Ctx<'a> {
    pub state: &'a Arc<ApiState>,
    pub table: Arc<Table>,
    pub def: Arc<ResourceDef>,
    pub target: &'a Target,
}

impl Ctx<'_> {
    /// The apiVersion objects are returned in.
    pub fn api_version(&self) -> String {
        self.def.api_version(&self.target.version)
    }

    /// An object as served at the requested version (CRDs with several
    /// versions share one store; conversion is `None`: only apiVersion changes).
    pub fn present(&self, object: &Value) -> Value {
        let mut out = object.clone();
        if self.target.version != self.def.storage_version() {
            out["apiVersion"] = json!(self.api_version());
        }
        out
    }

    pub fn key(&self, name: &str) -> (String, String) {
        (
            self.target.namespace.clone().unwrap_or_default(),
            name.to_string(),
        )
    }
}

pub async fn handle(state: &Arc<ApiState>, req: Request) -> Reply {
    match route(&req.path) {
        Route::Version => Reply::json(200, &discovery::version()),
        Route::Health => Reply::Text(200, "ok"),
        Route::CoreVersions => Reply::json(200, &discovery::core_versions(&state.address)),
        Route::Groups => Reply::json(200, &discovery::groups(&state.store)),
        Route::Group(g) => discovery::group(&state.store, &g)
            .map(|v| Reply::json(200, &v))
            .unwrap_or_else(|| Reply::error(&ApiError::not_found_path(&req.path))),
        Route::Resources { group, version } => discovery::resources(&state.store, &group, &version)
            .map(|v| Reply::json(200, &v))
            .unwrap_or_else(|| Reply::error(&ApiError::not_found_path(&req.path))),
        Route::OpenApiRoot => Reply::json(200, &discovery::openapi_root(&state.store)),
        Route::OpenApi { group, version } => {
            discovery::openapi_group_version(&state.store, &group, &version)
                .map(|v| Reply::json(200, &v))
                .unwrap_or_else(|| Reply::error(&ApiError::not_found_path(&req.path)))
        }
        Route::Resource(target) => resource(state, &req, &target).await.into(),
        Route::NotFound => Reply::error(&ApiError::not_found_path(&req.path)),
    }
}

async fn resource(
    state: &Arc<ApiState>,
    req: &Request,
    target: &Target,
) -> Result<Reply, ApiError> {
    let not_found = || ApiError::not_found_path(&req.path);
    let table = state
        .store
        .table(&target.group, &target.resource)
        .ok_or_else(not_found)?;
    let def = table.def();
    if !def.serves(&target.version) || (!def.namespaced && target.namespace.is_some()) {
        return Err(not_found());
    }
    if def.namespaced && target.namespace.is_none() && target.name.is_some() {
        return Err(not_found());
    }
    match target.subresource.as_deref() {
        None => {}
        Some("status") if def.status_subresource => {}
        Some("eviction") if def.builtin == Some(crate::resources::Builtin::Pod) => {}
        Some(_) => return Err(not_found()),
    }
    let ctx = Ctx {
        state,
        table,
        def,
        target,
    };
    let verb = match (req.method, target.name.is_some()) {
        (Method::Get, true) => 0,
        (Method::Get, false) if req.flag("watch") => 2,
        (Method::Get, false) => 1,
        (Method::Post, _) => 3,
        (Method::Put, _) => 4,
        (Method::Patch, _) => 5,
        (Method::Delete, true) => 6,
        (Method::Delete, false) => 7,
        (Method::Other, _) => usize::MAX,
    };
    if verb != usize::MAX {
        state.counts.bump(verb);
    }
    match (req.method, target.name.as_deref()) {
        (Method::Post, Some(name)) if target.subresource.as_deref() == Some("eviction") => {
            disruption::evict(&ctx, req, name)
        }
        (_, _) if target.subresource.as_deref() == Some("eviction") => Err(
            ApiError::method_not_allowed("only POST is allowed on pods/eviction"),
        ),
        (Method::Get, None) if req.flag("watch") => watch::serve(&ctx, req),
        (Method::Get, None) => list(&ctx, req),
        (Method::Get, Some(name)) => get(&ctx, req, name),
        (Method::Post, None) => write::create(&ctx, req),
        (Method::Put, Some(name)) => write::update(&ctx, req, name),
        (Method::Patch, Some(name)) => write::patch(&ctx, req, name),
        (Method::Delete, Some(name)) => delete::delete(&ctx, req, name),
        (Method::Delete, None) => delete::delete_collection(&ctx, req),
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({})",
            req.path
        ))),
    }
}

/// Whether the client asked for metadata only (`as=PartialObjectMetadata`
/// or `as=PartialObjectMetadataList`, as kube's metadata watchers do).
pub fn wants_metadata(accept: &str) -> bool {
    accept.contains("as=PartialObjectMetadata")
}

/// The metadata-only form of an object.
pub fn partial(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object["metadata"],
    })
}

pub fn filter(ctx: &Ctx<'_>, req: &Request) -> Result<Filter, ApiError> {
    Ok(Filter {
        namespace: ctx.target.namespace.clone(),
        labels: LabelSelector::parse(req.param("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(req.param("fieldSelector").unwrap_or(""))?,
    })
}

fn get(ctx: &Ctx<'_>, req: &Request, name: &str) -> Result<Reply, ApiError> {
    let object = ctx
        .table
        .get(&ctx.key(name))
        .ok_or_else(|| ApiError::not_found(ctx.def.subject(name)))?;
    if table::wants_table(&req.accept) {
        return Ok(Reply::json(200, &table::render(&ctx.def, &[object], "")));
    }
    if wants_metadata(&req.accept) {
        return Ok(Reply::json(200, &partial(&object)));
    }
    Ok(Reply::json(200, &ctx.present(&object)))
}

/// Lists everything that matches: `limit` is ignored and no `continue`
/// token is ever returned, so every list is one consistent snapshot.
fn list(ctx: &Ctx<'_>, req: &Request) -> Result<Reply, ApiError> {
    let filter = filter(ctx, req)?;
    let (items, rv) = ctx
        .table
        .list(&ctx.state.store, ctx.target.namespace.as_deref());
    let items: Vec<Arc<Value>> = items.into_iter().filter(|o| filter.matches(o)).collect();
    if table::wants_table(&req.accept) {
        return Ok(Reply::json(
            200,
            &table::render(&ctx.def, &items, &rv.to_string()),
        ));
    }
    let metadata_only = wants_metadata(&req.accept);
    let mut out = Vec::with_capacity(items.len() * 1024 + 256);
    let header = if metadata_only {
        json!({
            "kind": "PartialObjectMetadataList",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": rv.to_string()},
        })
    } else {
        json!({
            "kind": format!("{}List", ctx.def.kind),
            "apiVersion": ctx.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
        })
    };
    let header = serde_json::to_string(&header).map_err(|e| ApiError::internal(e.to_string()))?;
    // `{...header...,"items":[...]}` without cloning every object.
    out.extend_from_slice(&header.as_bytes()[..header.len() - 1]);
    out.extend_from_slice(b",\"items\":[");
    let same_version = ctx.target.version == ctx.def.storage_version();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let written = if metadata_only {
            serde_json::to_writer(&mut out, &partial(item))
        } else if same_version {
            serde_json::to_writer(&mut out, &**item)
        } else {
            serde_json::to_writer(&mut out, &ctx.present(item))
        };
        written.map_err(|e| ApiError::internal(e.to_string()))?;
    }
    out.extend_from_slice(b"]}");
    Ok(Reply::Json(200, Bytes::from(out)))
}
