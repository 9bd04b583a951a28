//! Watch streams: newline-delimited `{"type","object"}` events from a
//! resourceVersion (410 Gone as an ERROR event when it is older than the
//! table's history), synthetic ADDED events for "from now"/`0` watches and
//! `sendInitialEvents`, selector transitions (an object leaving the
//! selection is DELETED, entering it ADDED), periodic BOOKMARKs and
//! `timeoutSeconds`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::api::{ApiState, Ctx, Reply, Request, filter, partial, wants_metadata};
use crate::resources::ResourceDef;
use crate::selectors::Filter;
use crate::status::ApiError;
use crate::store::{Event, EventKind, Table};

/// Watches without `timeoutSeconds` end after this long (the real server
/// picks 30–60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
const BATCH: usize = 512;

struct Params {
    /// None: start now, with synthetic ADDED events for existing objects.
    from: Option<u64>,
    initial_events: bool,
    bookmarks: bool,
    timeout: Duration,
}

struct Stream {
    state: Arc<ApiState>,
    table: Arc<Table>,
    def: Arc<ResourceDef>,
    /// apiVersion to rewrite objects to, when not the storage version.
    rewrite: Option<String>,
    /// Send `PartialObjectMetadata` instead of whole objects.
    metadata_only: bool,
    filter: Filter,
    tx: mpsc::Sender<Bytes>,
}

pub fn serve(ctx: &Ctx<'_>, req: &Request) -> Result<Reply, ApiError> {
    let from = match req.param("resourceVersion") {
        None | Some("" | "0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let requested = req
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TIMEOUT);
    let timeout = ctx
        .state
        .watch_timeout_cap
        .map_or(requested, |cap| requested.min(cap));
    let params = Params {
        from,
        initial_events: req.flag("sendInitialEvents"),
        bookmarks: req.flag("allowWatchBookmarks"),
        timeout,
    };
    let (tx, rx) = mpsc::channel(256);
    let stream = Stream {
        state: ctx.state.clone(),
        table: ctx.table.clone(),
        def: ctx.def.clone(),
        rewrite: (ctx.target.version != ctx.def.storage_version()).then(|| ctx.api_version()),
        metadata_only: wants_metadata(&req.accept),
        filter: filter(ctx, req)?,
        tx,
    };
    tokio::spawn(stream.run(params));
    Ok(Reply::Stream(rx))
}

fn line(kind: &str, object: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(object.len() + 32);
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    out.extend_from_slice(object);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

impl Stream {
    async fn send(&self, bytes: Bytes) -> bool {
        self.tx.send(bytes).await.is_ok()
    }

    fn object_bytes(&self, object: &Value, cached: Option<&Event>) -> Bytes {
        if self.metadata_only {
            return Bytes::from(serde_json::to_vec(&partial(object)).unwrap_or_default());
        }
        match (&self.rewrite, cached) {
            (None, Some(ev)) => ev.object_json(),
            (None, None) => Bytes::from(serde_json::to_vec(object).unwrap_or_default()),
            (Some(av), _) => {
                let mut copy = object.clone();
                copy["apiVersion"] = json!(av);
                Bytes::from(serde_json::to_vec(&copy).unwrap_or_default())
            }
        }
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let api_version = self
            .rewrite
            .clone()
            .unwrap_or_else(|| self.def.api_version(self.def.storage_version()));
        let object = json!({"kind": self.def.kind, "apiVersion": api_version, "metadata": meta});
        line("BOOKMARK", &serde_json::to_vec(&object).unwrap_or_default())
    }

    /// The event as this watch sees it through its selectors.
    fn render(&self, ev: &Event) -> Option<Bytes> {
        let now = self.filter.matches(&ev.object);
        let kind = match ev.kind {
            EventKind::Added => now.then_some("ADDED"),
            EventKind::Deleted => now.then_some("DELETED"),
            EventKind::Modified => {
                let before = ev.old.as_deref().is_some_and(|o| self.filter.matches(o));
                match (before, now) {
                    (true, true) => Some("MODIFIED"),
                    (false, true) => Some("ADDED"),
                    (true, false) => Some("DELETED"),
                    (false, false) => None,
                }
            }
        }?;
        Some(line(kind, &self.object_bytes(&ev.object, Some(ev))))
    }

    async fn run(self, params: Params) {
        let deadline = Instant::now() + params.timeout;
        let interval = self.state.bookmark_interval;
        let mut next_bookmark = Instant::now() + interval;
        let mut notify = self.table.subscribe();
        notify.borrow_and_update();
        let mut cursor = match params.from {
            Some(rv) if !params.initial_events => rv,
            _ => {
                let (items, rv) = self
                    .table
                    .list(&self.state.store, self.filter.namespace.as_deref());
                for item in items.iter().filter(|o| self.filter.matches(o)) {
                    if !self
                        .send(line("ADDED", &self.object_bytes(item, None)))
                        .await
                    {
                        return;
                    }
                }
                if params.initial_events
                    && params.bookmarks
                    && !self.send(self.bookmark(rv, true)).await
                {
                    return;
                }
                rv
            }
        };
        loop {
            notify.borrow_and_update();
            let (batch, horizon) = match self.table.events_after(&self.state.store, cursor, BATCH) {
                Ok(found) => found,
                Err(oldest) => {
                    let status = ApiError::gone(cursor, oldest).to_status();
                    self.send(line(
                        "ERROR",
                        &serde_json::to_vec(&status).unwrap_or_default(),
                    ))
                    .await;
                    return;
                }
            };
            for ev in &batch {
                cursor = ev.rv;
                if let Some(bytes) = self.render(ev)
                    && !self.send(bytes).await
                {
                    return;
                }
            }
            let Some(horizon) = horizon else { continue };
            cursor = cursor.max(horizon);
            if self.table.is_removed() {
                return;
            }
            tokio::select! {
                changed = notify.changed() => if changed.is_err() { return },
                _ = sleep_until(next_bookmark) => {
                    next_bookmark = Instant::now() + interval;
                    if params.bookmarks && !self.send(self.bookmark(cursor, false)).await {
                        return;
                    }
                }
                _ = sleep_until(deadline) => {
                    if params.bookmarks {
                        self.send(self.bookmark(cursor, false)).await;
                    }
                    return;
                }
                _ = self.tx.closed() => return,
            }
        }
    }
}
