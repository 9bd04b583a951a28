//! A user's own PKI for `tls.mode: Provided` scenarios, as cert-manager
//! would keep it: a CA Secret with `ca.crt` and `kubernetes.io/tls` Secrets
//! for the server, the replication client and the pooler.

use std::collections::BTreeMap;
use std::time::Duration;

use capstan::api::ProvidedTls;
use capstan::resources::names;
use capstan::tls::Issued;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use time::OffsetDateTime;

use crate::E2eError;

/// Field manager of the Secrets a scenario writes as "the user".
const USER: &str = "e2e-user-pki";

pub struct UserPki {
    pub ca: Issued,
    cluster: String,
    namespace: String,
    lifetime: Duration,
}

impl UserPki {
    pub fn new(cluster: &str, namespace: &str, lifetime: Duration) -> Result<Self, E2eError> {
        let ca = capstan::tls::new_ca(&format!("{cluster} user CA"), now(), lifetime)
            .map_err(|e| E2eError::Setup(e.to_string()))?;
        Ok(Self {
            ca,
            cluster: cluster.to_string(),
            namespace: namespace.to_string(),
            lifetime,
        })
    }

    /// Every name of the `-rw`, `-ro` and `-r` Services.
    pub fn server_names(&self) -> Vec<String> {
        [
            names::rw_service(&self.cluster),
            names::ro_service(&self.cluster),
            names::r_service(&self.cluster),
        ]
        .iter()
        .flat_map(|s| names::service_dns_names(s, &self.namespace))
        .collect()
    }

    pub fn server(&self, names: &[String]) -> Result<Issued, E2eError> {
        capstan::tls::issue_server(&self.ca, names, now(), self.lifetime)
            .map_err(|e| E2eError::Setup(e.to_string()))
    }

    /// The four Secrets `provided` names, all valid.
    pub fn secrets(&self, provided: &ProvidedTls) -> Result<Vec<Secret>, E2eError> {
        let issue = |r: Result<Issued, capstan::tls::TlsError>| {
            r.map_err(|e| E2eError::Setup(e.to_string()))
        };
        let pooler_names = names::service_dns_names(&names::pooler(&self.cluster), &self.namespace);
        let pooler = issue(capstan::tls::issue_server(
            &self.ca,
            &pooler_names,
            now(),
            self.lifetime,
        ))?;
        let replication = issue(capstan::tls::issue_client(
            &self.ca,
            capstan::postgres::roles::REPLICATION,
            now(),
            self.lifetime,
        ))?;
        Ok(vec![
            self.secret(
                &provided.ca_secret_name,
                &[("ca.crt", &self.ca.cert_pem)],
                "Opaque",
            ),
            self.leaf(
                &provided.server_secret_name,
                &self.server(&self.server_names())?,
            ),
            self.leaf(&provided.replication_secret_name, &replication),
            self.leaf(&provided.pooler_secret_name, &pooler),
        ])
    }

    /// A `kubernetes.io/tls` Secret with `cert` and this CA.
    pub fn leaf(&self, name: &str, cert: &Issued) -> Secret {
        self.secret(
            name,
            &[
                ("tls.crt", &cert.cert_pem),
                ("tls.key", &cert.key_pem),
                ("ca.crt", &self.ca.cert_pem),
            ],
            "kubernetes.io/tls",
        )
    }

    fn secret(&self, name: &str, data: &[(&str, &str)], type_: &str) -> Secret {
        let mut s = Secret::default();
        s.metadata.name = Some(name.to_string());
        s.metadata.namespace = Some(self.namespace.clone());
        s.type_ = Some(type_.to_string());
        s.data = Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        );
        s
    }
}

/// Creates or replaces `secrets` as the user would (`kubectl apply`).
pub async fn apply(client: &Client, secrets: &[Secret]) -> Result<(), E2eError> {
    for s in secrets {
        let name = s.metadata.name.clone().unwrap_or_default();
        let ns = s.metadata.namespace.clone().unwrap_or_default();
        Api::<Secret>::namespaced(client.clone(), &ns)
            .patch(&name, &PatchParams::apply(USER).force(), &Patch::Apply(s))
            .await
            .map_err(|e| E2eError::Kube(format!("apply Secret {ns}/{name}"), e))?;
    }
    Ok(())
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}
