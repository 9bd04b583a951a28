//! Azure and GCS repository settings, through the same local CEL
//! evaluation as the other rules (enums and patterns are the schema's,
//! checked in `api::schema`).

use super::backup::{repository, restoring, with_backup};
use super::*;

#[test]
fn azure_and_gcs_repositories_take_their_settings() {
    let azure = |extra: Value| {
        let mut a = json!({"account": "devstoreaccount1", "container": "pg-backups",
            "credentials": {"secretName": "az", "key": "AZURE_STORAGE_KEY"}});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        with_backup("/repositories", json!([repository("repo1", "azure", a)]))
    };
    assert_ok(&azure(json!({})), None);
    assert_ok(
        &azure(
            json!({"endpoint": "azurite.store:10000", "uriStyle": "path", "verifyTls": true,
            "caSecret": {"name": "store-ca", "key": "ca.crt"},
            "credentials": {"secretName": "az", "key": "sas", "keyType": "sas"}}),
        ),
        None,
    );
    assert_refused(
        &azure(json!({"uriStyle": "path"})),
        None,
        "azure.uriStyle path puts the account in the path",
    );
    let gcs = |extra: Value| {
        let mut g = json!({"bucket": "pg-backups",
            "credentials": {"secretName": "gcs", "key": "key.json"}});
        g.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        with_backup("/repositories", json!([repository("repo1", "gcs", g)]))
    };
    assert_ok(&gcs(json!({})), None);
    assert_ok(
        &gcs(json!({"endpoint": "gcs.store:4443", "verifyTls": false,
            "credentials": {"secretName": "gcs", "key": "token", "keyType": "token"}})),
        None,
    );
    // The same settings as a restore source.
    assert_refused(
        &restoring(
            json!({"azure": {"account": "devstoreaccount1", "container": "pg-backups",
            "uriStyle": "path", "credentials": {"secretName": "az", "key": "k"}}}),
        ),
        None,
        "azure.uriStyle path",
    );
}
