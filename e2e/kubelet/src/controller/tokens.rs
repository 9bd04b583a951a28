//! Service account tokens (with `token_requests`): for every pod this node
//! runs, each projected `serviceAccountToken` source gets a token of the
//! pod's ServiceAccount from the TokenRequest API, bound to the pod, and a
//! new one before 80% of its lifetime has passed. The tokens go to the
//! [`TokenStore`] the volume writers read; pods then refresh their files.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use tokio::sync::Notify;

use super::{Caches, triggered};
use crate::runtime::RuntimeHandle;
use crate::tokens::{
    IssuedToken, TokenKey, TokenStore, service_account_name, token_keys, token_request,
};

/// TokenRequests under way at once.
const PARALLEL: usize = 8;

/// How long a failed TokenRequest waits before the next try.
const RETRY: Duration = Duration::from_secs(2);

async fn request(client: Client, pod: Arc<Pod>, key: TokenKey) -> (TokenKey, Option<IssuedToken>) {
    let namespace = pod.namespace().unwrap_or_default();
    let account = service_account_name(&pod);
    let api: Api<ServiceAccount> = Api::namespaced(client, &namespace);
    let issued = match api
        .create_token_request(&account, &PostParams::default(), &token_request(&pod, &key))
        .await
    {
        Ok(response) => {
            let issued = IssuedToken::from_response(&response, Timestamp::now());
            if issued.is_none() {
                tracing::warn!(%namespace, pod = %pod.name_any(), %account, "TokenRequest answered without a token");
            }
            issued
        }
        Err(kube::Error::Api(s)) if s.is_not_found() => {
            // The ServiceAccount (or the pod) is not there yet: retried.
            tracing::debug!(%namespace, pod = %pod.name_any(), %account, "no ServiceAccount for a token yet");
            None
        }
        Err(e) => {
            tracing::warn!(%namespace, pod = %pod.name_any(), %account, error = %e, "TokenRequest failed (retrying)");
            None
        }
    };
    (key, issued)
}

pub(super) async fn run(
    client: Client,
    rt: RuntimeHandle,
    caches: Caches,
    tokens: Arc<TokenStore>,
    notify: Arc<Notify>,
    resync: Duration,
) {
    let retry = SignedDuration::try_from(RETRY).unwrap_or(SignedDuration::from_secs(2));
    // Keys whose last request failed: not before this time again.
    let mut backoff: HashMap<TokenKey, Timestamp> = HashMap::new();
    loop {
        let now = Timestamp::now();
        let running: HashSet<String> = rt.pod_uids().into_iter().collect();
        let mut wanted: HashSet<TokenKey> = HashSet::new();
        let mut due: Vec<(Arc<Pod>, TokenKey)> = Vec::new();
        for pod in caches.pods.state() {
            let Some(uid) = pod.metadata.uid.as_deref() else {
                continue;
            };
            if !running.contains(uid) || rt.config().runs_simulated(&pod) {
                continue;
            }
            for key in token_keys(&pod) {
                wanted.insert(key.clone());
                let stale = tokens.get(&key).is_none_or(|t| t.needs_refresh(now));
                if stale && backoff.get(&key).is_none_or(|at| now >= *at) {
                    due.push((pod.clone(), key));
                }
            }
        }
        tokens.retain(|k| wanted.contains(k));
        backoff.retain(|k, _| wanted.contains(k));
        let answers: Vec<(TokenKey, Option<IssuedToken>)> = futures::stream::iter(due)
            .map(|(pod, key)| request(client.clone(), pod, key))
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let mut changed = false;
        for (key, issued) in answers {
            match issued {
                Some(token) => {
                    backoff.remove(&key);
                    tokens.put(key, token);
                    changed = true;
                }
                None => {
                    backoff.insert(key, Timestamp::now().checked_add(retry).unwrap_or(now));
                }
            }
        }
        if changed {
            rt.objects_changed();
        }
        // Wake for the next refresh or retry that is due, at the latest on resync.
        let next = wanted
            .iter()
            .filter_map(|key| {
                let refresh = tokens.get(key).map(|t| t.refresh_at());
                match (refresh, backoff.get(key)) {
                    (Some(r), Some(b)) => Some(r.max(*b)),
                    (r, b) => r.or(b.copied()),
                }
            })
            .min();
        let wait = next
            .map(|at| {
                Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO)
            })
            .unwrap_or(resync);
        triggered(&notify, resync.min(wait)).await;
    }
}
