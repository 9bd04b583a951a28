//! `spec.roles` and `spec.databases`: names, the roles Capstan keeps for
//! itself, and the second switch before a database is dropped.

use super::*;

fn with_roles(roles: Value) -> Value {
    with(minimal(), "/spec/roles", roles)
}

fn with_databases(databases: Value) -> Value {
    with(minimal(), "/spec/databases", databases)
}

#[test]
fn roles_take_plain_names_not_reserved_ones() {
    assert_ok(
        &with_roles(json!([
            {"name": "reporting", "inRoles": ["pg_read_all_data"],
             "passwordSecret": {"name": "reporting-pw", "key": "password"}},
            {"name": "etl_writer", "login": false, "connectionLimit": 5, "createDb": true},
            {"name": "old_app", "ensure": "absent"},
        ])),
        None,
    );
    for (name, why) in [
        ("postgres", "reserved by PostgreSQL or managed by Capstan"),
        (
            "capstan_pooler",
            "reserved by PostgreSQL or managed by Capstan",
        ),
        (
            "streaming_replica",
            "reserved by PostgreSQL or managed by Capstan",
        ),
        ("public", "reserved by PostgreSQL or managed by Capstan"),
        ("pg_monitor", "not start with pg_"),
        ("Reporting", "lowercase SQL identifier"),
        ("drop-me", "lowercase SQL identifier"),
        ("x; drop table t", "lowercase SQL identifier"),
    ] {
        assert_refused(
            &with_roles(json!([{"name": name}])),
            None,
            &format!("spec.roles[].name must be a {}", "lowercase SQL identifier"),
        );
        assert_refused(&with_roles(json!([{"name": name}])), None, why);
    }
    assert_refused(
        &with_roles(json!([{"name": "a".repeat(64)}])),
        None,
        "spec.roles",
    );
}

#[test]
fn the_bootstrap_owner_is_capstans() {
    assert_refused(
        &with_roles(json!([{"name": "app"}])),
        None,
        "may not list the bootstrap owner",
    );
    let owner = with(
        with_roles(json!([{"name": "app"}])),
        "/spec/bootstrap/initdb/owner",
        json!("orders"),
    );
    assert_ok(&owner, None);
}

#[test]
fn memberships_and_limits() {
    assert_refused(
        &with_roles(json!([{"name": "r", "inRoles": ["postgres"]}])),
        None,
        "membership in a role Capstan manages",
    );
    assert_refused(
        &with_roles(json!([{"name": "r", "inRoles": ["Admins"]}])),
        None,
        "spec.roles[].inRoles",
    );
    assert_refused(
        &with_roles(json!([{"name": "r", "connectionLimit": -2}])),
        None,
        "connectionLimit must be -1",
    );
    assert_ok(
        &with_roles(
            json!([{"name": "r", "connectionLimit": -1, "inRoles": ["pg_monitor", "readers"]}]),
        ),
        None,
    );
}

#[test]
fn a_database_is_dropped_only_with_its_name_repeated() {
    assert_ok(
        &with_databases(json!([
            {"name": "analytics", "owner": "reporting", "extensions": ["pg_stat_statements", "uuid-ossp"]},
            {"name": "scratch", "owner": "app", "ensure": "absent"},
            {"name": "legacy", "owner": "app", "ensure": "absent", "confirmDrop": "legacy"},
        ])),
        None,
    );
    assert_refused(
        &with_databases(
            json!([{"name": "legacy", "owner": "app", "ensure": "absent", "confirmDrop": "legacy2"}]),
        ),
        None,
        "confirmDrop must repeat the database's name",
    );
    assert_refused(
        &with_databases(json!([{"name": "legacy", "owner": "app", "confirmDrop": "legacy"}])),
        None,
        "goes with ensure: absent",
    );
}

#[test]
fn databases_take_plain_names_and_keep_the_bootstrap_one() {
    for name in ["postgres", "template1", "Sales", "a-b"] {
        assert_refused(
            &with_databases(json!([{"name": name, "owner": "app"}])),
            None,
            "spec.databases[].name must be a lowercase SQL identifier",
        );
    }
    assert_refused(
        &with_databases(json!([{"name": "d", "owner": "postgres"}])),
        None,
        "spec.databases[].owner",
    );
    assert_refused(
        &with_databases(json!([{"name": "d", "owner": "app", "extensions": ["bad ext"]}])),
        None,
        "extensions must list extension names",
    );
    // The bootstrap database may be listed for its extensions, not dropped.
    assert_ok(
        &with_databases(json!([{"name": "app", "owner": "app", "extensions": ["hstore"]}])),
        None,
    );
    assert_refused(
        &with_databases(json!([{"name": "app", "owner": "app", "ensure": "absent"}])),
        None,
        "the bootstrap database",
    );
}
