//! Certificates and the CA: which are issued, renewed or replaced now, and
//! when to look again. Pure, so every rotation rule is unit-tested.

use super::observe::Observed;
use super::plan::{CertReason, SecretAction, SecretCopy};
use super::validate::Blocked;
use crate::api::TlsMode;
use crate::contract::agent::TlsMounts;
use crate::contract::layout::{files, mounts};
use crate::postgres::roles;
use crate::resources::model::Model;
use crate::resources::names;
use crate::resources::secrets::{self, CertIdentity, CertKind};
use crate::tls::provided::{self, Expect};
use crate::tls::{Authorities, Lifetimes};

/// While pods are still to pick up a new CA, look this often (seconds).
const TRUST_POLL: i64 = 10;

/// The certificate work of one reconcile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub actions: Vec<SecretAction>,
    /// When something falls due next (Unix seconds).
    pub due_at: Option<i64>,
    /// A provided certificate that failed its checks (the cluster keeps
    /// the copy it has).
    pub refused: Option<Blocked>,
}

pub fn decide(model: &Model, observed: &Observed) -> Decision {
    let mut decision = own(model, observed);
    let (copies, refused) = provided(model, observed);
    decision.actions.extend(copies);
    decision.refused = refused;
    if !decision.actions.is_empty() {
        decision.due_at = Some(observed.now);
    }
    decision
}

/// Provided certificates that pass their checks are copied to the Secrets
/// pods mount when they differ from the copy there; the first that does
/// not pass is reported.
fn provided(model: &Model, observed: &Observed) -> (Vec<SecretAction>, Option<Blocked>) {
    let Some(p) = &model.spec.tls.provided else {
        return (vec![], None);
    };
    let text = |secret: &str, key: &str| -> Option<String> {
        let data = observed.provided.get(secret)?.data.as_ref()?;
        String::from_utf8(data.get(key)?.0.clone()).ok()
    };
    let Some(ca) = text(&p.ca_secret_name, files::CA_CRT) else {
        // Validation reports a missing Secret or key.
        return (vec![], None);
    };
    let mut copies = vec![];
    let mut problems = vec![];
    for (kind, field, secret) in secrets::provided_sources(model) {
        let (Some(cert), Some(key)) =
            (text(&secret, files::TLS_CRT), text(&secret, files::TLS_KEY))
        else {
            continue;
        };
        let expect = match kind {
            CertKind::Replication => Expect::Client(roles::REPLICATION.to_string()),
            CertKind::Pooler => Expect::Server(client_names(model, &[names::pooler(&model.name)])),
            _ => Expect::Server(client_names(
                model,
                &[
                    names::rw_service(&model.name),
                    names::ro_service(&model.name),
                    names::r_service(&model.name),
                ],
            )),
        };
        if let Err(refused) = provided::check(&cert, &key, &ca, &expect, observed.now) {
            problems.push(format!(
                "{field}: Secret {secret:?} (with {:?} as its CA) is refused: {refused}",
                p.ca_secret_name
            ));
            continue;
        }
        let digest = secrets::provided_digest(&cert, &key, &ca);
        let copied = observed
            .secrets
            .get(&kind.secret_name(&model.name))
            .and_then(|f| f.trust.as_deref());
        if copied != Some(digest.as_str()) {
            copies.push(SecretAction::CopyProvided(
                kind,
                SecretCopy(Box::new(secrets::provided_copy(
                    model, kind, &cert, &key, &ca,
                ))),
            ));
        }
    }
    let refused = (!problems.is_empty()).then(|| Blocked {
        reason: "ProvidedCertificateRefused",
        message: format!(
            "{}; the cluster keeps serving the certificates it has: fix the Secret (cert-manager: the Certificate's dnsNames, commonName or issuer)",
            problems.join("; ")
        ),
    });
    (copies, refused)
}

/// The names clients and Capstan connect to a Service by.
fn client_names(model: &Model, services: &[String]) -> Vec<String> {
    services
        .iter()
        .flat_map(|s| [s.clone(), format!("{s}.{}.svc", model.namespace)])
        .collect()
}

fn own(model: &Model, observed: &Observed) -> Decision {
    let cluster = &model.name;
    let now = observed.now;
    let lifetimes = Lifetimes::from_spec(&model.spec.tls.certificates);
    let ca_key = observed.secrets.get(&names::ca_key_secret(cluster));
    let Some(cas) = &observed.authorities else {
        // No CA yet, or a CA Secret without its annotation (written by
        // hand): re-published with it, keeping its key.
        // With a new CA, every certificate is issued from it in this pass.
        let new_ca = ca_key.is_none();
        let mut actions = vec![if new_ca {
            SecretAction::CreateCa
        } else {
            SecretAction::PublishCa
        }];
        for kind in CertKind::managed(model) {
            match observed.secrets.get(&kind.secret_name(cluster)) {
                None => actions.push(SecretAction::IssueCert(kind, CertReason::Missing)),
                Some(_) if new_ca => actions.push(SecretAction::IssueCert(kind, CertReason::NewCa)),
                Some(_) => {}
            }
        }
        return Decision {
            actions,
            due_at: Some(now),
            refused: None,
        };
    };
    let trust = cas.trust_id();
    let next_trusted = next_trusted(model, observed, cas);
    let mut due = vec![cas.next_step_at(&lifetimes)];
    if cas.next.is_some() && !next_trusted {
        due.push(now + TRUST_POLL);
    }
    if let Some(step) = cas.step(&lifetimes, now, next_trusted) {
        // Certificates follow on the next pass, from the CAs as they are then.
        return Decision {
            actions: vec![SecretAction::Ca(step)],
            due_at: Some(now),
            refused: None,
        };
    }
    let mut actions = vec![];
    let public_stale = model.spec.tls.mode == TlsMode::Managed
        && observed
            .secrets
            .get(&names::ca_secret(cluster))
            .is_none_or(|f| f.trust.as_deref() != Some(trust.as_str()));
    if public_stale || ca_key.is_some_and(|f| f.trust.as_deref() != Some(trust.as_str())) {
        actions.push(SecretAction::PublishCa);
    }
    for kind in CertKind::managed(model) {
        let Some(facts) = observed.secrets.get(&kind.secret_name(cluster)) else {
            actions.push(SecretAction::IssueCert(kind, CertReason::Missing));
            continue;
        };
        let Some(cert) = &facts.cert else {
            actions.push(SecretAction::IssueCert(kind, CertReason::Unreadable));
            continue;
        };
        let names_match = match kind.identity(model) {
            CertIdentity::Server(dns) | CertIdentity::Peer(dns) => cert.dns_names == dns,
            CertIdentity::Client(cn) => cert.common_name.as_deref() == Some(cn.as_str()),
        };
        // A certificate already ending with its CA gains nothing from
        // re-issuing: it moves when the next CA takes over.
        let renewable = cert.not_after < cas.signing.not_after;
        let reason = if !facts.signed_by_cluster_ca {
            Some(CertReason::NewCa)
        } else if !names_match {
            Some(CertReason::NamesChanged)
        } else if facts.trust.as_deref() != Some(trust.as_str()) {
            Some(CertReason::TrustChanged)
        } else if renewable && cert.expires_within(now, lifetimes.renew_before) {
            Some(CertReason::Expiring)
        } else {
            None
        };
        match reason {
            Some(reason) => actions.push(SecretAction::IssueCert(kind, reason)),
            None if renewable => {
                due.push(cert.not_after - lifetimes.renew_before.as_secs() as i64);
            }
            None => {}
        }
    }
    // A time already past waits on something else (pods to trust the next
    // CA): that is polled instead.
    let due_at = if actions.is_empty() {
        due.into_iter().filter(|t| *t > now).min()
    } else {
        Some(now)
    };
    Decision {
        actions,
        due_at,
        refused: None,
    }
}

/// Every running instance and pooler pod reports the next CA in each
/// `ca.crt` the cluster CA governs. Pods not answering count as not yet.
fn next_trusted(model: &Model, observed: &Observed, cas: &Authorities) -> bool {
    let Some(next) = &cas.next else {
        return false;
    };
    let managed = model.spec.tls.mode == TlsMode::Managed;
    let trusts = |tls: &TlsMounts, required: &[&str]| {
        let governed = |mount: &str| required.contains(&mount) || mount == mounts::BACKREST_TLS;
        required.iter().all(|m| tls.contains_key(*m))
            && tls
                .iter()
                .filter(|(m, _)| governed(m))
                .all(|(_, t)| t.trusts.contains(&next.fingerprint))
    };
    let mut instance_mounts = vec![mounts::AGENT_TLS];
    let mut pooler_mounts = vec![mounts::AGENT_TLS];
    if managed {
        instance_mounts.extend([mounts::SERVER_TLS, mounts::REPLICATION_TLS]);
        pooler_mounts.push(mounts::POOLER_TLS);
    }
    let live = |pods: &[k8s_openapi::api::core::v1::Pod]| -> Vec<String> {
        pods.iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.name.clone())
            .collect()
    };
    live(&observed.pods).iter().all(|pod| {
        observed
            .reports
            .get(pod)
            .is_some_and(|r| trusts(&r.tls, &instance_mounts))
    }) && live(&observed.pooler_pods).iter().all(|pod| {
        observed
            .pooler_reports
            .get(pod)
            .is_some_and(|r| trusts(&r.tls, &pooler_mounts))
    })
}

#[cfg(test)]
mod tests;
