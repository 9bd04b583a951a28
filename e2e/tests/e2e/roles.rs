//! Declarative roles and databases, from the outside.
//!
//! A cluster is created with `spec.roles` (`reporting`, whose password
//! Secret exists, and `etl`, whose Secret does not yet) and
//! `spec.databases` (`analytics` owned by `reporting` with `hstore`, and
//! `scratch`). The scenario sees:
//!
//! 1. `reporting` and both databases `Applied` in `status`, `etl` `Failed`
//!    naming its Secret key, with a `RoleNotApplied` Warning; `reporting`
//!    logs in through the pooler (PgBouncer's `auth_query`) to `analytics`,
//!    where `hstore` is installed;
//! 2. the `etl` Secret created: `etl` applied and logging in;
//! 3. `reporting`'s Secret rotated: the new password works through the
//!    pooler, the old one no longer does;
//! 4. `scratch` set to `ensure: absent`: `Kept` and still there; with
//!    `confirmDrop: scratch` it is dropped; `etl` set to `absent` is
//!    dropped; `analytics` removed from the list is left in place;
//! 5. admission refuses a reserved role name with a message naming it.
//!
//! Runs on the harness and on a real cluster.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use capstan::api::ManagedObjectStatus;
use capstan_e2e::E2eError;
use capstan_e2e::ha::{self, Endpoint, HaCluster, ha_example};
use capstan_e2e::harness::{ensure_namespace, wait_for};
use capstan_e2e::sql::{self, Login};
use capstan_e2e::target::{Target, fail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams};
use serde_json::json;

const STEP_WITHIN: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(500);

async fn put_password(
    target: &Target,
    ns: &str,
    name: &str,
    password: &str,
) -> Result<(), E2eError> {
    let api: Api<Secret> = Api::namespaced(target.client(), ns);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            "password".to_string(),
            ByteString(password.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    };
    api.patch(
        name,
        &PatchParams::apply("e2e-roles").force(),
        &Patch::Apply(&secret),
    )
    .await
    .map_err(|e| E2eError::Kube(format!("apply Secret {ns}/{name}"), e))?;
    Ok(())
}

fn entry<'a>(list: &'a [ManagedObjectStatus], name: &str) -> Option<&'a ManagedObjectStatus> {
    list.iter().find(|e| e.name == name)
}

async fn statuses(
    target: &Target,
    ha: &HaCluster,
) -> Option<(Vec<ManagedObjectStatus>, Vec<ManagedObjectStatus>)> {
    let s = ha.get(target).await.ok()?.status?;
    Some((s.roles, s.databases))
}

async fn login(
    ha: &HaCluster,
    pooler: &Endpoint,
    user: &str,
    password: &str,
    dbname: &str,
) -> Result<tokio_postgres::Client, E2eError> {
    sql::connect(&Login {
        host: &pooler.host,
        addr: pooler.addr,
        dbname,
        user,
        password,
        ca_pem: &ha.ca,
    })
    .await
}

async fn set_lists(
    target: &Target,
    ha: &HaCluster,
    roles: serde_json::Value,
    databases: serde_json::Value,
) -> Result<(), E2eError> {
    let patch = json!({"spec": {"roles": roles, "databases": databases}});
    capstan_e2e::cluster::merge_patch(&target.client(), &ha.ns, &ha.name, &patch).await
}

async fn database_exists(ha: &HaCluster, target: &Target, name: &str) -> Result<bool, E2eError> {
    let admin = ha.connect(&ha.rw(target).await?, ha::As::Superuser).await?;
    let n = sql::value(
        &admin,
        &format!("SELECT count(*)::text FROM pg_database WHERE datname = '{name}'"),
    )
    .await?;
    Ok(n == "1")
}

async fn scenario(target: &mut Target, ns: &str) -> Result<(), E2eError> {
    let mut spec = ha_example("ha-cluster.yaml", ns)?;
    spec.spec.instances = 2;
    let reporting = json!({"name": "reporting", "inRoles": ["pg_read_all_data"], "connectionLimit": 20,
        "passwordSecret": {"name": "reporting-login", "key": "password"}});
    let etl = json!({"name": "etl", "passwordSecret": {"name": "etl-login", "key": "password"}});
    let analytics = json!({"name": "analytics", "owner": "reporting", "extensions": ["hstore"]});
    spec.spec.roles = serde_json::from_value(json!([reporting, etl]))
        .map_err(|e| E2eError::Setup(format!("roles: {e}")))?;
    spec.spec.databases =
        serde_json::from_value(json!([analytics, {"name": "scratch", "owner": "reporting"}]))
            .map_err(|e| E2eError::Setup(format!("databases: {e}")))?;
    ensure_namespace(&target.client(), ns).await?;
    put_password(target, ns, "reporting-login", "first-Pa55").await?;
    let ha = HaCluster::create(target, &spec).await?;
    let target = &*target;
    let created = Instant::now();
    let pooler = ha.pooler(target).await?;

    // 1. Applied, next to one that cannot be.
    let (roles, databases) = wait_for(
        "reporting and both databases Applied, etl Failed",
        STEP_WITHIN,
        POLL,
        || async {
            let (roles, databases) = statuses(target, &ha).await?;
            let applied = |l: &[ManagedObjectStatus], n: &str| {
                entry(l, n).is_some_and(|e| e.state == "Applied")
            };
            (applied(&roles, "reporting")
                && applied(&databases, "analytics")
                && applied(&databases, "scratch")
                && entry(&roles, "etl").is_some_and(|e| e.state == "Failed"))
            .then_some((roles, databases))
        },
    )
    .await?;
    eprintln!(
        "[{ns}] applied {:.1}s after Ready: roles {roles:?}, databases {databases:?}",
        created.elapsed().as_secs_f64()
    );
    let etl_status = entry(&roles, "etl")
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(
        etl_status.contains("etl-login/password"),
        "names the Secret key: {etl_status}"
    );
    let warned = wait_for(
        "a RoleNotApplied Warning about etl",
        STEP_WITHIN,
        POLL,
        || async {
            let events = capstan_e2e::schedule::events(target, ns, "RoleNotApplied", &ha.name)
                .await
                .ok()?;
            events
                .into_iter()
                .find(|(kind, note)| kind == "Warning" && note.contains("role etl"))
        },
    )
    .await?;
    eprintln!("[{ns}] event: {warned:?}");
    let reporting_db = login(&ha, &pooler, "reporting", "first-Pa55", "analytics").await?;
    let row = sql::value(
        &reporting_db,
        "SELECT current_user || ' ' || (SELECT count(*) FROM pg_extension WHERE extname = 'hstore')",
    )
    .await?;
    assert_eq!(
        row, "reporting 1",
        "reporting in analytics, hstore installed"
    );

    // 2. The missing Secret arrives.
    put_password(target, ns, "etl-login", "etl-Pa55").await?;
    let started = Instant::now();
    wait_for("etl Applied and logging in", STEP_WITHIN, POLL, || async {
        let (roles, _) = statuses(target, &ha).await?;
        (entry(&roles, "etl")?.state == "Applied").then_some(())?;
        login(&ha, &pooler, "etl", "etl-Pa55", "postgres")
            .await
            .ok()
    })
    .await?;
    eprintln!(
        "[{ns}] etl applied {:.1}s after its Secret was created",
        started.elapsed().as_secs_f64()
    );

    // 3. Rotation.
    put_password(target, ns, "reporting-login", "second-Pa55").await?;
    let started = Instant::now();
    wait_for(
        "the rotated password works through the pooler",
        STEP_WITHIN,
        POLL,
        || async {
            login(&ha, &pooler, "reporting", "second-Pa55", "analytics")
                .await
                .ok()
        },
    )
    .await?;
    eprintln!(
        "[{ns}] rotated password accepted through the pooler {:.1}s after the Secret changed",
        started.elapsed().as_secs_f64()
    );
    assert!(
        login(&ha, &pooler, "reporting", "first-Pa55", "analytics")
            .await
            .is_err(),
        "the old password no longer logs in"
    );

    // 4. Absent: a database only with its second switch; omission drops nothing.
    set_lists(
        target,
        &ha,
        json!([reporting, etl]),
        json!([analytics, {"name": "scratch", "owner": "reporting", "ensure": "absent"}]),
    )
    .await?;
    let kept = wait_for("scratch Kept", STEP_WITHIN, POLL, || async {
        let (_, databases) = statuses(target, &ha).await?;
        entry(&databases, "scratch")
            .filter(|e| e.state == "Kept")
            .cloned()
    })
    .await?;
    assert!(
        kept.message.contains("confirmDrop: scratch"),
        "{}",
        kept.message
    );
    assert!(
        database_exists(&ha, target, "scratch").await?,
        "kept without confirmDrop"
    );
    let etl_absent = json!({"name": "etl", "ensure": "absent"});
    set_lists(
        target,
        &ha,
        json!([reporting, etl_absent]),
        json!([{"name": "scratch", "owner": "reporting", "ensure": "absent", "confirmDrop": "scratch"}]),
    )
    .await?;
    wait_for(
        "scratch dropped and etl dropped",
        STEP_WITHIN,
        POLL,
        || async {
            let (roles, databases) = statuses(target, &ha).await?;
            (entry(&databases, "scratch")?.message == "dropped"
                && entry(&roles, "etl")?.message == "dropped")
                .then_some(())
        },
    )
    .await?;
    assert!(!database_exists(&ha, target, "scratch").await?);
    assert!(
        database_exists(&ha, target, "analytics").await?,
        "removed from the list, left in place"
    );
    assert!(
        login(&ha, &pooler, "etl", "etl-Pa55", "postgres")
            .await
            .is_err(),
        "etl is gone"
    );
    let (_, databases) = statuses(target, &ha).await.unwrap_or_default();
    assert!(
        entry(&databases, "analytics").is_none(),
        "status lists only spec entries"
    );

    // 5. Admission names the field and the reason.
    let refused = set_lists(target, &ha, json!([{"name": "pg_reader"}]), json!([])).await;
    let message = format!("{refused:?}");
    assert!(
        refused.is_err() && message.contains("not start with pg_"),
        "a reserved name is refused: {message}"
    );
    let c = ha.get(target).await?;
    assert_eq!(
        capstan_e2e::cluster::condition(&c, "Ready").as_deref(),
        Some("True"),
        "{}",
        ha::status_summary(&c)
    );
    ha.delete(target).await
}

#[test]
fn roles_and_databases_follow_the_spec() {
    capstan_e2e::scenario(|| async {
        let mut target = Target::from_env().await.expect("e2e target");
        let ns = format!("e2e-roles-{}", std::process::id());
        if let Err(e) = scenario(&mut target, &ns).await {
            fail(&target, &ns, e).await;
        }
    });
}
