//! A container's environment: image env, Service env, `envFrom`, `env` (with
//! `valueFrom` and `$(VAR)` expansion), as the kubelet builds it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, EnvVarSource};

use crate::downward::{DownwardError, PodFacts};
use crate::objects::ObjectSource;

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("secret {0:?} not found")]
    SecretNotFound(String),
    #[error("configmap {0:?} not found")]
    ConfigMapNotFound(String),
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    KeyNotFound {
        kind: &'static str,
        namespace: String,
        name: String,
        key: String,
    },
    #[error("{0}")]
    Downward(#[from] DownwardError),
    #[error("env var {0:?} has an empty valueFrom")]
    EmptySource(String),
}

/// An ordered environment where later definitions replace earlier ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    vars: Vec<(String, String)>,
}

impl Environment {
    pub fn set(&mut self, name: &str, value: String) {
        match self.vars.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name.to_string(), value)),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }
}

/// Kubernetes `$(VAR)` expansion: defined variables are substituted, `$$`
/// escapes a dollar, and anything else is left as written.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

pub struct EnvInputs<'a> {
    pub facts: PodFacts<'a>,
    pub objects: &'a dyn ObjectSource,
    /// Image env (PATH, PG_MAJOR, …): visible to the process, not to `$(VAR)`.
    pub image: &'a [(String, String)],
    /// Kubelet-provided env (KUBERNETES_SERVICE_HOST, …), visible to `$(VAR)`.
    pub service: &'a [(String, String)],
}

/// The process environment of `container`.
pub fn container_env(
    container: &Container,
    inputs: &EnvInputs<'_>,
) -> Result<Environment, EnvError> {
    let namespace = inputs
        .facts
        .pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_default();
    let mut defined: BTreeMap<String, String> = inputs.service.iter().cloned().collect();
    let mut env = Environment::default();
    for (k, v) in inputs.image.iter().chain(inputs.service) {
        env.set(k, v.clone());
    }
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data: BTreeMap<String, String> = if let Some(r) = &from.config_map_ref {
            match inputs.objects.config_map(&namespace, &r.name) {
                Some(cm) => cm.data.clone().unwrap_or_default(),
                None if r.optional == Some(true) => BTreeMap::new(),
                None => return Err(EnvError::ConfigMapNotFound(r.name.clone())),
            }
        } else if let Some(r) = &from.secret_ref {
            match inputs.objects.secret(&namespace, &r.name) {
                Some(s) => secret_strings(&s),
                None if r.optional == Some(true) => BTreeMap::new(),
                None => return Err(EnvError::SecretNotFound(r.name.clone())),
            }
        } else {
            BTreeMap::new()
        };
        for (k, v) in data {
            let name = format!("{prefix}{k}");
            env.set(&name, v.clone());
            defined.insert(name, v);
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value_from, &var.value) {
            (Some(source), _) => match value_from(&var.name, source, &namespace, inputs)? {
                Some(v) => v,
                None => continue,
            },
            (None, Some(v)) => expand(v, |name| defined.get(name).cloned()),
            (None, None) => String::new(),
        };
        env.set(&var.name, value.clone());
        defined.insert(var.name.clone(), value);
    }
    Ok(env)
}

fn secret_strings(secret: &k8s_openapi::api::core::v1::Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = secret.string_data.clone().unwrap_or_default();
    for (k, v) in secret.data.iter().flatten() {
        out.insert(k.clone(), String::from_utf8_lossy(&v.0).into_owned());
    }
    out
}

/// `Ok(None)`: an optional reference that does not resolve (the variable is left unset).
fn value_from(
    var: &str,
    source: &EnvVarSource,
    namespace: &str,
    inputs: &EnvInputs<'_>,
) -> Result<Option<String>, EnvError> {
    if let Some(f) = &source.field_ref {
        return Ok(Some(inputs.facts.field(&f.field_path)?));
    }
    if let Some(r) = &source.resource_field_ref {
        let container = r.container_name.clone().unwrap_or_default();
        return Ok(Some(inputs.facts.resource(
            &container,
            &r.resource,
            r.divisor.as_ref(),
        )?));
    }
    if let Some(r) = &source.secret_key_ref {
        let optional = r.optional == Some(true);
        let Some(secret) = inputs.objects.secret(namespace, &r.name) else {
            return if optional {
                Ok(None)
            } else {
                Err(EnvError::SecretNotFound(r.name.clone()))
            };
        };
        return match secret_strings(&secret).remove(&r.key) {
            Some(v) => Ok(Some(v)),
            None if optional => Ok(None),
            None => Err(EnvError::KeyNotFound {
                kind: "Secret",
                namespace: namespace.to_string(),
                name: r.name.clone(),
                key: r.key.clone(),
            }),
        };
    }
    if let Some(r) = &source.config_map_key_ref {
        let optional = r.optional == Some(true);
        let Some(cm) = inputs.objects.config_map(namespace, &r.name) else {
            return if optional {
                Ok(None)
            } else {
                Err(EnvError::ConfigMapNotFound(r.name.clone()))
            };
        };
        return match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(EnvError::KeyNotFound {
                kind: "ConfigMap",
                namespace: namespace.to_string(),
                name: r.name.clone(),
                key: r.key.clone(),
            }),
        };
    }
    Err(EnvError::EmptySource(var.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::MemoryObjects;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{EnvVar, ObjectFieldSelector, Pod, Secret, SecretKeySelector};
    use std::net::Ipv4Addr;

    #[test]
    fn expansion() {
        let lookup = |n: &str| (n == "A").then(|| "x".to_string());
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", lookup), "x-$(B)-$(A)-$");
        assert_eq!(expand("no vars", lookup), "no vars");
        assert_eq!(expand("$(unterminated", lookup), "$(unterminated");
    }

    #[test]
    fn builds_env() {
        let objects = MemoryObjects::new();
        let mut secret = Secret::default();
        secret.metadata.name = Some("creds".into());
        secret.metadata.namespace = Some("ns".into());
        secret.data = Some([("password".to_string(), ByteString(b"s3cret".to_vec()))].into());
        objects.put_secret(secret);
        let mut pod = Pod::default();
        pod.metadata.name = Some("p".into());
        pod.metadata.namespace = Some("ns".into());
        let facts = PodFacts {
            pod: &pod,
            pod_ip: Some(Ipv4Addr::new(127, 20, 0, 9)),
            host_ip: Ipv4Addr::new(127, 20, 0, 1),
            node_name: "n",
            node_cpus: 1.0,
            node_memory: 1.0,
        };
        let var = |name: &str, value: Option<&str>, from: Option<EnvVarSource>| EnvVar {
            name: name.into(),
            value: value.map(Into::into),
            value_from: from,
        };
        let container = Container {
            env: Some(vec![
                var(
                    "POD_IP",
                    None,
                    Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "status.podIP".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                ),
                var("URL", Some("http://$(POD_IP):$(PORT)"), None),
                var(
                    "PW",
                    None,
                    Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "creds".into(),
                            key: "password".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    }),
                ),
            ]),
            ..Default::default()
        };
        let image = [("PATH".to_string(), "/bin".to_string())];
        let inputs = EnvInputs {
            facts,
            objects: &objects,
            image: &image,
            service: &[],
        };
        let env = container_env(&container, &inputs).unwrap();
        assert_eq!(env.get("URL"), Some("http://127.20.0.9:$(PORT)"));
        assert_eq!(env.get("PW"), Some("s3cret"));
        assert_eq!(env.get("PATH"), Some("/bin"));

        let missing = Container {
            env: Some(vec![var(
                "X",
                None,
                Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "creds".into(),
                        key: "nope".into(),
                        optional: None,
                    }),
                    ..Default::default()
                }),
            )]),
            ..Default::default()
        };
        let err = container_env(&missing, &inputs).unwrap_err();
        assert_eq!(err.to_string(), "couldn't find key nope in Secret ns/creds");
    }
}
