use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::api::{ProvidedTls, TlsMode};
use crate::contract::agent::MountedTls;
use crate::contract::instance::InstanceReport;
use crate::contract::pooler::PoolerReport;
use crate::operator::cluster::observe::SecretFacts;
use crate::resources::model::fixtures::model;
use crate::resources::secrets::PasswordSecret;
use crate::tls::{CaRecord, CaStep, CertInfo};

const NOW: i64 = 1_800_000_000;
const DAY: i64 = 24 * 3600;
const YEAR: i64 = 365 * DAY;

fn record(fingerprint: &str, not_after: i64) -> CaRecord {
    CaRecord {
        fingerprint: fingerprint.into(),
        not_after,
    }
}

fn one_ca(not_after: i64) -> Authorities {
    Authorities {
        signing: record("old", not_after),
        next: None,
        previous: None,
    }
}

/// A certificate as Capstan issued it from `cas`' signing CA.
fn cert(model: &Model, kind: CertKind, not_after: i64, cas: &Authorities) -> SecretFacts {
    let (dns_names, common_name) = match kind.identity(model) {
        CertIdentity::Server(dns) | CertIdentity::Peer(dns) => (dns.clone(), dns.first().cloned()),
        CertIdentity::Client(cn) => (vec![], Some(cn)),
    };
    SecretFacts {
        cert: Some(CertInfo {
            common_name,
            dns_names,
            not_after,
        }),
        signed_by_cluster_ca: true,
        trust: Some(cas.trust_id()),
        ..SecretFacts::default()
    }
}

fn ca_facts(cas: &Authorities) -> SecretFacts {
    SecretFacts {
        trust: Some(cas.trust_id()),
        ..SecretFacts::default()
    }
}

/// Every Secret in place, issued from `cas`, certificates ending at
/// `not_after`.
fn settled(model: &Model, cas: &Authorities, not_after: i64, now: i64) -> Observed {
    let mut observed = Observed {
        now,
        authorities: Some(cas.clone()),
        ..Observed::default()
    };
    for k in PasswordSecret::ALL {
        observed
            .secrets
            .insert(k.name("db"), SecretFacts::default());
    }
    observed
        .secrets
        .insert(names::ca_key_secret("db"), ca_facts(cas));
    observed
        .secrets
        .insert(names::ca_secret("db"), ca_facts(cas));
    for kind in CertKind::managed(model) {
        observed
            .secrets
            .insert(kind.secret_name("db"), cert(model, kind, not_after, cas));
    }
    observed
}

fn named_pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..Pod::default()
    }
}

fn trusting(mounts: &[&str], cas: &[&str]) -> TlsMounts {
    mounts
        .iter()
        .map(|m| {
            (
                m.to_string(),
                MountedTls {
                    certificate: Some("leaf".into()),
                    trusts: cas.iter().map(|c| c.to_string()).collect(),
                    not_after: None,
                },
            )
        })
        .collect()
}

/// One instance and one pooler pod, both reporting `cas` in every mount.
fn with_pods(mut observed: Observed, cas: &[&str]) -> Observed {
    observed.pods = vec![named_pod("db-1")];
    observed.pooler_pods = vec![named_pod("db-pooler-x")];
    observed.reports.insert(
        "db-1".into(),
        InstanceReport {
            tls: trusting(&["server", "replication", "agent"], cas),
            ..InstanceReport::default()
        },
    );
    observed.pooler_reports.insert(
        "db-pooler-x".into(),
        PoolerReport {
            name: "db-pooler-x".into(),
            running: true,
            tls: trusting(&["pooler", "agent"], cas),
            ..PoolerReport::default()
        },
    );
    observed
}

/// Lifetimes in minutes, as the e2e scenario sets them.
fn short_model() -> Model {
    let mut m = model();
    let c = &mut m.spec.tls.certificates;
    c.duration = "3m".into();
    c.renew_before = "1m".into();
    c.ca_duration = "10m".into();
    c.ca_renew_before = "6m".into();
    m
}

#[test]
fn existing_certificates_stay_and_renew_on_time() {
    let m = model();
    let cas = one_ca(NOW + 5 * YEAR);
    let observed = settled(&m, &cas, NOW + YEAR, NOW);
    let d = decide(&m, &observed);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    // Next look: when the first certificate is 30 days from its end.
    assert_eq!(d.due_at, Some(NOW + YEAR - 30 * DAY));

    let mut no_public_ca = observed.clone();
    no_public_ca.secrets.remove(&names::ca_secret("db"));
    assert_eq!(
        decide(&m, &no_public_ca).actions,
        vec![SecretAction::PublishCa]
    );
    let mut unannotated = observed.clone();
    unannotated.authorities = None;
    assert_eq!(
        decide(&m, &unannotated).actions,
        vec![SecretAction::PublishCa],
        "re-published with its annotation, never re-created"
    );
    let mut nothing = Observed {
        now: NOW,
        ..Observed::default()
    };
    nothing.authorities = None;
    let mut first = vec![SecretAction::CreateCa];
    first.extend(
        CertKind::managed(&m)
            .into_iter()
            .map(|k| SecretAction::IssueCert(k, CertReason::Missing)),
    );
    assert_eq!(decide(&m, &nothing).actions, first, "all in one pass");

    let mut observed = observed;
    observed.secrets.insert(
        CertKind::Server.secret_name("db"),
        cert(&m, CertKind::Server, NOW + 10 * DAY, &cas),
    );
    let mut wrong_names = cert(&m, CertKind::Pooler, NOW + YEAR, &cas);
    wrong_names.cert.as_mut().unwrap().dns_names = vec!["old-name".into()];
    observed
        .secrets
        .insert(CertKind::Pooler.secret_name("db"), wrong_names);
    let mut foreign = cert(&m, CertKind::Agent, NOW + YEAR, &cas);
    foreign.signed_by_cluster_ca = false;
    observed
        .secrets
        .insert(CertKind::Agent.secret_name("db"), foreign);
    observed
        .secrets
        .remove(&CertKind::Operator.secret_name("db"));
    assert_eq!(
        decide(&m, &observed).actions,
        vec![
            SecretAction::IssueCert(CertKind::Server, CertReason::Expiring),
            SecretAction::IssueCert(CertKind::Pooler, CertReason::NamesChanged),
            SecretAction::IssueCert(CertKind::Agent, CertReason::NewCa),
            SecretAction::IssueCert(CertKind::Operator, CertReason::Missing),
        ]
    );
}

#[test]
fn a_ca_is_replaced_trusted_first_used_later_dropped_when_expired() {
    let m = short_model();
    let t0 = NOW;
    let ca_end = t0 + 600;
    let old = one_ca(ca_end);

    // 1. Six minutes before the CA's end, the next one is created.
    let d = decide(&m, &settled(&m, &old, t0 + 180, t0 + 60));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.due_at, Some(t0 + 120), "the first certificate's renewal");
    let d = decide(&m, &settled(&m, &old, ca_end, ca_end - 360));
    assert_eq!(d.actions, vec![SecretAction::Ca(CaStep::PrepareNext)]);

    // 2. Both trusted: every ca.crt is rewritten (same CA signing).
    let both = Authorities {
        next: Some(record("new", ca_end + 600)),
        ..old.clone()
    };
    let mut observed = settled(&m, &old, ca_end, ca_end - 350);
    observed.authorities = Some(both.clone());
    let d = decide(&m, &observed);
    assert!(
        d.actions.contains(&SecretAction::PublishCa),
        "{:?}",
        d.actions
    );
    for kind in CertKind::managed(&m) {
        assert!(
            d.actions
                .contains(&SecretAction::IssueCert(kind, CertReason::TrustChanged)),
            "{kind:?}: {:?}",
            d.actions
        );
    }

    // 3. Certificates ending with the old CA are not re-issued from it;
    //    they move when the next CA takes over, once every pod trusts it.
    let observed = settled(&m, &both, ca_end, ca_end - 60);
    let not_yet = with_pods(observed.clone(), &["old"]);
    let d = decide(&m, &not_yet);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.due_at, Some(ca_end - 60 + 10), "polls the pods' trust");
    let silent = Observed {
        reports: Default::default(),
        ..with_pods(observed.clone(), &["old", "new"])
    };
    assert!(
        decide(&m, &silent).actions.is_empty(),
        "a pod not answering"
    );
    let trusted = with_pods(observed.clone(), &["old", "new"]);
    assert_eq!(
        decide(&m, &trusted).actions,
        vec![SecretAction::Ca(CaStep::PromoteNext)]
    );
    // An expired CA is replaced even if a pod lags.
    let late = Observed {
        now: ca_end,
        ..not_yet
    };
    assert_eq!(
        decide(&m, &late).actions,
        vec![SecretAction::Ca(CaStep::PromoteNext)]
    );

    // 4. After the move every certificate is re-issued by the new CA.
    let moved = Authorities {
        signing: record("new", ca_end + 600),
        next: None,
        previous: Some(record("old", ca_end)),
    };
    let mut observed = settled(&m, &both, ca_end, ca_end - 59);
    observed.authorities = Some(moved.clone());
    for facts in observed.secrets.values_mut() {
        facts.signed_by_cluster_ca = false;
    }
    let d = decide(&m, &observed);
    for kind in CertKind::managed(&m) {
        assert!(
            d.actions
                .contains(&SecretAction::IssueCert(kind, CertReason::NewCa)),
            "{kind:?}: {:?}",
            d.actions
        );
    }

    // 5. The old CA is dropped from every ca.crt when it expires.
    let observed = settled(&m, &moved, ca_end + 120, ca_end - 30);
    let d = decide(&m, &observed);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(d.due_at, Some(ca_end), "the old CA's end");
    let d = decide(&m, &settled(&m, &moved, ca_end + 120, ca_end));
    assert_eq!(d.actions, vec![SecretAction::Ca(CaStep::DropPrevious)]);
}

#[test]
fn with_provided_certificates_only_capstans_own_mounts_must_trust_the_next_ca() {
    let mut m = short_model();
    m.spec.tls.mode = TlsMode::Provided;
    m.spec.tls.provided = Some(ProvidedTls {
        ca_secret_name: "my-ca".into(),
        server_secret_name: "my-server".into(),
        replication_secret_name: "my-replication".into(),
        pooler_secret_name: "my-pooler".into(),
    });
    let ca_end = NOW + 600;
    let both = Authorities {
        signing: record("old", ca_end),
        next: Some(record("new", ca_end + 600)),
        previous: None,
    };
    let mut observed = with_pods(settled(&m, &both, ca_end, ca_end - 60), &["old", "new"]);
    // The user's CA in the data-plane mounts: none of Capstan's business.
    for mount in ["server", "replication"] {
        observed.reports.get_mut("db-1").unwrap().tls.insert(
            mount.into(),
            MountedTls {
                certificate: Some("theirs".into()),
                trusts: vec!["their-ca".into()],
                not_after: None,
            },
        );
    }
    assert_eq!(
        decide(&m, &observed).actions,
        vec![SecretAction::Ca(CaStep::PromoteNext)]
    );
    // pgBackRest's mount is Capstan's: it must trust the next CA too.
    observed.reports.get_mut("db-1").unwrap().tls.insert(
        "pgbackrest".into(),
        MountedTls {
            certificate: Some("leaf".into()),
            trusts: vec!["old".into()],
            not_after: None,
        },
    );
    assert!(decide(&m, &observed).actions.is_empty());
}

#[test]
fn lifetimes_come_from_the_spec() {
    let l = Lifetimes::from_spec(&short_model().spec.tls.certificates);
    assert_eq!(l.leaf, Duration::from_secs(180));
    assert_eq!(l.ca_renew_before, Duration::from_secs(360));
}

mod provided_tls {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    use time::OffsetDateTime;

    use super::*;
    use crate::tls::{Issued, issue_client, issue_server, new_ca};

    fn secret(name: &str, data: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Secret::default()
        }
    }

    fn provided_model() -> Model {
        let mut m = model();
        m.spec.tls.mode = TlsMode::Provided;
        m.spec.tls.provided = Some(ProvidedTls {
            ca_secret_name: "my-ca".into(),
            server_secret_name: "my-server".into(),
            replication_secret_name: "my-replication".into(),
            pooler_secret_name: "my-pooler".into(),
        });
        m
    }

    /// The user's Secrets, as cert-manager would keep them: `server_names`
    /// on the server certificate.
    fn user_secrets(server_names: &[&str]) -> (Issued, BTreeMap<String, Secret>) {
        let at = OffsetDateTime::from_unix_timestamp(NOW).unwrap();
        let day = Duration::from_secs(DAY as u64);
        let ca = new_ca("their CA", at, day * 365).unwrap();
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let server = issue_server(&ca, &names(server_names), at, day * 90).unwrap();
        let pooler = issue_server(
            &ca,
            &names(&["db-pooler", "db-pooler.ns.svc"]),
            at,
            day * 90,
        )
        .unwrap();
        let replication = issue_client(&ca, "streaming_replica", at, day * 90).unwrap();
        let pair = |name: &str, i: &Issued| {
            (
                name.to_string(),
                secret(name, &[("tls.crt", &i.cert_pem), ("tls.key", &i.key_pem)]),
            )
        };
        let secrets = BTreeMap::from([
            (
                "my-ca".to_string(),
                secret("my-ca", &[("ca.crt", &ca.cert_pem)]),
            ),
            pair("my-server", &server),
            pair("my-pooler", &pooler),
            pair("my-replication", &replication),
        ]);
        (ca, secrets)
    }

    const ALL_SERVER_NAMES: [&str; 6] = [
        "db-rw",
        "db-rw.ns.svc",
        "db-ro",
        "db-ro.ns.svc",
        "db-r",
        "db-r.ns.svc",
    ];

    fn copies(d: &Decision) -> Vec<CertKind> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                SecretAction::CopyProvided(kind, _) => Some(*kind),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn checked_certificates_are_copied_once() {
        let m = provided_model();
        let cas = one_ca(NOW + 5 * YEAR);
        let mut observed = settled(&m, &cas, NOW + YEAR, NOW);
        let (_, users) = user_secrets(&ALL_SERVER_NAMES);
        observed.provided = users;
        let d = decide(&m, &observed);
        assert_eq!(d.refused, None);
        assert_eq!(
            copies(&d),
            vec![CertKind::Server, CertKind::Replication, CertKind::Pooler]
        );
        // What a copy holds: the user's pair and their CA.
        let Some(SecretAction::CopyProvided(_, copy)) = d.actions.first() else {
            panic!("{:?}", d.actions)
        };
        assert_eq!(copy.0.metadata.name.as_deref(), Some("db-server-tls"));
        let data = copy.0.data.as_ref().unwrap();
        assert_eq!(
            data["tls.crt"],
            observed.provided["my-server"].data.as_ref().unwrap()["tls.crt"]
        );
        assert_eq!(
            data["ca.crt"],
            observed.provided["my-ca"].data.as_ref().unwrap()["ca.crt"]
        );
        assert!(
            !format!("{:?}", d.actions).contains("PRIVATE KEY"),
            "no key in logs"
        );

        // Copied: the copies' annotations name the same content.
        for action in &d.actions {
            if let SecretAction::CopyProvided(kind, copy) = action {
                let summary = crate::resources::secrets::summary(&copy.0.metadata).unwrap();
                observed.secrets.insert(
                    kind.secret_name("db"),
                    SecretFacts {
                        trust: summary.trust.clone(),
                        ..SecretFacts::default()
                    },
                );
            }
        }
        assert!(copies(&decide(&m, &observed)).is_empty());
    }

    #[test]
    fn a_certificate_that_fails_its_checks_is_refused_and_the_copy_kept() {
        let m = provided_model();
        let cas = one_ca(NOW + 5 * YEAR);
        let mut observed = settled(&m, &cas, NOW + YEAR, NOW);
        // No -ro name: clients of db-ro could not verify it.
        let (_, users) = user_secrets(&["db-rw", "db-rw.ns.svc", "db-r", "db-r.ns.svc"]);
        observed.provided = users;
        let d = decide(&m, &observed);
        let refused = d.refused.clone().expect("refused");
        assert_eq!(refused.reason, "ProvidedCertificateRefused");
        assert!(
            refused
                .message
                .contains("spec.tls.provided.serverSecretName: Secret \"my-server\"")
                && refused.message.contains("does not cover \"db-ro\""),
            "{}",
            refused.message
        );
        assert_eq!(
            copies(&d),
            vec![CertKind::Replication, CertKind::Pooler],
            "the server copy is left as it is"
        );

        // Expired (checked a year on): every one refused, nothing copied.
        let (_, users) = user_secrets(&ALL_SERVER_NAMES);
        observed.provided = users;
        observed.now = NOW + YEAR;
        let d = decide(&m, &observed);
        assert!(copies(&d).is_empty(), "{:?}", d.actions);
        assert!(d.refused.unwrap().message.contains("expired"));
    }
}
