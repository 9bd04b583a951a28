//! `spec.roles` and `spec.databases` kept on the primary.
//!
//! Each entry is applied on its own: a missing password or an error from
//! PostgreSQL fails only that entry, and the report says which and why.
//! Order: roles to keep (owners must exist), databases, then roles to drop
//! (a role still owning a database cannot go).

pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use tokio_postgres::Client;

use crate::contract::roles::{
    DatabaseSettings, EntryReport, EntryState, ManagedReport, RoleSettings,
};

use super::local::{Local, LocalError, QUIET_SESSION, error_text};
use super::secrets::Password;
use plan::{Absent, CurrentRole, Steps};

/// Where the role passwords come from: the `<name>-roles` Secret the
/// operator fills (one key per role), or a directory of files named after
/// the roles (local runs and tests).
pub enum PasswordSource {
    Kube {
        namespace: String,
        secret: String,
        client: tokio::sync::OnceCell<kube::Client>,
    },
    Dir(PathBuf),
}

impl PasswordSource {
    pub fn kube(namespace: &str, secret: String) -> Self {
        Self::Kube {
            namespace: namespace.to_string(),
            secret,
            client: tokio::sync::OnceCell::new(),
        }
    }

    /// Passwords by role. A Secret not there yet reads as none.
    pub async fn read(&self) -> Result<BTreeMap<String, Password>, String> {
        match self {
            Self::Kube {
                namespace,
                secret,
                client,
            } => {
                let client = client
                    .get_or_try_init(kube::Client::try_default)
                    .await
                    .map_err(|e| format!("no Kubernetes client: {e}"))?;
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                let found = api
                    .get_opt(secret)
                    .await
                    .map_err(|e| format!("cannot read Secret {secret}: {e}"))?;
                Ok(found
                    .and_then(|s| s.data)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(role, value)| {
                        Some((role, Password::from_secret_value(&value.0)?))
                    })
                    .collect())
            }
            Self::Dir(dir) => {
                let mut out = BTreeMap::new();
                let Ok(entries) = std::fs::read_dir(dir) else {
                    return Ok(out);
                };
                for entry in entries.flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    // Kubernetes' `..data` links and dot files are not roles.
                    if name.starts_with('.') {
                        continue;
                    }
                    if let Some(p) = std::fs::read(entry.path())
                        .ok()
                        .and_then(|b| Password::from_secret_value(&b))
                    {
                        out.insert(name, p);
                    }
                }
                Ok(out)
            }
        }
    }
}

/// Applies every entry; never fails as a whole.
pub async fn apply(
    local: &Local,
    roles: &[RoleSettings],
    databases: &[DatabaseSettings],
    passwords: &BTreeMap<String, Password>,
) -> Result<ManagedReport, LocalError> {
    let client = local.connect().await?;
    // Statements carry password verifiers: keep them out of the log.
    client
        .batch_execute(QUIET_SESSION)
        .await
        .map_err(|e| LocalError::Query {
            what: "quieting the session log",
            message: error_text(&e),
        })?;
    let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
    let current = current_roles(&client, &names).await?;
    let mut report = ManagedReport::default();
    let mut dropping = Vec::new();
    // Every role first, then the memberships: an entry may name a role
    // listed after it.
    let mut granting = Vec::new();
    for role in roles {
        if !role.present {
            dropping.push(role);
            continue;
        }
        let password = match &role.password_from {
            None => None,
            Some(from) => match passwords.get(&role.name) {
                Some(p) => Some(p),
                None => {
                    report.roles.push(failed(
                        &role.name,
                        format!(
                            "no password: Secret key {from} is missing or empty (create it; the role is applied once it exists)"
                        ),
                    ));
                    continue;
                }
            },
        };
        let existing = current.get(&role.name);
        let done = run(&client, &role.name, plan::role(role, existing, password)).await;
        if done.state == EntryState::Applied {
            granting.push((
                role,
                existing.map(|c| c.member_of.clone()).unwrap_or_default(),
                report.roles.len(),
            ));
        }
        report.roles.push(done);
    }
    for (role, member_of, at) in granting {
        let granted = run(&client, &role.name, plan::memberships(role, &member_of)).await;
        report.roles[at] = combined(&report.roles[at], granted);
    }
    let db_names: Vec<&str> = databases.iter().map(|d| d.name.as_str()).collect();
    let owners = current_databases(&client, &db_names).await?;
    for db in databases {
        report
            .databases
            .push(database(local, &client, db, owners.get(&db.name)).await);
    }
    for role in dropping {
        let steps = plan::drop_role(&role.name, current.contains_key(&role.name));
        report.roles.push(run(&client, &role.name, steps).await);
    }
    Ok(report)
}

async fn database(
    local: &Local,
    client: &Client,
    db: &DatabaseSettings,
    owner: Option<&String>,
) -> EntryReport {
    if !db.present {
        return match plan::absent_database(db, owner.is_some()) {
            Absent::Gone => applied(&db.name, "absent".into()),
            Absent::Kept => EntryReport {
                name: db.name.clone(),
                state: EntryState::Kept,
                message: format!(
                    "ensure: absent, but kept: set confirmDrop: {} to drop it and all its data",
                    db.name
                ),
            },
            Absent::Drop(sql) => {
                let mut steps = Steps::default();
                steps.statements.push(sql);
                steps.changes.push("dropped");
                run(client, &db.name, steps).await
            }
        };
    }
    let created = run(
        client,
        &db.name,
        plan::database(db, owner.map(String::as_str)),
    )
    .await;
    if created.state != EntryState::Applied || db.extensions.is_empty() {
        return created;
    }
    let inside = match local.connect_to(&db.name).await {
        Ok(c) => c,
        Err(e) => return failed(&db.name, e.to_string()),
    };
    let installed: BTreeSet<String> = match inside
        .query("SELECT extname::text FROM pg_extension", &[])
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(e) => return failed(&db.name, error_text(&e)),
    };
    let extended = run(&inside, &db.name, plan::extensions(db, &installed)).await;
    combined(&created, extended)
}

/// One entry's report from two applied parts: the second's failure, or
/// what both changed.
fn combined(first: &EntryReport, second: EntryReport) -> EntryReport {
    match (first.message.as_str(), second.state) {
        (_, EntryState::Failed) | ("unchanged", _) => second,
        (done, _) if second.message == "unchanged" => applied(&first.name, done.to_string()),
        (done, _) => applied(&first.name, format!("{done}, {}", second.message)),
    }
}

/// Runs one entry's statements, stopping at the first error.
async fn run(client: &Client, name: &str, steps: Steps) -> EntryReport {
    for statement in &steps.statements {
        if let Err(e) = client.batch_execute(statement).await {
            return failed(name, error_text(&e));
        }
    }
    let message = if steps.changes.is_empty() {
        "unchanged".to_string()
    } else {
        steps.changes.join(", ")
    };
    if !steps.changes.is_empty() {
        tracing::info!(entry = %name, changes = %message, operation = "roles", "applied");
    }
    applied(name, message)
}

fn applied(name: &str, message: String) -> EntryReport {
    EntryReport {
        name: name.to_string(),
        state: EntryState::Applied,
        message,
    }
}

fn failed(name: &str, message: String) -> EntryReport {
    tracing::warn!(entry = %name, error = %message, operation = "roles", "not applied");
    EntryReport {
        name: name.to_string(),
        state: EntryState::Failed,
        message,
    }
}

async fn current_roles(
    client: &Client,
    names: &[&str],
) -> Result<BTreeMap<String, CurrentRole>, LocalError> {
    let rows = client
        .query(
            "SELECT r.rolname::text, r.rolcanlogin, r.rolcreatedb, r.rolconnlimit, r.rolpassword,
                    ARRAY(SELECT g.rolname::text FROM pg_auth_members m
                          JOIN pg_authid g ON g.oid = m.roleid WHERE m.member = r.oid)
             FROM pg_authid r WHERE r.rolname = ANY($1)",
            &[&names],
        )
        .await
        .map_err(|e| LocalError::Query {
            what: "reading roles",
            message: error_text(&e),
        })?;
    Ok(rows
        .iter()
        .map(|r| {
            let member_of: Vec<String> = r.get(5);
            (
                r.get(0),
                CurrentRole {
                    login: r.get(1),
                    create_db: r.get(2),
                    connection_limit: r.get(3),
                    verifier: r.get(4),
                    member_of: member_of.into_iter().collect(),
                },
            )
        })
        .collect())
}

/// Owner of each database that exists.
async fn current_databases(
    client: &Client,
    names: &[&str],
) -> Result<BTreeMap<String, String>, LocalError> {
    let rows = client
        .query(
            "SELECT datname::text, pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = ANY($1)",
            &[&names],
        )
        .await
        .map_err(|e| LocalError::Query {
            what: "reading databases",
            message: error_text(&e),
        })?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
