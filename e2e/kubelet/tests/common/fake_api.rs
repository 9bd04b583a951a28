//! A minimal in-memory Kubernetes API double (plain HTTP) for the controller
//! tests: list/watch with resourceVersions, get/create/replace/merge-patch/
//! delete, status subresources, graceful pod deletion (deletionTimestamp until
//! a delete with gracePeriodSeconds=0), no binding subresource (so the
//! kubelet's nodeName fallback is exercised), no clusterIP allocation, and
//! `serviceaccounts/<name>/token` (TokenRequest, 404 without the
//! ServiceAccount; the requests are recorded).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::broadcast;

type Key = (String, String, String); // (resource path prefix, namespace, name)

#[derive(Clone)]
struct WatchEvent {
    rv: u64,
    prefix: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<WatchEvent>,
}

pub struct FakeApi {
    state: Mutex<State>,
    events: broadcast::Sender<WatchEvent>,
    /// TokenRequests answered so far (namespace, service account, request).
    token_requests: Mutex<Vec<(String, String, Value)>>,
    /// Lifetime of issued tokens instead of the requested expirationSeconds.
    token_lifetime: Mutex<Option<Duration>>,
}

/// A running fake; dropping it stops the server.
pub struct FakeServer {
    pub url: String,
    pub api: Arc<FakeApi>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    pub async fn start() -> FakeServer {
        let api = Arc::new(FakeApi {
            state: Mutex::default(),
            events: broadcast::channel(4096).0,
            token_requests: Mutex::default(),
            token_lifetime: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = api.clone();
        let app = Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
            let api = shared.clone();
            async move { api.handle(method, uri, body).await }
        });
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeServer { url, api, task }
    }

    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "reason": reason, "message": message, "code": code});
    (
        StatusCode::from_u16(code).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(value: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

struct Route {
    prefix: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

/// `/api/v1/namespaces/ns/pods/name/status` → prefix "api/v1/pods", ns, name, sub.
fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (format!("api/{v}"), rest),
        ["apis", g, v, rest @ ..] => (format!("apis/{g}/{v}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (p, None, None),
        [p, n] => (p, Some(n.to_string()), None),
        [p, n, s] => (p, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    Some(Route {
        prefix: format!("{group}/{plural}"),
        namespace,
        name,
        sub,
    })
}

fn query(uri: &Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl FakeApi {
    /// Issued tokens expire after `lifetime`, whatever was requested.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        *self.token_lifetime.lock().unwrap() = Some(lifetime);
    }

    /// TokenRequests answered so far: (namespace, service account, request).
    pub fn token_requests(&self) -> Vec<(String, String, Value)> {
        self.token_requests.lock().unwrap().clone()
    }

    /// The object stored under `prefix` (e.g. `api/v1/nodes`, as in its URL), if any.
    pub fn object(&self, prefix: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (prefix.to_string(), namespace.to_string(), name.to_string());
        self.state.lock().unwrap().objects.get(&key).cloned()
    }

    fn token(&self, namespace: &str, account: &str, request: &Value) -> Response {
        let key = (
            "api/v1/serviceaccounts".to_string(),
            namespace.to_string(),
            account.to_string(),
        );
        if !self.state.lock().unwrap().objects.contains_key(&key) {
            return status(
                404,
                "NotFound",
                format!("serviceaccounts \"{account}\" not found"),
            );
        }
        let mut requests = self.token_requests.lock().unwrap();
        requests.push((namespace.to_string(), account.to_string(), request.clone()));
        let requested = request["spec"]["expirationSeconds"]
            .as_i64()
            .unwrap_or(3600);
        let lifetime = self
            .token_lifetime
            .lock()
            .unwrap()
            .map(|d| d.as_millis() as i64)
            .unwrap_or(requested * 1000);
        let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(lifetime);
        let mut answer = request.clone();
        answer["kind"] = json!("TokenRequest");
        answer["apiVersion"] = json!("authentication.k8s.io/v1");
        answer["status"] = json!({
            "token": format!("token-{namespace}-{account}-{}", requests.len()),
            "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        });
        (
            StatusCode::CREATED,
            [(header::CONTENT_TYPE, "application/json")],
            answer.to_string(),
        )
            .into_response()
    }

    fn emit(
        &self,
        st: &mut State,
        prefix: &str,
        namespace: &str,
        kind: &'static str,
        object: Value,
    ) {
        let ev = WatchEvent {
            rv: st.rv,
            prefix: prefix.to_string(),
            namespace: namespace.to_string(),
            kind,
            object,
        };
        st.log.push(ev.clone());
        let _ = self.events.send(ev);
    }

    /// Stores `object` with a new resourceVersion and emits the event.
    fn store(&self, st: &mut State, key: Key, mut object: Value, kind: &'static str) -> Value {
        st.rv += 1;
        object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        st.objects.insert(key.clone(), object.clone());
        self.emit(st, &key.0, &key.1, kind, object.clone());
        object
    }

    fn remove(&self, st: &mut State, key: &Key) -> Option<Value> {
        let mut object = st.objects.remove(key)?;
        st.rv += 1;
        object["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        self.emit(st, &key.0, &key.1, "DELETED", object.clone());
        Some(object)
    }

    async fn handle(self: Arc<Self>, method: Method, uri: Uri, body: Bytes) -> Response {
        let Some(r) = route(uri.path()) else {
            return status(404, "NotFound", format!("no route {}", uri.path()));
        };
        let q = query(&uri);
        let body: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or(Value::Null)
        };
        let ns = r.namespace.clone().unwrap_or_default();
        match (&method, &r.name) {
            (&Method::GET, None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
                self.watch(r, &q)
            }
            (&Method::GET, None) => {
                let st = self.state.lock().unwrap();
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|((p, n, _), _)| *p == r.prefix && (r.namespace.is_none() || *n == ns))
                    .map(|(_, v)| v.clone())
                    .collect();
                ok(
                    &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
                )
            }
            (&Method::POST, None) => self.create(&r, body),
            (_, Some(name)) => {
                let key = (r.prefix.clone(), ns, name.clone());
                match (method, r.sub.as_deref()) {
                    (Method::POST, Some("token")) if r.prefix == "api/v1/serviceaccounts" => {
                        self.token(&key.1, &key.2, &body)
                    }
                    (Method::GET, _) => match self.state.lock().unwrap().objects.get(&key) {
                        Some(v) => ok(v),
                        None => status(404, "NotFound", format!("{name} not found")),
                    },
                    (Method::PUT, sub) => self.update(key, sub, |_| body.clone(), true),
                    (Method::PATCH, sub) => self.update(
                        key,
                        sub,
                        |old| {
                            let mut new = old.clone();
                            merge(&mut new, &body);
                            new
                        },
                        false,
                    ),
                    (Method::DELETE, None) => self.delete(key, &q, &body),
                    _ => status(
                        404,
                        "NotFound",
                        format!("subresource {:?} is not served", r.sub),
                    ),
                }
            }
            _ => status(405, "MethodNotAllowed", "method not allowed".into()),
        }
    }

    fn create(&self, r: &Route, mut object: Value) -> Response {
        let ns = r.namespace.clone().unwrap_or_default();
        if object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
        {
            let base = object["metadata"]["generateName"]
                .as_str()
                .unwrap_or("obj-")
                .to_string();
            object["metadata"]["name"] = json!(format!("{base}{}", super::rand_suffix()));
        }
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        let key = (r.prefix.clone(), ns.clone(), name.clone());
        let mut st = self.state.lock().unwrap();
        if st.objects.contains_key(&key) {
            return status(409, "AlreadyExists", format!("{name} already exists"));
        }
        if r.namespace.is_some() {
            object["metadata"]["namespace"] = json!(ns);
        }
        object["metadata"]["uid"] = json!(format!("{}-{}", name, super::rand_suffix()));
        object["metadata"]["creationTimestamp"] = json!(now());
        object["metadata"]["generation"] = json!(1);
        if r.prefix.ends_with("/pods") || r.prefix.ends_with("/persistentvolumeclaims") {
            object["status"] = json!({"phase": "Pending"});
        } else if let Some(m) = object.as_object_mut() {
            m.remove("status");
        }
        let stored = self.store(&mut st, key, object, "ADDED");
        (
            StatusCode::CREATED,
            [(header::CONTENT_TYPE, "application/json")],
            stored.to_string(),
        )
            .into_response()
    }

    fn update(
        &self,
        key: Key,
        sub: Option<&str>,
        change: impl FnOnce(&Value) -> Value,
        check_rv: bool,
    ) -> Response {
        let mut st = self.state.lock().unwrap();
        let Some(old) = st.objects.get(&key).cloned() else {
            return status(404, "NotFound", format!("{} not found", key.2));
        };
        let mut new = change(&old);
        let sent_rv = new["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        if check_rv
            && sent_rv
                .as_ref()
                .is_some_and(|rv| Some(rv.as_str()) != old["metadata"]["resourceVersion"].as_str())
        {
            return status(409, "Conflict", "the object has been modified".into());
        }
        match sub {
            // /status writes change only .status; other writes keep it.
            Some("status") => {
                let status = new["status"].take();
                new = old.clone();
                new["status"] = status;
            }
            Some(other) => {
                return status(
                    404,
                    "NotFound",
                    format!("subresource {other} is not served"),
                );
            }
            None => {
                new["status"] = old["status"].clone();
                new["metadata"]["uid"] = old["metadata"]["uid"].clone();
                if new["spec"] != old["spec"] {
                    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
                    new["metadata"]["generation"] = json!(generation);
                }
            }
        }
        if new == old {
            return ok(&old);
        }
        let stored = self.store(&mut st, key.clone(), new, "MODIFIED");
        let terminating = stored["metadata"]["deletionTimestamp"].is_string();
        let finalizers_empty = stored["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
        if terminating && finalizers_empty && !key.0.ends_with("/pods") {
            self.remove(&mut st, &key);
        }
        ok(&stored)
    }

    fn delete(&self, key: Key, q: &BTreeMap<String, String>, body: &Value) -> Response {
        let mut st = self.state.lock().unwrap();
        let Some(old) = st.objects.get(&key).cloned() else {
            return status(404, "NotFound", format!("{} not found", key.2));
        };
        if let Some(uid) = body["preconditions"]["uid"].as_str()
            && Some(uid) != old["metadata"]["uid"].as_str()
        {
            return status(409, "Conflict", "precondition failed: uid".into());
        }
        let grace = body["gracePeriodSeconds"]
            .as_i64()
            .or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()))
            .or_else(|| old["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30);
        let scheduled = old["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty());
        let terminal = matches!(
            old["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        );
        if key.0.ends_with("/pods") && grace > 0 && scheduled && !terminal {
            if old["metadata"]["deletionTimestamp"].is_string()
                && old["metadata"]["deletionGracePeriodSeconds"]
                    .as_i64()
                    .is_some_and(|g| g <= grace)
            {
                return ok(&old);
            }
            let mut new = old;
            new["metadata"]["deletionTimestamp"] = json!(now());
            new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            return ok(&self.store(&mut st, key, new, "MODIFIED"));
        }
        match self.remove(&mut st, &key) {
            Some(v) => ok(&v),
            None => status(404, "NotFound", format!("{} not found", key.2)),
        }
    }

    fn watch(&self, r: Route, q: &BTreeMap<String, String>) -> Response {
        let since: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .unwrap_or(300u64);
        let rx = self.events.subscribe();
        let backlog: Vec<WatchEvent> = {
            let st = self.state.lock().unwrap();
            if since == 0 {
                st.objects
                    .iter()
                    .filter(|((p, _, _), _)| *p == r.prefix)
                    .map(|((p, n, _), v)| WatchEvent {
                        rv: st.rv,
                        prefix: p.clone(),
                        namespace: n.clone(),
                        kind: "ADDED",
                        object: v.clone(),
                    })
                    .collect()
            } else {
                st.log.iter().filter(|e| e.rv > since).cloned().collect()
            }
        };
        let last = backlog.iter().map(|e| e.rv).max().unwrap_or(since);
        let (prefix, namespace) = (r.prefix.clone(), r.namespace.clone());
        let matches = move |e: &WatchEvent| {
            e.prefix == prefix && namespace.as_ref().is_none_or(|n| *n == e.namespace)
        };
        let m2 = matches.clone();
        let backlog = futures::stream::iter(backlog.into_iter().filter(move |e| matches(e)));
        let live = futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(e) => return Some((e, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .filter(move |e| futures::future::ready(e.rv > last && m2(e)));
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        let stream = backlog
            .chain(live)
            .map(|e| {
                Ok::<_, std::io::Error>(Bytes::from(format!(
                    "{}\n",
                    json!({"type": e.kind, "object": e.object})
                )))
            })
            .take_until(deadline);
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(stream))
            .unwrap()
    }
}
