//! Certificates from the user's own PKI (`tls.mode: Provided`, as
//! cert-manager keeps them) on a running cluster.
//!
//! 1. A replaced server Secret (a new certificate from the same CA) is
//!    served by every instance after a reload: `pg_postmaster_start_time()`
//!    unchanged, no pod re-created.
//! 2. A replacement that does not cover the `-ro` Service, then one whose
//!    key is not the certificate's, are refused before any pod sees them:
//!    `Stalled` (`ProvidedCertificateRefused`) naming the field, the Secret
//!    and the problem, while the instances keep serving the last good
//!    certificate and the pooler keeps taking writes.
//! 3. A good certificate again clears `Stalled` and is served.
//!
//! Runs on the harness and on a real cluster.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use capstan::api::{PostgresCluster, ProvidedTls, TlsMode};
use capstan_e2e::E2eError;
use capstan_e2e::ha::{self, As, HaCluster, WRITES_TABLE, ha_example};
use capstan_e2e::harness::{ensure_namespace, wait_for};
use capstan_e2e::pki::{self, UserPki};
use capstan_e2e::sql;
use capstan_e2e::target::{Target, fail};

const WITHIN: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(250);
/// How long a refused certificate is watched not being served.
const KEPT_FOR: Duration = Duration::from_secs(10);

fn stalled(c: &PostgresCluster) -> Option<(String, String)> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled" && c.status == "True")
        .map(|c| (c.reason.clone(), c.message.clone()))
}

/// The certificate each instance serves (verified by the user's CA).
async fn served(
    target: &Target,
    ha: &HaCluster,
    instances: &[String],
) -> Result<BTreeMap<String, String>, E2eError> {
    let mut out = BTreeMap::new();
    for name in instances {
        let ep = ha.pod(target, name).await?;
        out.insert(
            name.clone(),
            sql::served_certificate(&ep.host, ep.addr, &ha.ca).await?,
        );
    }
    Ok(out)
}

fn fingerprint(pem: &str) -> Result<String, E2eError> {
    capstan::tls::fingerprint(pem).ok_or_else(|| E2eError::Check("unreadable certificate".into()))
}

async fn scenario(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let target = &*target;
    let client = target.client();
    let mut spec = ha_example("ha-cluster.yaml", ns)?;
    spec.spec.instances = 2;
    let name = spec.metadata.name.clone().unwrap_or_default();
    let provided = ProvidedTls {
        ca_secret_name: format!("{name}-their-ca"),
        server_secret_name: format!("{name}-their-server"),
        replication_secret_name: format!("{name}-their-replication"),
        pooler_secret_name: format!("{name}-their-pooler"),
    };
    spec.spec.tls.mode = TlsMode::Provided;
    spec.spec.tls.provided = Some(provided.clone());
    let pki = UserPki::new(&name, ns, Duration::from_secs(90 * 24 * 3600))?;
    ensure_namespace(&client, ns).await?;
    pki::apply(&client, &pki.secrets(&provided)?).await?;
    let ha = HaCluster::create(target, &spec).await?;
    let c = ha.get(target).await?;
    let instances = ha::instance_names(&c);
    let started = ha.start_times(target, &instances).await?;
    let pods = ha.pod_uids(target).await?;
    let first = served(target, &ha, &instances).await?;
    eprintln!("[{ns}] serving the user's certificate: {first:?}");

    // 1. A new certificate in the user's Secret: reloaded everywhere.
    let renewed = pki.server(&pki.server_names())?;
    let renewed_print = fingerprint(&renewed.cert_pem)?;
    let at = Instant::now();
    pki::apply(&client, &[pki.leaf(&provided.server_secret_name, &renewed)]).await?;
    wait_for(
        "every instance serving the replaced certificate",
        WITHIN,
        POLL,
        || async {
            let now = served(target, &ha, &instances).await.ok()?;
            now.values().all(|p| *p == renewed_print).then_some(())
        },
    )
    .await?;
    eprintln!(
        "[{ns}] replaced Secret served by every instance {:.1}s after it was written",
        at.elapsed().as_secs_f64()
    );

    // 2. Bad replacements: refused, the last good one kept.
    let no_ro: Vec<String> = pki
        .server_names()
        .into_iter()
        .filter(|n| !n.contains("-ro"))
        .collect();
    let other = pki.server(&pki.server_names())?;
    let mismatched = capstan::tls::Issued {
        cert_pem: pki.server(&pki.server_names())?.cert_pem,
        key_pem: other.key_pem,
    };
    let mut write = 0;
    for (what, bad, words) in [
        (
            "without the -ro names",
            pki.server(&no_ro)?,
            "does not cover",
        ),
        (
            "with another certificate's key",
            mismatched,
            "is not the key of the certificate",
        ),
    ] {
        pki::apply(&client, &[pki.leaf(&provided.server_secret_name, &bad)]).await?;
        let (reason, message) = wait_for(
            &format!("Stalled for a server certificate {what}"),
            WITHIN,
            POLL,
            || async {
                let c = ha.get(target).await.ok()?;
                stalled(&c).filter(|(_, m)| m.contains(words))
            },
        )
        .await?;
        assert_eq!(reason, "ProvidedCertificateRefused", "{message}");
        assert!(
            message.contains(&format!(
                "spec.tls.provided.serverSecretName: Secret \"{}\"",
                provided.server_secret_name
            )),
            "{message}"
        );
        eprintln!("[{ns}] a certificate {what}: Stalled {reason}: {message}");
        let until = Instant::now() + KEPT_FOR;
        while Instant::now() < until {
            let now = served(target, &ha, &instances).await?;
            assert!(
                now.values().all(|p| *p == renewed_print),
                "a refused certificate reached an instance: {now:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Still serving: a write through the pooler goes through.
        let app = ha.connect(&ha.pooler(target).await?, As::App).await?;
        write += 1;
        sql::value(
            &app,
            &format!("INSERT INTO {WRITES_TABLE} (n) VALUES ({write}) RETURNING n"),
        )
        .await?;
    }

    // 3. A good one again: served, Stalled cleared.
    let fixed = pki.server(&pki.server_names())?;
    let fixed_print = fingerprint(&fixed.cert_pem)?;
    pki::apply(&client, &[pki.leaf(&provided.server_secret_name, &fixed)]).await?;
    wait_for(
        "Stalled cleared and the good certificate served",
        WITHIN,
        POLL,
        || async {
            let c = ha.get(target).await.ok()?;
            if stalled(&c).is_some() {
                return None;
            }
            let now = served(target, &ha, &instances).await.ok()?;
            now.values().all(|p| *p == fixed_print).then_some(())
        },
    )
    .await?;
    eprintln!("[{ns}] a good certificate again: served, Stalled cleared");

    assert_eq!(
        ha.start_times(target, &instances).await?,
        started,
        "reloaded, never restarted"
    );
    assert_eq!(ha.pod_uids(target).await?, pods, "no pod re-created");
    ha.delete(target).await
}

#[test]
fn provided_certificates_are_checked_before_use_and_reloaded_without_a_restart() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-tls-provided-{}", std::process::id());
        if let Err(e) = scenario(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}
