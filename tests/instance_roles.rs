//! `spec.roles` and `spec.databases` on a real primary (PostgreSQL 15):
//! created with their passwords, memberships and extensions; a rotated
//! password applied without re-hashing an unchanged one; a role without its
//! password failing alone; `ensure: absent` dropping a role, and a database
//! only with its second switch.

mod support;

use std::sync::Arc;
use std::time::Duration;

use capstan::contract::instance::InstanceReport;
use capstan::contract::roles::{DatabaseSettings, EntryState, RoleSettings};
use support::*;

static PORTS: Ports = Ports::new(26000, 26100);

fn role(name: &str, password: bool) -> RoleSettings {
    RoleSettings {
        name: name.into(),
        present: true,
        login: true,
        create_db: false,
        connection_limit: -1,
        in_roles: vec![],
        password_from: password.then(|| format!("{name}-pw/password")),
    }
}

fn state<'a>(
    entries: &'a [capstan::contract::roles::EntryReport],
    name: &str,
) -> Option<(EntryState, &'a str)> {
    entries
        .iter()
        .find(|e| e.name == name)
        .map(|e| (e.state, e.message.as_str()))
}

fn roles_of(r: &InstanceReport) -> Vec<capstan::contract::roles::EntryReport> {
    r.managed
        .as_ref()
        .map(|m| m.roles.clone())
        .unwrap_or_default()
}

fn databases_of(r: &InstanceReport) -> Vec<capstan::contract::roles::EntryReport> {
    r.managed
        .as_ref()
        .map(|m| m.databases.clone())
        .unwrap_or_default()
}

async fn verifier(a: &Instance, name: &str) -> Option<String> {
    let c = a.sql_retry("postgres", Duration::from_secs(10)).await;
    c.query_opt(
        "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
        &[&name],
    )
    .await
    .unwrap()
    .and_then(|r| r.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_databases_are_kept_on_the_primary() {
    let Some(bin) = pg15_bin() else {
        eprintln!("skipping: PostgreSQL 15 is not installed in /usr/lib/postgresql/15/bin");
        return;
    };
    let pki = Arc::new(Pki::new());
    let mut s = settings(15, PORTS.take(), &["db-1"]);
    s.hba = vec!["hostssl all all 127.0.0.1/32 scram-sha-256".into()];
    let mut a = Instance::new("db-1", &PORTS, &bin, pki.clone(), &s);
    a.set_authority("db-1");
    a.start();
    a.wait_ready(Duration::from_secs(90)).await;
    // Made by hand before the spec names them.
    let admin = a.sql_retry("postgres", Duration::from_secs(30)).await;
    for statement in ["CREATE ROLE old_etl LOGIN", "CREATE DATABASE legacy"] {
        admin.batch_execute(statement).await.unwrap();
    }

    a.restore_secret("roles/reporting", "pw-1\n");
    let mut reporting = role("reporting", true);
    reporting.in_roles = vec!["readers".into()];
    reporting.connection_limit = 5;
    let mut old_etl = role("old_etl", false);
    old_etl.present = false;
    // `readers` comes after the role that is a member of it.
    let mut readers = role("readers", false);
    readers.login = false;
    s.roles = vec![reporting.clone(), role("lost", true), old_etl, readers];
    let mut legacy = DatabaseSettings {
        name: "legacy".into(),
        owner: "postgres".into(),
        present: false,
        drop: false,
        extensions: vec![],
    };
    s.databases = vec![
        DatabaseSettings {
            name: "analytics".into(),
            owner: "reporting".into(),
            present: true,
            drop: false,
            extensions: vec!["hstore".into()],
        },
        legacy.clone(),
    ];
    a.write_settings(&s);

    let report = a
        .wait_status(
            "roles and databases applied",
            Duration::from_secs(40),
            |r| state(&databases_of(r), "analytics").is_some(),
        )
        .await;
    let roles = roles_of(&report);
    let databases = databases_of(&report);
    assert_eq!(
        state(&roles, "reporting"),
        Some((EntryState::Applied, "created, memberships")),
        "{roles:?}"
    );
    let (lost, why) = state(&roles, "lost").unwrap();
    assert_eq!(lost, EntryState::Failed);
    assert!(
        why.contains("lost-pw/password"),
        "names the Secret key: {why}"
    );
    assert_eq!(
        state(&roles, "old_etl"),
        Some((EntryState::Applied, "dropped"))
    );
    assert_eq!(
        state(&databases, "analytics"),
        Some((EntryState::Applied, "created, extensions"))
    );
    let (kept, why) = state(&databases, "legacy").unwrap();
    assert_eq!(kept, EntryState::Kept);
    assert!(why.contains("confirmDrop: legacy"), "{why}");

    // In PostgreSQL: the role logs in with its password, has its limit and
    // membership; the failed one does not exist; the database is there with
    // its owner and extension.
    let login = sql_connect(&pki, a.pg_port, "reporting", "pw-1", "analytics")
        .await
        .expect("reporting logs in with the Secret's password");
    let row = login
        .query_one(
            "SELECT current_user::text, pg_get_userbyid(d.datdba)::text,
                    (SELECT count(*) FROM pg_extension WHERE extname = 'hstore'),
                    pg_has_role('reporting', 'readers', 'MEMBER'),
                    (SELECT rolconnlimit FROM pg_roles WHERE rolname = 'reporting')
             FROM pg_database d WHERE d.datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "reporting");
    assert_eq!(row.get::<_, String>(1), "reporting");
    assert_eq!(row.get::<_, i64>(2), 1);
    assert!(row.get::<_, bool>(3));
    assert_eq!(row.get::<_, i32>(4), 5);
    let exists = |name: &'static str| {
        let admin = &admin;
        async move {
            admin
                .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&name])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    assert_eq!(exists("lost").await, 0);
    assert_eq!(exists("old_etl").await, 0);

    // Later passes keep the verifier of an unchanged password (a new salt
    // would break the SCRAM keys PgBouncer holds).
    let first = verifier(&a, "reporting").await.unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(verifier(&a, "reporting").await.unwrap(), first);
    let report = a.status().await.unwrap();
    assert_eq!(
        state(&roles_of(&report), "reporting"),
        Some((EntryState::Applied, "unchanged"))
    );

    // A rotated password is applied; the old one stops working.
    a.restore_secret("roles/reporting", "pw-2");
    eventually(
        "the rotated password works",
        Duration::from_secs(30),
        || {
            let pki = pki.clone();
            let port = a.pg_port;
            async move {
                sql_connect(&pki, port, "reporting", "pw-2", "analytics")
                    .await
                    .ok()
            }
        },
    )
    .await;
    assert!(
        sql_connect(&pki, a.pg_port, "reporting", "pw-1", "analytics")
            .await
            .is_err()
    );
    assert_ne!(verifier(&a, "reporting").await.unwrap(), first);

    // Changed by hand: put back. The second switch drops the database.
    admin
        .batch_execute("ALTER ROLE reporting CONNECTION LIMIT 50; REVOKE readers FROM reporting")
        .await
        .unwrap();
    legacy.drop = true;
    s.databases[1] = legacy;
    a.write_settings(&s);
    let report = a
        .wait_status("legacy dropped", Duration::from_secs(40), |r| {
            state(&databases_of(r), "legacy")
                .is_some_and(|(s, m)| s == EntryState::Applied && m == "dropped")
        })
        .await;
    assert_eq!(
        admin
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = 'legacy'",
                &[]
            )
            .await
            .unwrap()
            .get::<_, i64>(0),
        0
    );
    assert_eq!(
        state(&roles_of(&report), "reporting").map(|(s, _)| s),
        Some(EntryState::Applied)
    );
    let row = admin
        .query_one(
            "SELECT rolconnlimit, pg_has_role('reporting', 'readers', 'MEMBER') FROM pg_roles WHERE rolname = 'reporting'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 5);
    assert!(row.get::<_, bool>(1));
    // A role that still owns a database cannot go: that entry says so,
    // PostgreSQL's words, and nothing else changes.
    let mut gone = reporting;
    gone.present = false;
    s.roles[0] = gone;
    a.write_settings(&s);
    let report = a
        .wait_status("reporting refused", Duration::from_secs(40), |r| {
            state(&roles_of(r), "reporting").is_some_and(|(s, _)| s == EntryState::Failed)
        })
        .await;
    let roles = roles_of(&report);
    let (_, why) = state(&roles, "reporting").unwrap();
    assert!(why.contains("cannot be dropped"), "{why}");
    assert_eq!(exists("reporting").await, 1);
    a.terminate(Duration::from_secs(30));
}
