//! PgBouncer authentication through `auth_query` (DESIGN §6): PgBouncer logs
//! in as [`super::roles::POOLER`], which may only call a `SECURITY DEFINER`
//! function returning the SCRAM verifier of the user a client claims to be.
//! No userlist of application passwords ever leaves the database.
//!
//! PgBouncer 1.18 has no `auth_dbname`, so `auth_query` runs in the database
//! the client asked for: the instance manager installs the function in every
//! connectable database and in `template1`, so databases created later have
//! it too.

/// Schema holding Capstan's helper objects in each database.
pub const SCHEMA: &str = "capstan";

/// `auth_query` for `pgbouncer.ini`.
pub const AUTH_QUERY: &str = "SELECT usename, passwd FROM capstan.pooler_user_lookup($1)";

/// Idempotent SQL, run as superuser in one database, that installs the lookup
/// function and lets only the pooler role call it. Superusers and the
/// replication role are never returned: they may not log in through the
/// pooler.
pub const INSTALL_SQL: &str = r#"
CREATE SCHEMA IF NOT EXISTS capstan;
REVOKE ALL ON SCHEMA capstan FROM PUBLIC;
CREATE OR REPLACE FUNCTION capstan.pooler_user_lookup(i_username text, OUT usename name, OUT passwd text)
RETURNS record
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
  SELECT a.rolname, a.rolpassword
  FROM pg_catalog.pg_authid a
  WHERE a.rolname = i_username
    AND a.rolcanlogin
    AND NOT a.rolsuper
    AND NOT a.rolreplication
    AND a.rolname <> 'capstan_pooler'
    AND (a.rolvaliduntil IS NULL OR a.rolvaliduntil > pg_catalog.now())
$$;
REVOKE ALL ON FUNCTION capstan.pooler_user_lookup(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA capstan TO capstan_pooler;
GRANT EXECUTE ON FUNCTION capstan.pooler_user_lookup(text) TO capstan_pooler;
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::roles;

    #[test]
    fn install_sql_grants_to_the_pooler_role_only() {
        assert!(INSTALL_SQL.contains(&format!("TO {}", roles::POOLER)));
        assert!(INSTALL_SQL.contains("FROM PUBLIC"));
        assert!(INSTALL_SQL.contains("SECURITY DEFINER"));
        assert!(AUTH_QUERY.contains(SCHEMA));
    }
}
