//! Read access to the API objects pods refer to (Secrets, ConfigMaps, claims)
//! and to their service account tokens.
//!
//! The API-facing controller backs this with watch caches; tests and API-less
//! harnesses use [`MemoryObjects`].

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret};
use kube::ResourceExt;

use crate::tokens::{IssuedToken, TokenKey, TokenStore};

pub trait ObjectSource: Send + Sync + 'static {
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>>;
    fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>>;
    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>>;
    /// The current token for a projected `serviceAccountToken` source (with
    /// [`crate::KubeletConfig::token_requests`]); `None` until requested.
    fn service_account_token(&self, key: &TokenKey) -> Option<String> {
        let _ = key;
        None
    }
}

type Objects<K> = RwLock<BTreeMap<(String, String), Arc<K>>>;

/// In-memory objects; after changing them, call
/// [`crate::Runtime::objects_changed`] so mounted volumes are refreshed.
#[derive(Default)]
pub struct MemoryObjects {
    secrets: Objects<Secret>,
    config_maps: Objects<ConfigMap>,
    claims: Objects<PersistentVolumeClaim>,
    tokens: TokenStore,
}

fn key<K: ResourceExt>(obj: &K) -> (String, String) {
    (obj.namespace().unwrap_or_default(), obj.name_any())
}

fn put<K: ResourceExt>(map: &Objects<K>, obj: K) {
    map.write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key(&obj), Arc::new(obj));
}

fn get<K>(map: &Objects<K>, namespace: &str, name: &str) -> Option<Arc<K>> {
    map.read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(namespace.to_string(), name.to_string()))
        .cloned()
}

impl MemoryObjects {
    pub fn new() -> Self {
        MemoryObjects::default()
    }

    pub fn put_secret(&self, secret: Secret) {
        put(&self.secrets, secret);
    }

    pub fn put_config_map(&self, config_map: ConfigMap) {
        put(&self.config_maps, config_map);
    }

    pub fn put_claim(&self, claim: PersistentVolumeClaim) {
        put(&self.claims, claim);
    }

    /// Stands in for a TokenRequest answer.
    pub fn put_token(&self, key: TokenKey, token: &str) {
        let now = jiff::Timestamp::now();
        let expires = now
            .checked_add(jiff::SignedDuration::from_secs(key.expiration_seconds))
            .unwrap_or(now);
        self.tokens.put(
            key,
            IssuedToken {
                token: token.to_string(),
                issued: now,
                expires,
            },
        );
    }
}

impl ObjectSource for MemoryObjects {
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        get(&self.secrets, namespace, name)
    }

    fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        get(&self.config_maps, namespace, name)
    }

    fn claim(&self, namespace: &str, name: &str) -> Option<Arc<PersistentVolumeClaim>> {
        get(&self.claims, namespace, name)
    }

    fn service_account_token(&self, key: &TokenKey) -> Option<String> {
        self.tokens.get(key).map(|t| t.token)
    }
}
