//! The statements that bring one role or database to what its entry says,
//! from what the server holds now. Pure: the caller reads and executes.

use std::collections::BTreeSet;

use crate::contract::roles::{DatabaseSettings, RoleSettings};
use crate::postgres::sql::{quote_ident, quote_literal};

use super::super::secrets::Password;

/// A role as `pg_authid` and `pg_auth_members` show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CurrentRole {
    pub login: bool,
    pub create_db: bool,
    pub connection_limit: i32,
    /// `rolpassword` (a SCRAM verifier), when set.
    pub verifier: Option<String>,
    pub member_of: BTreeSet<String>,
}

/// What to run for one entry, and how to say it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Steps {
    pub statements: Vec<String>,
    /// What changes, in words (`created`, `password`, `connection limit`…):
    /// empty when nothing does.
    pub changes: Vec<&'static str>,
}

impl Steps {
    fn add(&mut self, change: &'static str, statement: String) {
        self.statements.push(statement);
        if !self.changes.contains(&change) {
            self.changes.push(change);
        }
    }
}

fn attributes(role: &RoleSettings) -> String {
    format!(
        "{} {} CONNECTION LIMIT {}",
        if role.login { "LOGIN" } else { "NOLOGIN" },
        if role.create_db {
            "CREATEDB"
        } else {
            "NOCREATEDB"
        },
        role.connection_limit
    )
}

/// A role to keep: created, or its attributes and password set.
/// `password`: the one its Secret holds (None: the role's password is not
/// managed). An unchanged password is never re-hashed: a new salt would
/// change the SCRAM keys PgBouncer holds for the role. Memberships are
/// [`memberships`], run once every role exists.
pub fn role(
    role: &RoleSettings,
    current: Option<&CurrentRole>,
    password: Option<&Password>,
) -> Steps {
    let name = quote_ident(&role.name);
    let mut steps = Steps::default();
    let set_password =
        |verifier: String| format!("ALTER ROLE {name} PASSWORD {}", quote_literal(&verifier));
    let Some(current) = current else {
        steps.add(
            "created",
            format!("CREATE ROLE {name} WITH {}", attributes(role)),
        );
        if let Some(p) = password {
            steps.statements.push(set_password(p.scram_verifier()));
        }
        return steps;
    };
    if current.login != role.login
        || current.create_db != role.create_db
        || current.connection_limit != role.connection_limit
    {
        steps.add(
            "attributes",
            format!("ALTER ROLE {name} WITH {}", attributes(role)),
        );
    }
    if let Some(p) = password
        && !current
            .verifier
            .as_deref()
            .is_some_and(|v| p.matches_verifier(v))
    {
        steps.add("password", set_password(p.scram_verifier()));
    }
    steps
}

/// `inRoles` as the exact membership list: granted what is missing,
/// revoked what is not listed. `current`: the role's memberships now
/// (empty for a role created this pass).
pub fn memberships(role: &RoleSettings, current: &BTreeSet<String>) -> Steps {
    let name = quote_ident(&role.name);
    let mut steps = Steps::default();
    let wanted: BTreeSet<&str> = role.in_roles.iter().map(String::as_str).collect();
    for group in wanted.iter().filter(|g| !current.contains(**g)) {
        steps.add(
            "memberships",
            format!("GRANT {} TO {name}", quote_ident(group)),
        );
    }
    for group in current.iter().filter(|g| !wanted.contains(g.as_str())) {
        steps.add(
            "memberships",
            format!("REVOKE {} FROM {name}", quote_ident(group)),
        );
    }
    steps
}

/// A role to drop, when it exists.
pub fn drop_role(name: &str, exists: bool) -> Steps {
    let mut steps = Steps::default();
    if exists {
        steps.add("dropped", format!("DROP ROLE {}", quote_ident(name)));
    }
    steps
}

/// A database to keep: created, or given its owner. `current_owner`: None
/// when it does not exist. Extensions are run inside it, separately.
pub fn database(db: &DatabaseSettings, current_owner: Option<&str>) -> Steps {
    let name = quote_ident(&db.name);
    let owner = quote_ident(&db.owner);
    let mut steps = Steps::default();
    match current_owner {
        None => steps.add("created", format!("CREATE DATABASE {name} OWNER {owner}")),
        Some(o) if o != db.owner => {
            steps.add("owner", format!("ALTER DATABASE {name} OWNER TO {owner}"));
        }
        Some(_) => {}
    }
    steps
}

/// Extensions of `db` not yet in it.
pub fn extensions(db: &DatabaseSettings, installed: &BTreeSet<String>) -> Steps {
    let mut steps = Steps::default();
    for e in db.extensions.iter().filter(|e| !installed.contains(*e)) {
        steps.add(
            "extensions",
            format!("CREATE EXTENSION IF NOT EXISTS {}", quote_ident(e)),
        );
    }
    steps
}

/// What an absent database comes to: dropped only with its second switch.
pub enum Absent {
    Gone,
    Kept,
    Drop(String),
}

pub fn absent_database(db: &DatabaseSettings, exists: bool) -> Absent {
    match (exists, db.drop) {
        (false, _) => Absent::Gone,
        (true, false) => Absent::Kept,
        (true, true) => Absent::Drop(format!("DROP DATABASE {}", quote_ident(&db.name))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reporting() -> RoleSettings {
        RoleSettings {
            name: "reporting".into(),
            present: true,
            login: true,
            create_db: false,
            connection_limit: 10,
            in_roles: vec!["pg_read_all_data".into()],
            password_from: Some("reporting-pw/password".into()),
        }
    }

    fn password(text: &str) -> Password {
        Password::from_secret_value(text.as_bytes()).unwrap()
    }

    fn as_is(role: &RoleSettings, verifier: Option<String>) -> CurrentRole {
        CurrentRole {
            login: role.login,
            create_db: role.create_db,
            connection_limit: role.connection_limit,
            verifier,
            member_of: role.in_roles.iter().cloned().collect(),
        }
    }

    #[test]
    fn a_new_role_is_created_with_its_password_then_its_memberships() {
        let p = password("s3cret\n");
        let steps = role(&reporting(), None, Some(&p));
        assert_eq!(steps.changes, vec!["created"]);
        assert_eq!(
            steps.statements[0],
            r#"CREATE ROLE "reporting" WITH LOGIN NOCREATEDB CONNECTION LIMIT 10"#
        );
        assert!(
            steps.statements[1].starts_with(r#"ALTER ROLE "reporting" PASSWORD 'SCRAM-SHA-256$"#)
        );
        assert_eq!(steps.statements.len(), 2);
        // Only the verifier goes to the server, never the password.
        assert!(steps.statements.iter().all(|s| !s.contains("s3cret")));
        let grants = memberships(&reporting(), &BTreeSet::new());
        assert_eq!(
            grants.statements,
            vec![r#"GRANT "pg_read_all_data" TO "reporting""#]
        );
    }

    #[test]
    fn an_unchanged_role_needs_nothing_and_keeps_its_verifier() {
        let p = password("s3cret");
        let current = as_is(&reporting(), Some(p.scram_verifier()));
        assert_eq!(
            role(&reporting(), Some(&current), Some(&p)),
            Steps::default()
        );
        // Not managing the password leaves it as it is.
        assert_eq!(role(&reporting(), Some(&current), None), Steps::default());
        assert_eq!(
            memberships(&reporting(), &current.member_of),
            Steps::default()
        );
    }

    #[test]
    fn changes_are_applied_one_kind_at_a_time() {
        let old = password("old");
        let mut current = as_is(&reporting(), Some(old.scram_verifier()));
        current.connection_limit = -1;
        let steps = role(&reporting(), Some(&current), Some(&password("new")));
        assert_eq!(steps.changes, vec!["attributes", "password"]);
        assert_eq!(
            steps.statements[0],
            r#"ALTER ROLE "reporting" WITH LOGIN NOCREATEDB CONNECTION LIMIT 10"#
        );
        assert!(steps.statements[1].contains("SCRAM-SHA-256$"));
        let grants = memberships(&reporting(), &BTreeSet::from(["pg_monitor".to_string()]));
        assert_eq!(grants.changes, vec!["memberships"]);
        assert_eq!(
            grants.statements,
            vec![
                r#"GRANT "pg_read_all_data" TO "reporting""#,
                r#"REVOKE "pg_monitor" FROM "reporting""#
            ]
        );
        // A verifier of another password, or none, is replaced.
        current.verifier = None;
        assert!(
            role(&reporting(), Some(&current), Some(&old))
                .changes
                .contains(&"password")
        );
    }

    #[test]
    fn databases_are_created_owned_and_extended() {
        let db = DatabaseSettings {
            name: "analytics".into(),
            owner: "reporting".into(),
            present: true,
            drop: false,
            extensions: vec!["uuid-ossp".into(), "hstore".into()],
        };
        assert_eq!(
            database(&db, None).statements,
            vec![r#"CREATE DATABASE "analytics" OWNER "reporting""#]
        );
        assert_eq!(
            database(&db, Some("app")).statements,
            vec![r#"ALTER DATABASE "analytics" OWNER TO "reporting""#]
        );
        assert!(database(&db, Some("reporting")).statements.is_empty());
        let installed = BTreeSet::from(["plpgsql".to_string(), "hstore".to_string()]);
        assert_eq!(
            extensions(&db, &installed).statements,
            vec![r#"CREATE EXTENSION IF NOT EXISTS "uuid-ossp""#]
        );
    }

    #[test]
    fn an_absent_database_is_dropped_only_when_confirmed() {
        let mut db = DatabaseSettings {
            name: "legacy".into(),
            owner: "app".into(),
            present: false,
            drop: false,
            extensions: vec![],
        };
        assert!(matches!(absent_database(&db, true), Absent::Kept));
        assert!(matches!(absent_database(&db, false), Absent::Gone));
        db.drop = true;
        match absent_database(&db, true) {
            Absent::Drop(sql) => assert_eq!(sql, r#"DROP DATABASE "legacy""#),
            _ => panic!("confirmed: dropped"),
        }
        assert_eq!(
            drop_role("old", true).statements,
            vec![r#"DROP ROLE "old""#]
        );
        assert!(drop_role("old", false).statements.is_empty());
    }
}
