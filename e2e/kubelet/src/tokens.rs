//! Service account tokens of projected `serviceAccountToken` sources (with
//! [`crate::KubeletConfig::token_requests`]): which tokens a pod needs, the
//! TokenRequest for one, and when to refresh it, as the kubelet's token
//! manager does: at 80% of its lifetime, at the latest 24 h after it was
//! issued. Pure: the API-facing side requests the tokens into a
//! [`TokenStore`], the volume code reads them from there.

use std::collections::BTreeMap;
use std::sync::RwLock;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccountTokenProjection};

/// `expirationSeconds` of a projection that sets none (the API default).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// A token is refreshed at the latest this long after it was issued.
const MAX_TTL: SignedDuration = SignedDuration::from_hours(24);
/// Never sooner than this after issue, even for a token the API server
/// issued with (nearly) no lifetime left.
const MIN_REFRESH: SignedDuration = SignedDuration::from_secs(1);

/// One token a pod needs: per pod, audience and lifetime (two projections
/// asking for the same share it).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenKey {
    pub pod_uid: String,
    /// Empty: the API server's default audiences.
    pub audience: String,
    pub expiration_seconds: i64,
}

impl TokenKey {
    pub fn new(pod_uid: &str, source: &ServiceAccountTokenProjection) -> TokenKey {
        TokenKey {
            pod_uid: pod_uid.to_string(),
            audience: source.audience.clone().unwrap_or_default(),
            expiration_seconds: source
                .expiration_seconds
                .unwrap_or(DEFAULT_EXPIRATION_SECONDS),
        }
    }
}

/// The pod's ServiceAccount: `spec.serviceAccountName`, the deprecated
/// `spec.serviceAccount`, else `default`.
pub fn service_account_name(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.service_account_name.clone())
        .or_else(|| spec.and_then(|s| s.service_account.clone()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string())
}

/// Every token the pod's projected volumes need, without duplicates.
pub fn token_keys(pod: &Pod) -> Vec<TokenKey> {
    let Some(uid) = pod.metadata.uid.as_deref() else {
        return Vec::new();
    };
    let mut keys: Vec<TokenKey> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| v.projected.as_ref())
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| s.service_account_token.as_ref())
        .map(|t| TokenKey::new(uid, t))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The TokenRequest for `key`, bound to the pod (the token dies with it).
pub fn token_request(pod: &Pod, key: &TokenKey) -> TokenRequest {
    let audiences = if key.audience.is_empty() {
        Vec::new()
    } else {
        vec![key.audience.clone()]
    };
    TokenRequest {
        spec: TokenRequestSpec {
            audiences,
            expiration_seconds: Some(key.expiration_seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_string()),
                kind: Some("Pod".to_string()),
                name: pod.metadata.name.clone(),
                uid: Some(key.pod_uid.clone()),
            }),
        },
        ..Default::default()
    }
}

/// A token the API server issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    /// When we received it.
    pub issued: Timestamp,
    /// `status.expirationTimestamp`.
    pub expires: Timestamp,
}

impl IssuedToken {
    /// The API server's answer, received at `now`; `None` without a token.
    pub fn from_response(response: &TokenRequest, now: Timestamp) -> Option<IssuedToken> {
        let status = response.status.as_ref()?;
        if status.token.is_empty() {
            return None;
        }
        Some(IssuedToken {
            token: status.token.clone(),
            issued: now,
            expires: status.expiration_timestamp.0,
        })
    }

    /// When to request a new one: 80% into its lifetime, at most 24 h after
    /// issue, at least a second after issue.
    pub fn refresh_at(&self) -> Timestamp {
        let lifetime = self.expires.duration_since(self.issued);
        let wait = lifetime
            .checked_mul(4)
            .map(|d| d / 5)
            .unwrap_or(MAX_TTL)
            .clamp(MIN_REFRESH, MAX_TTL);
        self.issued.checked_add(wait).unwrap_or(self.expires)
    }

    pub fn needs_refresh(&self, now: Timestamp) -> bool {
        now >= self.refresh_at()
    }
}

/// Tokens shared between the requester and the volume writers.
#[derive(Debug, Default)]
pub struct TokenStore {
    tokens: RwLock<BTreeMap<TokenKey, IssuedToken>>,
}

impl TokenStore {
    pub fn new() -> Self {
        TokenStore::default()
    }

    pub fn get(&self, key: &TokenKey) -> Option<IssuedToken> {
        self.read().get(key).cloned()
    }

    pub fn put(&self, key: TokenKey, token: IssuedToken) {
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, token);
    }

    /// Drops the tokens `keep` says no to (pods that are gone).
    pub fn retain(&self, mut keep: impl FnMut(&TokenKey) -> bool) {
        self.tokens
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| keep(k));
    }

    /// The earliest refresh time of any stored token.
    pub fn next_refresh(&self) -> Option<Timestamp> {
        self.read().values().map(IssuedToken::refresh_at).min()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<TokenKey, IssuedToken>> {
        self.tokens.read().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "db-1", "namespace": "ns", "uid": "u1"},
            "spec": {"serviceAccountName": "capstan-instance", "containers": [{"name": "c", "image": "x"}],
                "volumes": [
                    {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
                    ]}},
                    {"name": "vault", "projected": {"sources": [
                        {"serviceAccountToken": {"audience": "vault", "path": "token"}}
                    ]}},
                    {"name": "again", "projected": {"sources": [
                        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "t"}}
                    ]}},
                    {"name": "data", "emptyDir": {}}
                ]}
        }))
        .unwrap()
    }

    #[test]
    fn keys_and_request() {
        let pod = pod();
        let keys = token_keys(&pod);
        assert_eq!(
            keys,
            vec![
                TokenKey {
                    pod_uid: "u1".into(),
                    audience: String::new(),
                    expiration_seconds: 3607
                },
                TokenKey {
                    pod_uid: "u1".into(),
                    audience: "vault".into(),
                    expiration_seconds: DEFAULT_EXPIRATION_SECONDS
                },
            ]
        );
        assert_eq!(service_account_name(&pod), "capstan-instance");
        let request = serde_json::to_value(token_request(&pod, &keys[0])).unwrap();
        assert_eq!(
            request["spec"],
            json!({"audiences": [], "expirationSeconds": 3607,
                   "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "db-1", "uid": "u1"}})
        );
        let request = serde_json::to_value(token_request(&pod, &keys[1])).unwrap();
        assert_eq!(request["spec"]["audiences"], json!(["vault"]));

        let mut plain = pod.clone();
        if let Some(spec) = plain.spec.as_mut() {
            spec.service_account_name = None;
            spec.volumes = None;
        }
        assert_eq!(service_account_name(&plain), "default");
        assert!(token_keys(&plain).is_empty());
    }

    #[test]
    fn refreshes_at_80_percent_of_the_lifetime() {
        let issued: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let token = |lifetime: SignedDuration| IssuedToken {
            token: "t".into(),
            issued,
            expires: issued + lifetime,
        };
        let hour = token(SignedDuration::from_secs(3600));
        assert_eq!(hour.refresh_at(), issued + SignedDuration::from_secs(2880));
        assert!(!hour.needs_refresh(issued + SignedDuration::from_secs(2879)));
        assert!(hour.needs_refresh(issued + SignedDuration::from_secs(2880)));
        // A year-long token still gets a new one after a day.
        let year = token(SignedDuration::from_hours(24 * 365));
        assert_eq!(year.refresh_at(), issued + SignedDuration::from_hours(24));
        // Expired on arrival (clock skew): retried, but not in a tight loop.
        let expired = token(SignedDuration::from_secs(-5));
        assert_eq!(expired.refresh_at(), issued + SignedDuration::from_secs(1));

        let response: TokenRequest = serde_json::from_value(json!({
            "spec": {"audiences": []},
            "status": {"token": "jwt", "expirationTimestamp": "2026-01-01T01:00:00Z"}
        }))
        .unwrap();
        let jwt = IssuedToken {
            token: "jwt".into(),
            ..hour
        };
        assert_eq!(IssuedToken::from_response(&response, issued), Some(jwt));
        let empty: TokenRequest =
            serde_json::from_value(json!({"spec": {"audiences": []}})).unwrap();
        assert_eq!(IssuedToken::from_response(&empty, issued), None);
    }

    #[test]
    fn store_keeps_the_earliest_refresh() {
        let store = TokenStore::new();
        let issued: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let key = |uid: &str| TokenKey {
            pod_uid: uid.into(),
            audience: String::new(),
            expiration_seconds: 3600,
        };
        for (uid, secs) in [("a", 3600), ("b", 600)] {
            store.put(
                key(uid),
                IssuedToken {
                    token: uid.into(),
                    issued,
                    expires: issued + SignedDuration::from_secs(secs),
                },
            );
        }
        assert_eq!(
            store.next_refresh(),
            Some(issued + SignedDuration::from_secs(480))
        );
        store.retain(|k| k.pod_uid == "a");
        assert_eq!(store.len(), 1);
        assert_eq!(store.get(&key("a")).unwrap().token, "a");
    }
}
