//! Secrets: generated passwords, the cluster CA and the certificates it
//! issues, and how pods mount them.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    KeyToPath, ProjectedVolumeSource, Secret, SecretProjection, Volume, VolumeProjection,
};

use super::labels;
use super::model::Model;
use super::names;
use crate::api::TlsMode;
use crate::contract::layout::{self, files};
use crate::postgres::roles;
use crate::tls::{Authorities, CaRecord, CaSet, CertSummary, Issued};

/// Where each TLS certificate and its CA come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSources {
    /// Secret with the data-plane CA certificate (`ca.crt`) clients trust.
    pub ca: String,
    /// PostgreSQL's server certificate (`tls.crt`, `tls.key`).
    pub server: String,
    /// Client certificate of `streaming_replica`.
    pub replication: String,
    /// PgBouncer's server certificate.
    pub pooler: String,
    /// Provided TLS: pods read `ca.crt` from each mounted Secret, Capstan's
    /// checked copy of the user's, not from a Secret of their CA.
    pub ca_beside_certificate: bool,
}

impl TlsSources {
    /// The Secret a pod mounting `cert_secret` reads `ca.crt` from.
    pub fn ca_for<'a>(&'a self, cert_secret: &'a str) -> &'a str {
        if self.ca_beside_certificate {
            cert_secret
        } else {
            &self.ca
        }
    }
}

/// The Secrets pods mount are always Capstan's: with provided TLS they hold
/// copies of the user's, made only once a copy passed its checks, so a bad
/// replacement never reaches a running server.
pub fn tls_sources(model: &Model) -> TlsSources {
    let cluster = &model.name;
    let provided = match (&model.spec.tls.mode, &model.spec.tls.provided) {
        (TlsMode::Provided, Some(p)) => Some(p),
        _ => None,
    };
    TlsSources {
        ca: provided.map_or_else(|| names::ca_secret(cluster), |p| p.ca_secret_name.clone()),
        server: names::server_tls_secret(cluster),
        replication: names::replication_tls_secret(cluster),
        pooler: names::pooler_tls_secret(cluster),
        ca_beside_certificate: provided.is_some(),
    }
}

/// The user's Secret each provided certificate is copied from, and the
/// field that names it.
pub fn provided_sources(model: &Model) -> Vec<(CertKind, &'static str, String)> {
    let Some(p) = model
        .spec
        .tls
        .provided
        .as_ref()
        .filter(|_| model.spec.tls.mode == TlsMode::Provided)
    else {
        return vec![];
    };
    vec![
        (
            CertKind::Server,
            "spec.tls.provided.serverSecretName",
            p.server_secret_name.clone(),
        ),
        (
            CertKind::Replication,
            "spec.tls.provided.replicationSecretName",
            p.replication_secret_name.clone(),
        ),
        (
            CertKind::Pooler,
            "spec.tls.provided.poolerSecretName",
            p.pooler_secret_name.clone(),
        ),
    ]
}

/// Names of the content of a provided certificate, its key and CA: a copy
/// is re-made when the user's Secrets hold anything else.
pub fn provided_digest(cert_pem: &str, key_pem: &str, ca_pem: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [cert_pem, key_pem, ca_pem] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Capstan's copy of a provided certificate that passed its checks.
pub fn provided_copy(
    model: &Model,
    kind: CertKind,
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Secret {
    let mut metadata = model.child_meta(
        kind.secret_name(&model.name),
        labels::common(&model.name, labels::COMPONENT_CONTROL),
    );
    let summary = CertSummary::of(cert_pem, ca_pem).map(|mut s| {
        s.trust = Some(provided_digest(cert_pem, key_pem, ca_pem));
        s
    });
    annotate(&mut metadata, CERTIFICATE_ANNOTATION, summary.as_ref());
    Secret {
        metadata,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (files::TLS_CRT.to_string(), bytes(cert_pem)),
            (files::TLS_KEY.to_string(), bytes(key_pem)),
            (files::CA_CRT.to_string(), bytes(ca_pem)),
        ])),
        ..Secret::default()
    }
}

/// A projected volume with `tls.crt` and `tls.key` from `cert_secret` and
/// `ca.crt` from `ca_secret`, readable by the pod's user only.
pub fn tls_volume(name: &str, cert_secret: &str, ca_secret: &str) -> Volume {
    let items = |keys: &[&str]| {
        Some(
            keys.iter()
                .map(|k| KeyToPath {
                    key: (*k).to_string(),
                    path: (*k).to_string(),
                    mode: None,
                })
                .collect(),
        )
    };
    let project = |secret: &str, keys: &[&str]| VolumeProjection {
        secret: Some(SecretProjection {
            name: secret.to_string(),
            items: items(keys),
            optional: Some(false),
        }),
        ..VolumeProjection::default()
    };
    Volume {
        name: name.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o600),
            sources: Some(vec![
                project(cert_secret, &[files::TLS_CRT, files::TLS_KEY]),
                project(ca_secret, &[files::CA_CRT]),
            ]),
        }),
        ..Volume::default()
    }
}

/// Secrets holding a generated password.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PasswordSecret {
    Superuser,
    App,
    Pooler,
}

impl PasswordSecret {
    pub const ALL: [PasswordSecret; 3] = [
        PasswordSecret::Superuser,
        PasswordSecret::App,
        PasswordSecret::Pooler,
    ];

    pub fn name(self, cluster: &str) -> String {
        match self {
            PasswordSecret::Superuser => names::superuser_secret(cluster),
            PasswordSecret::App => names::app_secret(cluster),
            PasswordSecret::Pooler => names::pooler_secret(cluster),
        }
    }

    pub fn username(self, model: &Model) -> String {
        match self {
            PasswordSecret::Superuser => roles::SUPERUSER.to_string(),
            PasswordSecret::App => model.spec.bootstrap.initdb_or_default().owner,
            PasswordSecret::Pooler => roles::POOLER.to_string(),
        }
    }
}

/// A `kubernetes.io/basic-auth` Secret. The App secret also carries what an
/// application needs to connect through the pooler.
pub fn password_secret(model: &Model, kind: PasswordSecret, password: &str) -> Secret {
    let username = kind.username(model);
    let mut data = BTreeMap::from([
        (files::USERNAME.to_string(), username.clone()),
        (files::PASSWORD.to_string(), password.to_string()),
    ]);
    if kind == PasswordSecret::App {
        let db = &model.spec.bootstrap.initdb_or_default().database;
        let host = format!("{}.{}.svc", names::pooler(&model.name), model.namespace);
        let port = layout::POOLER_PORT;
        data.insert(files::DBNAME.into(), db.clone());
        data.insert("host".into(), host.clone());
        data.insert("port".into(), port.to_string());
        data.insert(
            "uri".into(),
            format!("postgresql://{username}:{password}@{host}:{port}/{db}?sslmode=verify-full"),
        );
    }
    Secret {
        metadata: model.child_meta(
            kind.name(&model.name),
            labels::common(&model.name, labels::COMPONENT_CONTROL),
        ),
        type_: Some("kubernetes.io/basic-auth".into()),
        string_data: Some(data),
        ..Secret::default()
    }
}

/// Certificates the operator issues from the cluster CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CertKind {
    /// PostgreSQL server certificate (managed TLS only).
    Server,
    /// `streaming_replica` client certificate (managed TLS only).
    Replication,
    /// PgBouncer server certificate (managed TLS only).
    Pooler,
    /// Agent HTTPS API server certificate (always).
    Agent,
    /// The operator's client certificate (always).
    Operator,
    /// pgBackRest's TLS server and client certificate, shared by the
    /// instances (`spec.backup.target: preferReplica`, either TLS mode).
    Backrest,
}

/// What a certificate must say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertIdentity {
    Server(Vec<String>),
    Client(String),
    /// Server for these names and client as the first of them.
    Peer(Vec<String>),
}

impl CertKind {
    /// The kinds the operator issues for `model`.
    pub fn managed(model: &Model) -> Vec<CertKind> {
        let mut kinds = match model.spec.tls.mode {
            TlsMode::Managed => vec![
                CertKind::Server,
                CertKind::Replication,
                CertKind::Pooler,
                CertKind::Agent,
                CertKind::Operator,
            ],
            TlsMode::Provided => vec![CertKind::Agent, CertKind::Operator],
        };
        if super::backup::backrest_tls(model) {
            kinds.push(CertKind::Backrest);
        }
        kinds
    }

    pub fn secret_name(self, cluster: &str) -> String {
        match self {
            CertKind::Server => names::server_tls_secret(cluster),
            CertKind::Replication => names::replication_tls_secret(cluster),
            CertKind::Pooler => names::pooler_tls_secret(cluster),
            CertKind::Agent => names::agent_tls_secret(cluster),
            CertKind::Operator => names::operator_tls_secret(cluster),
            CertKind::Backrest => names::backrest_tls_secret(cluster),
        }
    }

    pub fn identity(self, model: &Model) -> CertIdentity {
        let (cluster, ns) = (&model.name, &model.namespace);
        match self {
            CertKind::Server => CertIdentity::Server(
                [
                    names::rw_service(cluster),
                    names::ro_service(cluster),
                    names::r_service(cluster),
                ]
                .iter()
                .flat_map(|s| names::service_dns_names(s, ns))
                .collect(),
            ),
            CertKind::Pooler => {
                CertIdentity::Server(names::service_dns_names(&names::pooler(cluster), ns))
            }
            CertKind::Agent => CertIdentity::Server(vec![names::agent_server_name(cluster, ns)]),
            CertKind::Replication => CertIdentity::Client(roles::REPLICATION.to_string()),
            CertKind::Operator => CertIdentity::Client(layout::OPERATOR_CLIENT_CN.to_string()),
            // Standbys reach the primary's server through `-rw`, instances
            // the repository host through its Service.
            CertKind::Backrest => CertIdentity::Peer(
                [names::rw_service(cluster), names::repo_host(cluster)]
                    .iter()
                    .flat_map(|s| names::service_dns_names(s, ns))
                    .collect(),
            ),
        }
    }
}

/// A `kubernetes.io/tls` Secret with the certificate, its key and every
/// CA clients must trust now (`ca.crt`).
pub fn cert_secret(model: &Model, kind: CertKind, issued: &Issued, cas: &CaSet) -> Secret {
    let mut metadata = model.child_meta(
        kind.secret_name(&model.name),
        labels::common(&model.name, labels::COMPONENT_CONTROL),
    );
    let summary = CertSummary::of(&issued.cert_pem, &cas.signing.cert_pem).map(|mut s| {
        s.trust = cas.authorities().map(|a| a.trust_id());
        s
    });
    annotate(&mut metadata, CERTIFICATE_ANNOTATION, summary.as_ref());
    Secret {
        metadata,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (files::TLS_CRT.to_string(), bytes(&issued.cert_pem)),
            (files::TLS_KEY.to_string(), bytes(&issued.key_pem)),
            (files::CA_CRT.to_string(), bytes(&cas.bundle())),
        ])),
        ..Secret::default()
    }
}

/// Annotation of `<name>-roles` with a digest of its content: the planner
/// compares it with the content the Secrets `spec.roles` names give now.
pub const CONTENT_ANNOTATION: &str = "capstan.dev/content-digest";

/// `<name>-roles`: each role's password, copied from the Secret key its
/// entry names (`sources`: those Secrets, by name). Roles to drop, without
/// a password, or whose Secret or key is missing get no key. None when no
/// role asks for a password.
pub fn roles_secret(model: &Model, sources: &BTreeMap<String, Secret>) -> Option<Secret> {
    let mut wanted = model
        .spec
        .roles
        .iter()
        .filter(|r| r.ensure == crate::api::Ensure::Present)
        .filter_map(|r| Some((r, r.password_secret.as_ref()?)))
        .peekable();
    wanted.peek()?;
    let data: BTreeMap<String, ByteString> = wanted
        .filter_map(|(role, from)| {
            let value = sources.get(&from.name)?.data.as_ref()?.get(&from.key)?;
            Some((role.name.clone(), value.clone()))
        })
        .collect();
    let mut metadata = model.child_meta(
        names::roles_secret(&model.name),
        labels::common(&model.name, labels::COMPONENT_CONTROL),
    );
    metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(CONTENT_ANNOTATION.to_string(), content_digest(&data));
    Some(Secret {
        metadata,
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    })
}

/// SHA-256 over each key and value, length-prefixed (hex, first 16 bytes).
fn content_digest(data: &BTreeMap<String, ByteString>) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for (key, value) in data {
        for part in [key.as_bytes(), value.0.as_slice()] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part);
        }
    }
    hash.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn bytes(text: &str) -> ByteString {
    ByteString(text.as_bytes().to_vec())
}

/// Annotation with the [`CertSummary`] of the certificate a Secret holds.
pub const CERTIFICATE_ANNOTATION: &str = "capstan.dev/certificate";
/// Annotation of `<name>-ca-key` with its [`Authorities`].
pub const AUTHORITIES_ANNOTATION: &str = "capstan.dev/authorities";

fn annotate(
    meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
    value: Option<&impl serde::Serialize>,
) {
    if let Some(json) = value.and_then(|v| serde_json::to_string(v).ok()) {
        meta.annotations
            .get_or_insert_with(Default::default)
            .insert(key.to_string(), json);
    }
}

fn annotation<T: serde::de::DeserializeOwned>(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<T> {
    serde_json::from_str(meta.annotations.as_ref()?.get(key)?).ok()
}

/// The [`CertSummary`] recorded on a Secret, if any.
pub fn summary(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<CertSummary> {
    annotation(meta, CERTIFICATE_ANNOTATION)
}

/// The CAs recorded on `<name>-ca-key`. A Secret written before CA
/// rotation existed has one CA, in its certificate summary.
pub fn authorities(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<Authorities> {
    annotation(meta, AUTHORITIES_ANNOTATION).or_else(|| {
        summary(meta).map(|s| Authorities {
            signing: CaRecord {
                fingerprint: s.issuer,
                not_after: s.not_after,
            },
            next: None,
            previous: None,
        })
    })
}

/// `<name>-ca-key` (every CA with its key, operator-only) and, with
/// managed TLS, `<name>-ca`: the CA certificates clients trust.
pub fn ca_secrets(model: &Model, cas: &CaSet) -> Vec<Secret> {
    let labels = labels::common(&model.name, labels::COMPONENT_CONTROL);
    let authorities = cas.authorities();
    let meta = |name: String| {
        let mut m = model.child_meta(name, labels.clone());
        annotate(&mut m, AUTHORITIES_ANNOTATION, authorities.as_ref());
        m
    };
    let mut keys = BTreeMap::from([
        (files::CA_CRT.to_string(), bytes(&cas.signing.cert_pem)),
        (files::CA_KEY.to_string(), bytes(&cas.signing.key_pem)),
    ]);
    if let Some(next) = &cas.next {
        keys.insert(files::NEXT_CA_CRT.into(), bytes(&next.cert_pem));
        keys.insert(files::NEXT_CA_KEY.into(), bytes(&next.key_pem));
    }
    if let Some(previous) = &cas.previous {
        keys.insert(files::PREVIOUS_CA_CRT.into(), bytes(previous));
    }
    let mut out = vec![Secret {
        metadata: meta(names::ca_key_secret(&model.name)),
        type_: Some("Opaque".into()),
        data: Some(keys),
        ..Secret::default()
    }];
    if model.spec.tls.mode == TlsMode::Managed {
        out.push(Secret {
            metadata: meta(names::ca_secret(&model.name)),
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                files::CA_CRT.to_string(),
                bytes(&cas.bundle()),
            )])),
            ..Secret::default()
        });
    }
    out
}

/// The CAs in `<name>-ca-key`'s data.
pub fn read_ca_set(secret: &Secret) -> Option<CaSet> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
    };
    let pair = |crt: &str, key: &str| {
        Some(Issued {
            cert_pem: text(crt)?,
            key_pem: text(key)?,
        })
    };
    Some(CaSet {
        signing: pair(files::CA_CRT, files::CA_KEY)?,
        next: pair(files::NEXT_CA_CRT, files::NEXT_CA_KEY),
        previous: text(files::PREVIOUS_CA_CRT),
    })
}

/// A new random password: 32 alphanumeric characters from the thread-local
/// CSPRNG (about 190 bits), safe in URIs and config files without quoting.
pub fn generate_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// Replace every value in a Secret with a placeholder (for `capstan render`).
pub fn redact(secret: &mut Secret) {
    const REDACTED: &str = "<redacted>";
    if let Some(data) = secret.data.as_mut() {
        for v in data.values_mut() {
            *v = ByteString(REDACTED.as_bytes().to_vec());
        }
    }
    if let Some(data) = secret.string_data.as_mut() {
        for v in data.values_mut() {
            *v = REDACTED.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ProvidedTls;
    use crate::resources::model::fixtures::model;

    #[test]
    fn passwords_are_long_random_and_distinct() {
        let a = generate_password();
        let b = generate_password();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn app_secret_says_how_to_connect_through_the_pooler() {
        let s = password_secret(&model(), PasswordSecret::App, "pw");
        let data = s.string_data.unwrap();
        assert_eq!(data["username"], "app");
        assert_eq!(data["dbname"], "app");
        assert_eq!(data["host"], "db-pooler.ns.svc");
        assert_eq!(
            data["uri"],
            "postgresql://app:pw@db-pooler.ns.svc:5432/app?sslmode=verify-full"
        );
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/basic-auth"));
    }

    #[test]
    fn server_certificate_covers_every_service_name() {
        let CertIdentity::Server(names) = CertKind::Server.identity(&model()) else {
            panic!()
        };
        for n in [
            "db-rw",
            "db-rw.ns.svc",
            "db-ro.ns.svc.cluster.local",
            "db-r.ns",
        ] {
            assert!(names.contains(&n.to_string()), "{n}");
        }
        assert_eq!(
            CertKind::Replication.identity(&model()),
            CertIdentity::Client("streaming_replica".into())
        );
    }

    #[test]
    fn provided_tls_uses_the_users_secrets_and_keeps_control_certs() {
        let mut m = model();
        m.spec.tls.mode = TlsMode::Provided;
        m.spec.tls.provided = Some(ProvidedTls {
            ca_secret_name: "my-ca".into(),
            server_secret_name: "my-server".into(),
            replication_secret_name: "my-repl".into(),
            pooler_secret_name: "my-pooler".into(),
        });
        let src = tls_sources(&m);
        // Clients trust the user's CA; pods mount Capstan's checked copies,
        // each with its ca.crt.
        assert_eq!(
            (src.ca.as_str(), src.server.as_str()),
            ("my-ca", "db-server-tls")
        );
        assert_eq!(src.ca_for("db-server-tls"), "db-server-tls");
        assert_eq!(tls_sources(&model()).ca_for("db-server-tls"), "db-ca");
        assert_eq!(
            CertKind::managed(&m),
            vec![CertKind::Agent, CertKind::Operator]
        );
        // No public CA Secret of ours competes with the user's.
        assert_eq!(
            ca_secrets(
                &m,
                &CaSet::new(Issued {
                    cert_pem: "c".into(),
                    key_pem: "k".into()
                })
            )
            .len(),
            1
        );
    }

    #[test]
    fn tls_volume_projects_cert_key_and_ca() {
        let v = tls_volume("server-tls", "db-server-tls", "db-ca");
        let sources = v.projected.unwrap().sources.unwrap();
        assert_eq!(sources[0].secret.as_ref().unwrap().name, "db-server-tls");
        assert_eq!(sources[1].secret.as_ref().unwrap().name, "db-ca");
        assert_eq!(
            sources[1].secret.as_ref().unwrap().items.as_ref().unwrap()[0].key,
            "ca.crt"
        );
    }

    #[test]
    fn redaction_hides_every_value() {
        let mut s = password_secret(&model(), PasswordSecret::Superuser, "hunter2");
        redact(&mut s);
        assert!(!serde_json::to_string(&s).unwrap().contains("hunter2"));
    }

    #[test]
    fn roles_secret_copies_each_password_named_by_a_role() {
        let mut m = model();
        assert!(
            roles_secret(&m, &BTreeMap::new()).is_none(),
            "no roles, no Secret"
        );
        m.spec.roles = serde_json::from_value(serde_json::json!([
            {"name": "reporting", "passwordSecret": {"name": "pw", "key": "reporting"}},
            {"name": "etl", "passwordSecret": {"name": "pw", "key": "etl"}},
            {"name": "lost", "passwordSecret": {"name": "missing", "key": "password"}},
            {"name": "nologin", "login": false},
            {"name": "gone", "ensure": "absent", "passwordSecret": {"name": "pw", "key": "gone"}},
        ]))
        .unwrap();
        let source = |etl: &str| Secret {
            data: Some(BTreeMap::from([
                ("reporting".to_string(), bytes("r-pw")),
                ("etl".to_string(), bytes(etl)),
                ("gone".to_string(), bytes("g-pw")),
            ])),
            ..Secret::default()
        };
        let sources = BTreeMap::from([("pw".to_string(), source("e-pw"))]);
        let s = roles_secret(&m, &sources).unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("db-roles"));
        let data = s.data.as_ref().unwrap();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["etl", "reporting"],
            "a missing Secret, no password or a role to drop: no key"
        );
        assert_eq!(data["reporting"], bytes("r-pw"));
        let digest =
            |s: &Secret| s.metadata.annotations.as_ref().unwrap()[CONTENT_ANNOTATION].clone();
        let rotated =
            roles_secret(&m, &BTreeMap::from([("pw".to_string(), source("e-pw2"))])).unwrap();
        assert_ne!(
            digest(&s),
            digest(&rotated),
            "a rotated password changes the digest"
        );
        assert_eq!(digest(&s), digest(&roles_secret(&m, &sources).unwrap()));
    }
}
