//! pgBackRest 2.55 and PostgreSQL 17 through `capstan::backup` against
//! Azure and GCS repositories over TLS: Azurite (shared key and SAS) and
//! fake-gcs-server (a service account key exchanged for tokens at a token
//! server, and a plain token). Each runs async WAL archiving, a full
//! backup and a restore to the latest point, and checks the store holds
//! the archive and the backup; a wrong key fails with pgBackRest's own
//! message and never shows the key.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use capstan::backup::config::Invocation;
use capstan::backup::repository::GcsCredentials;
use capstan::backup::{BackupType, Repository, Restore, RestoreTarget};
use support::backrest::{Pg, Setup, setup, values, write_config};
use support::s3::pgbackrest;
use support::stores::azurite::{AZURE_KEY, AzureKey, Azurite};
use support::stores::fake_gcs::{FakeGcs, jwt_claims};
use support::{Ports, pg_bin};

static PORTS: Ports = Ports::new(25500, 25600);

/// A PostgreSQL 17 archiving to `repo` as stanza `stanza`.
struct Source {
    pg: Pg,
    br: Setup,
    client: tokio_postgres::Client,
}

async fn source(root: &Path, stanza: &str, repo: Repository) -> Option<Source> {
    let (pgbackrest, bin) = (pgbackrest()?, pg_bin(17)?);
    let mut pg = Pg::initdb(&bin, &root.join("src"), PORTS.take());
    let br = setup(&pgbackrest, &root.join("br"), stanza, &pg, repo);
    let inv = Invocation {
        pgbackrest,
        config: br.config_path.clone(),
        stanza: stanza.into(),
    };
    pg.start(&inv.archive_parameters(Duration::from_secs(60)));
    let client = pg.client("postgres").await;
    Some(Source { pg, br, client })
}

/// stanza-create, rows, a full backup, more rows archived, then a restore
/// to the latest point holding every row. Returns the backup's label.
async fn archive_backup_restore(src: &Source, root: &Path) -> String {
    let t = Instant::now();
    src.br.runner.stanza_create().await.expect("stanza-create");
    src.br.runner.check().await.expect("check");
    src.client
        .batch_execute("CREATE TABLE t (v text PRIMARY KEY); INSERT INTO t VALUES ('before')")
        .await
        .unwrap();
    src.br
        .runner
        .backup(BackupType::Full, None)
        .await
        .expect("full backup");
    src.client
        .batch_execute("INSERT INTO t VALUES ('after')")
        .await
        .unwrap();
    // check switches WAL and waits until the segment is in the repository.
    src.br.runner.check().await.expect("check after writes");
    let info = src.br.runner.info(None).await.expect("info");
    assert_eq!(info.backups.len(), 1, "{info:#?}");
    assert_eq!(info.backups[0].kind, BackupType::Full);
    assert!(info.backups[0].repo_size > 0, "{info:#?}");
    assert!(info.last_archived_wal().is_some(), "{info:#?}");
    let backed_up = t.elapsed();

    let t = Instant::now();
    let bin = src.pg.bin.clone();
    let mut copy = Pg::initdb(&bin, &root.join("copy"), PORTS.take());
    std::fs::remove_dir_all(&copy.data).unwrap();
    let mut restore = Restore::new(&copy.data, RestoreTarget::Latest);
    restore.archive_off = true;
    src.br.runner.restore(restore).await.expect("restore");
    copy.start(&[]);
    copy.wait_promoted().await;
    assert_eq!(
        values(&copy.client("postgres").await).await,
        ["after", "before"],
        "every archived row"
    );
    copy.stop();
    eprintln!(
        "stanza-create + archive + full backup {backed_up:?}, restore + recovery {:?}",
        t.elapsed()
    );
    info.backups[0].label.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_archive_backup_and_restore_with_a_shared_key_and_a_sas() {
    let Some(store) = Azurite::start(PORTS.take(), "pgbackups") else {
        return;
    };
    let tmp = tempfile::Builder::new().prefix("capbaz").tempdir().unwrap();
    let root = tmp.path();
    let repo = store.repository(
        "/capstan/ns/db",
        &root.join("secrets"),
        AzureKey::Shared(AZURE_KEY),
    );
    let Some(src) = source(root, "db", repo).await else {
        return;
    };
    let label = archive_backup_restore(&src, root).await;
    let blobs = store.blobs("capstan/ns/db/");
    assert!(
        blobs
            .iter()
            .any(|b| b.starts_with("capstan/ns/db/archive/db/17-1/")),
        "archived WAL in the container: {blobs:?}"
    );
    assert!(
        blobs
            .iter()
            .any(|b| b.starts_with(&format!("capstan/ns/db/backup/db/{label}/"))),
        "the backup in the container: {blobs:?}"
    );

    // A shared access signature (with the portal's leading '?') reads and
    // writes the same repository: archive, then an incremental backup.
    let mut config = src.br.config.clone();
    config.repositories = vec![store.repository(
        "/capstan/ns/db",
        &root.join("sas"),
        AzureKey::Sas(&store.account_sas()),
    )];
    let text = {
        let secrets = capstan::backup::config::Secrets::load(&config.repositories).unwrap();
        capstan::backup::config::render(&config, &secrets).unwrap()
    };
    assert!(
        text.contains("repo1-azure-key-type=sas\nrepo1-azure-key=sv="),
        "{text}"
    );
    let sas_path = root.join("br/sas.conf");
    write_config(&config, &sas_path);
    let mut sas = src.br.runner.clone();
    sas.config = sas_path;
    src.client
        .batch_execute("INSERT INTO t VALUES ('sas')")
        .await
        .unwrap();
    sas.check().await.expect("check with a SAS");
    sas.backup(BackupType::Incr, None)
        .await
        .expect("incremental backup with a SAS");
    assert_eq!(sas.info(None).await.unwrap().backups.len(), 2);
    // A SAS whose signature is wrong: refused, and pgBackRest's message
    // (which lands on PostgresBackup objects) does not carry it.
    let forged = format!(
        "{}&sig=Zm9yZ2VkLXNpZ25hdHVyZQ%3D%3D",
        store.account_sas().split("&sig=").next().unwrap()
    );
    config.repositories = vec![store.repository(
        "/capstan/ns/db",
        &root.join("forged"),
        AzureKey::Sas(&forged),
    )];
    let forged_path = root.join("br/forged.conf");
    write_config(&config, &forged_path);
    let mut forged_runner = src.br.runner.clone();
    forged_runner.config = forged_path;
    let err = forged_runner
        .backup(BackupType::Full, None)
        .await
        .unwrap_err();
    let message = err.pgbackrest_message().unwrap_or_default().to_string();
    assert!(message.contains("403"), "{err}");
    assert!(!message.contains("Zm9yZ2Vk"), "signature leaked: {message}");

    // A wrong shared key: Azurite refuses the signature and pgBackRest's
    // own message comes back, without the key.
    let wrong_key = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk=";
    config.repositories = vec![store.repository(
        "/capstan/ns/db",
        &root.join("wrong"),
        AzureKey::Shared(wrong_key),
    )];
    let wrong_path = root.join("br/wrong.conf");
    write_config(&config, &wrong_path);
    let mut wrong = src.br.runner.clone();
    wrong.config = wrong_path;
    let err = wrong.backup(BackupType::Full, None).await.unwrap_err();
    let message = err.pgbackrest_message().unwrap_or_default();
    eprintln!("Azure, wrong key -> {message}");
    assert!(message.starts_with("ERROR: ["), "{err}");
    assert!(message.contains("403"), "{err}");
    assert!(!message.contains(wrong_key), "key leaked: {message}");
    let one: i32 = src.client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the database keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_archive_backup_and_restore_with_a_service_key_and_a_token() {
    // The service account's RSA key is made (and the JWT checked) by openssl.
    if support::tools::find("openssl").is_none() {
        return;
    }
    let Some(store) = FakeGcs::start(PORTS.take(), PORTS.take(), "pg-backups") else {
        return;
    };
    let tmp = tempfile::Builder::new()
        .prefix("capbgcs")
        .tempdir()
        .unwrap();
    let root = tmp.path();
    let email = "backup@capstan-test.iam.gserviceaccount.com";
    let (key, public) = store.service_key(&root.join("secrets"), email);
    // pgBackRest reads the key itself: the postgres user must reach it.
    support::chown_tree(root);
    let repo = store.repository("/capstan/ns/db", GcsCredentials::ServiceKeyFile(key));
    let Some(src) = source(root, "db", repo).await else {
        return;
    };
    let label = archive_backup_restore(&src, root).await;
    let objects = store.objects("capstan/ns/db/");
    assert!(
        objects
            .iter()
            .any(|o| o.starts_with("capstan/ns/db/archive/db/17-1/")),
        "archived WAL in the bucket: {objects:?}"
    );
    assert!(
        objects
            .iter()
            .any(|o| o.starts_with(&format!("capstan/ns/db/backup/db/{label}/"))),
        "the backup in the bucket: {objects:?}"
    );
    // Every token came from a JWT signed with the service account's key.
    let requests = store.token_requests.lock().unwrap().clone();
    assert!(!requests.is_empty(), "pgBackRest asked for a token");
    let (claims, verified) = jwt_claims(&requests[0], &public, store.dir.path());
    assert!(
        verified,
        "the JWT's signature verifies with the service key"
    );
    assert_eq!(claims["iss"], email);
    assert_eq!(
        claims["aud"],
        format!("https://localhost:{}/token", store.token_port)
    );
    assert!(
        requests.iter().any(|r| {
            jwt_claims(r, &public, store.dir.path()).0["scope"]
                == "https://www.googleapis.com/auth/devstorage.read_write"
        }),
        "a read-write token for archiving and backups"
    );

    // A token, as emulators and tests use, reads the same repository.
    let mut config = src.br.config.clone();
    let token = root.join("token/gcs-key");
    std::fs::create_dir_all(token.parent().unwrap()).unwrap();
    std::fs::write(&token, "ya29.capstan-test-token\n").unwrap();
    config.repositories =
        vec![store.repository("/capstan/ns/db", GcsCredentials::TokenFile(token))];
    let token_path = root.join("br/token.conf");
    write_config(&config, &token_path);
    let mut with_token = src.br.runner.clone();
    with_token.config = token_path;
    let info = with_token.info(None).await.expect("info with a token");
    assert_eq!(info.backups[0].label, label);

    // A key file that is no service account key is refused before
    // pgBackRest runs, naming the fix and not the content.
    let bad = root.join("bad/gcs-key");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, "{\"private_key\": \"TopSecret\"}").unwrap();
    let bad_repo = store.repository("/capstan/ns/db", GcsCredentials::ServiceKeyFile(bad));
    let err = capstan::backup::config::Secrets::load(&[bad_repo]).unwrap_err();
    assert!(
        err.to_string().contains("has no client_email, token_uri"),
        "{err}"
    );
    assert!(!err.to_string().contains("TopSecret"), "{err}");
}
