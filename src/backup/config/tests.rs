use super::*;
use crate::backup::command::BackupType;
use crate::backup::repository::{Retention, RetentionType};

fn base(repositories: Vec<Repository>) -> BackrestConfig {
    BackrestConfig {
        stanza: Stanza {
            name: "db".into(),
            pg_path: "/var/lib/postgresql/data/pgdata".into(),
            pg_port: 5432,
            pg_socket_path: "/run/capstan".into(),
            pg_user: "postgres".into(),
        },
        repositories,
        log_path: "/var/lib/postgresql/data/pgbackrest/log".into(),
        lock_path: "/run/capstan/pgbackrest".into(),
        spool_path: "/var/lib/postgresql/data/pgbackrest/spool".into(),
        process_max: 2,
        archive_timeout: Duration::from_secs(60),
        archive_push_queue_max: None,
        server: None,
        client_tls: None,
    }
}

fn s3(credentials: S3Credentials) -> Repository {
    Repository {
        storage: Storage::S3(S3 {
            endpoint: "minio.backup".into(),
            port: Some(9000),
            region: "us-east-1".into(),
            bucket: "pg".into(),
            uri_style: UriStyle::Path,
            tls: Tls {
                verify: true,
                ca_file: Some("/etc/capstan/backup-ca/ca.crt".into()),
            },
            credentials,
        }),
        path: "/db".into(),
        retention: Retention {
            full: Some(2),
            full_type: RetentionType::Count,
            diff: Some(3),
            archive: Some(2),
            archive_type: Some(BackupType::Full),
        },
    }
}

fn file_keys() -> S3Credentials {
    S3Credentials::Files {
        access_key_id: "/s/id".into(),
        secret_access_key: "/s/key".into(),
    }
}

#[test]
fn renders_global_stanza_and_an_s3_repository() {
    let secrets = Secrets::from_values(vec![vec![Secret::new("AKID"), Secret::new("SeCrEt")]]);
    let text = render(&base(vec![s3(file_keys())]), &secrets).unwrap();
    let expected = "\
[global]
log-path=/var/lib/postgresql/data/pgbackrest/log
lock-path=/run/capstan/pgbackrest
spool-path=/var/lib/postgresql/data/pgbackrest/spool
log-level-file=info
archive-async=y
process-max=2
start-fast=y
archive-timeout=60
repo1-type=s3
repo1-s3-endpoint=minio.backup
repo1-storage-port=9000
repo1-s3-region=us-east-1
repo1-s3-bucket=pg
repo1-s3-uri-style=path
repo1-storage-verify-tls=y
repo1-storage-ca-file=/etc/capstan/backup-ca/ca.crt
repo1-s3-key-type=shared
repo1-s3-key=AKID
repo1-s3-key-secret=SeCrEt
repo1-path=/db
repo1-retention-full=2
repo1-retention-full-type=count
repo1-retention-diff=3
repo1-retention-archive=2
repo1-retention-archive-type=full

[db]
pg1-path=/var/lib/postgresql/data/pgdata
pg1-port=5432
pg1-socket-path=/run/capstan
pg1-user=postgres
";
    assert!(text.starts_with("# Written by Capstan"));
    assert_eq!(text.split_once('\n').unwrap().1, expected);
}

#[test]
fn environment_and_role_credentials_put_no_key_in_the_file() {
    for (creds, key_type) in [
        (S3Credentials::Environment, "shared"),
        (S3Credentials::InstanceRole, "auto"),
    ] {
        let text = render(&base(vec![s3(creds)]), &Secrets::default()).unwrap();
        assert!(text.contains(&format!("repo1-s3-key-type={key_type}\n")));
        assert!(!text.contains("repo1-s3-key="), "{text}");
        assert!(!text.contains("key-secret"), "{text}");
    }
}

#[test]
fn several_repositories_are_numbered_in_order() {
    let mut posix = Repository::posix("/backups/db");
    posix.retention.full = Some(7);
    posix.retention.full_type = RetentionType::Time;
    let gcs = Repository {
        storage: Storage::Gcs(Gcs {
            bucket: "b".into(),
            endpoint: None,
            tls: Tls::default(),
            credentials: GcsCredentials::ServiceKeyFile("/s/gcs.json".into()),
        }),
        path: "/db".into(),
        retention: Retention::default(),
    };
    let azure = Repository {
        storage: Storage::Azure(Azure {
            account: "devstoreaccount1".into(),
            container: "c".into(),
            endpoint: Some("azurite".into()),
            port: Some(10000),
            uri_style: UriStyle::Path,
            tls: Tls {
                verify: false,
                ca_file: None,
            },
            credentials: AzureCredentials::SharedKey("/s/k".into()),
        }),
        path: "/db".into(),
        retention: Retention::default(),
    };
    let secrets = Secrets::from_values(vec![vec![], vec![], vec![Secret::new("a2V5")]]);
    let text = render(&base(vec![posix, gcs, azure]), &secrets).unwrap();
    for line in [
        "repo1-type=posix\nrepo1-path=/backups/db\nrepo1-retention-full=7\nrepo1-retention-full-type=time\n",
        "repo2-type=gcs\nrepo2-gcs-bucket=b\nrepo2-storage-verify-tls=y\nrepo2-gcs-key-type=service\nrepo2-gcs-key=/s/gcs.json\nrepo2-path=/db\n",
        "repo3-type=azure\nrepo3-azure-account=devstoreaccount1\nrepo3-azure-container=c\nrepo3-azure-endpoint=azurite\nrepo3-storage-port=10000\nrepo3-azure-uri-style=path\nrepo3-storage-verify-tls=n\nrepo3-azure-key-type=shared\nrepo3-azure-key=a2V5\nrepo3-path=/db\n",
    ] {
        assert!(text.contains(line), "missing\n{line}\nin\n{text}");
    }
}

fn azure(credentials: AzureCredentials) -> Repository {
    Repository {
        storage: Storage::Azure(Azure {
            account: "acct".into(),
            container: "pg".into(),
            endpoint: None,
            port: None,
            uri_style: UriStyle::Host,
            tls: Tls::default(),
            credentials,
        }),
        path: "/db".into(),
        retention: Retention::default(),
    }
}

fn gcs(endpoint: Option<&str>, credentials: GcsCredentials) -> Repository {
    Repository {
        storage: Storage::Gcs(Gcs {
            bucket: "pg-backups".into(),
            endpoint: endpoint.map(str::to_string),
            tls: Tls {
                verify: true,
                ca_file: Some("/s/ca.crt".into()),
            },
            credentials,
        }),
        path: "/db".into(),
        retention: Retention::default(),
    }
}

#[test]
fn azure_takes_a_shared_key_or_a_sas_from_its_file() {
    let one = |secret: &str| Secrets::from_values(vec![vec![Secret::new(secret)]]);
    let text = render(
        &base(vec![azure(AzureCredentials::SharedKey("/s/key".into()))]),
        &one("c2hhcmVk"),
    )
    .unwrap();
    assert!(
        text.contains("repo1-type=azure\nrepo1-azure-account=acct\nrepo1-azure-container=pg\nrepo1-azure-uri-style=host\nrepo1-storage-verify-tls=y\nrepo1-azure-key-type=shared\nrepo1-azure-key=c2hhcmVk\nrepo1-path=/db\n"),
        "{text}"
    );
    assert!(!text.contains("azure-endpoint"), "pgBackRest's default");
    // A SAS as the portal shows it, with its leading '?'.
    let text = render(
        &base(vec![azure(AzureCredentials::Sas("/s/sas".into()))]),
        &one("?sv=2022-11-02&ss=b&sig=abc%3D"),
    )
    .unwrap();
    assert!(
        text.contains("repo1-azure-key-type=sas\nrepo1-azure-key=sv=2022-11-02&ss=b&sig=abc%3D\n"),
        "{text}"
    );
    // Never rendered without its key, nor with a URL as the endpoint.
    assert!(matches!(
        render(
            &base(vec![azure(AzureCredentials::Sas("/s/sas".into()))]),
            &Secrets::default()
        ),
        Err(ConfigError::InvalidRepository { .. })
    ));
    let mut url = azure(AzureCredentials::SharedKey("/s/key".into()));
    if let Storage::Azure(a) = &mut url.storage {
        a.endpoint = Some("https://blob.core.windows.net".into());
    }
    let err = render(&base(vec![url]), &one("k")).unwrap_err();
    assert!(err.to_string().contains("without a scheme"), "{err}");
}

#[test]
fn gcs_takes_a_service_key_path_or_a_token() {
    let text = render(
        &base(vec![gcs(
            Some("gcs.local:4443"),
            GcsCredentials::ServiceKeyFile("/s/gcs-key".into()),
        )]),
        &Secrets::default(),
    )
    .unwrap();
    assert!(
        text.contains("repo1-type=gcs\nrepo1-gcs-bucket=pg-backups\nrepo1-gcs-endpoint=gcs.local:4443\nrepo1-storage-verify-tls=y\nrepo1-storage-ca-file=/s/ca.crt\nrepo1-gcs-key-type=service\nrepo1-gcs-key=/s/gcs-key\nrepo1-path=/db\n"),
        "{text}"
    );
    let text = render(
        &base(vec![gcs(
            None,
            GcsCredentials::TokenFile("/s/token".into()),
        )]),
        &Secrets::from_values(vec![vec![Secret::new("ya29.token")]]),
    )
    .unwrap();
    assert!(
        text.contains("repo1-gcs-key-type=token\nrepo1-gcs-key=ya29.token\n"),
        "{text}"
    );
    assert!(!text.contains("gcs-endpoint"), "pgBackRest's default");
    let text = render(
        &base(vec![gcs(None, GcsCredentials::InstanceRole)]),
        &Secrets::default(),
    )
    .unwrap();
    assert!(text.contains("repo1-gcs-key-type=auto\n") && !text.contains("gcs-key="));
    let err = render(
        &base(vec![gcs(
            Some("https://gcs.local"),
            GcsCredentials::InstanceRole,
        )]),
        &Secrets::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("without a scheme"), "{err}");
}

#[test]
fn a_gcs_service_key_is_checked_before_pgbackrest_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("gcs-key");
    let repo = gcs(None, GcsCredentials::ServiceKeyFile(key.clone()));
    let load = || Secrets::load(std::slice::from_ref(&repo));
    assert!(matches!(load(), Err(ConfigError::ReadSecret { .. })));
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nTopSecret").unwrap();
    let err = load().unwrap_err();
    assert!(err.to_string().contains("is not JSON"), "{err}");
    assert!(!err.to_string().contains("TopSecret"), "{err}");
    std::fs::write(
        &key,
        r#"{"client_email": "b@p.iam", "private_key": "TopSecret"}"#,
    )
    .unwrap();
    let err = load().unwrap_err();
    assert!(err.to_string().contains("has no token_uri"), "{err}");
    assert!(!err.to_string().contains("TopSecret"), "{err}");
    std::fs::write(
        &key,
        r#"{"client_email": "b@p.iam", "private_key": "k", "token_uri": "https://oauth2.googleapis.com/token"}"#,
    )
    .unwrap();
    assert_eq!(load().unwrap(), Secrets::from_values(vec![vec![]]));
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    assert!(matches!(
        render(&base(vec![]), &Secrets::default()),
        Err(ConfigError::NoRepository)
    ));
    let mut bad = base(vec![Repository::posix("/r")]);
    bad.stanza.name = "db/../x".into();
    assert!(matches!(
        render(&bad, &Secrets::default()),
        Err(ConfigError::InvalidStanza(_))
    ));
    let relative = base(vec![Repository::posix("r")]);
    assert!(matches!(
        render(&relative, &Secrets::default()),
        Err(ConfigError::InvalidRepository { repo: 1, .. })
    ));
    let mut scheme = s3(S3Credentials::Environment);
    if let Storage::S3(s) = &mut scheme.storage {
        s.endpoint = "https://minio".into();
    }
    let err = render(&base(vec![scheme]), &Secrets::default()).unwrap_err();
    assert!(err.to_string().contains("without a scheme"), "{err}");
    // A key that could start a new option line is refused.
    let injected = Secrets::from_values(vec![vec![
        Secret::new("a\nrepo1-path=/x"),
        Secret::new("s"),
    ]]);
    assert!(matches!(
        render(&base(vec![s3(file_keys())]), &injected),
        Err(ConfigError::InvalidValue { .. })
    ));
    // Keys that were never loaded are an error, not an empty option.
    assert!(matches!(
        render(&base(vec![s3(file_keys())]), &Secrets::default()),
        Err(ConfigError::InvalidRepository { .. })
    ));
}

#[test]
fn secrets_load_from_files_and_never_show_in_debug() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("id"), "AKID\n").unwrap();
    std::fs::write(dir.path().join("key"), "TopSecret\n").unwrap();
    let repo = s3(S3Credentials::Files {
        access_key_id: dir.path().join("id"),
        secret_access_key: dir.path().join("key"),
    });
    let secrets = Secrets::load(std::slice::from_ref(&repo)).unwrap();
    assert!(!format!("{secrets:?}").contains("TopSecret"));
    let text = render(&base(vec![repo.clone()]), &secrets).unwrap();
    assert!(text.contains("repo1-s3-key-secret=TopSecret\n"));
    std::fs::write(dir.path().join("key"), "\n").unwrap();
    assert!(matches!(
        Secrets::load(std::slice::from_ref(&repo)),
        Err(ConfigError::EmptySecret { .. })
    ));
}

#[test]
fn written_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgbackrest.conf");
    write(&path, "[global]\n", None).unwrap();
    write(&path, "[global]\nx=1\n", None).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "[global]\nx=1\n");
}

#[test]
fn archive_settings_call_pgbackrest_with_config_and_stanza() {
    let inv = Invocation {
        pgbackrest: "/usr/bin/pgbackrest".into(),
        config: "/etc/capstan/pgbackrest.conf".into(),
        stanza: "db".into(),
    };
    assert_eq!(
        inv.archive_command(),
        "/usr/bin/pgbackrest --config=/etc/capstan/pgbackrest.conf --stanza=db archive-push %p"
    );
    assert_eq!(
        inv.restore_command(),
        "/usr/bin/pgbackrest --config=/etc/capstan/pgbackrest.conf --stanza=db archive-get %f \"%p\""
    );
    let params = inv.archive_parameters(Duration::from_secs(300));
    assert_eq!(params[0], ("archive_mode", "on".to_string()));
    assert_eq!(params[2], ("archive_timeout", "300s".to_string()));
    let odd = Invocation {
        pgbackrest: "/opt/my tools/pgbackrest".into(),
        config: "/c/it's.conf".into(),
        stanza: "db".into(),
    };
    assert_eq!(
        odd.archive_command(),
        r"'/opt/my tools/pgbackrest' --config='/c/it'\''s.conf' --stanza=db archive-push %p"
    );
}

#[test]
fn the_tls_server_serves_this_stanza_to_one_client_name() {
    let mut config = base(vec![Repository::posix("/repo")]);
    config.server = Some(TlsServer {
        address: "*".into(),
        port: 8432,
        cert_file: "/tls/pgbackrest/tls.crt".into(),
        key_file: "/tls/pgbackrest/tls.key".into(),
        ca_file: "/tls/pgbackrest/ca.crt".into(),
        client_name: "db-rw".into(),
    });
    let text = render(&config, &Secrets::default()).unwrap();
    let global = text.split("[db]").next().unwrap();
    for line in [
        "tls-server-address=*",
        "tls-server-port=8432",
        "tls-server-cert-file=/tls/pgbackrest/tls.crt",
        "tls-server-key-file=/tls/pgbackrest/tls.key",
        "tls-server-ca-file=/tls/pgbackrest/ca.crt",
        "tls-server-auth=db-rw=db",
    ] {
        assert!(global.contains(&format!("\n{line}\n")), "{line} in {text}");
    }
    // Without it, no server options at all.
    config.server = None;
    let text = render(&config, &Secrets::default()).unwrap();
    assert!(!text.contains("tls-server"), "{text}");
    // A client name that would change what tls-server-auth means.
    config.server = Some(TlsServer {
        client_name: "a=b".into(),
        ..TlsServer {
            address: "*".into(),
            port: 8432,
            cert_file: "/c".into(),
            key_file: "/k".into(),
            ca_file: "/a".into(),
            client_name: String::new(),
        }
    });
    assert!(matches!(
        render(&config, &Secrets::default()),
        Err(ConfigError::InvalidValue { .. })
    ));
}

#[test]
fn a_repository_host_is_reached_over_tls_with_the_client_certificate() {
    let on_host = Repository {
        storage: Storage::Host(crate::backup::repository::RepoHost {
            host: "db-repo-host.ns.svc".into(),
            port: 8432,
        }),
        path: "/var/lib/pgbackrest/repo1".into(),
        retention: Retention::default(),
    };
    let mut config = base(vec![on_host.clone(), s3(file_keys())]);
    // Without a certificate there is no way to reach it.
    let secrets = Secrets::from_values(vec![vec![], vec![Secret::new("A"), Secret::new("B")]]);
    let err = render(&config, &secrets).unwrap_err();
    assert!(err.to_string().contains("client certificate"), "{err}");

    config.client_tls = ClientTls::when_needed(
        &config.repositories,
        Path::new("/etc/capstan/tls/pgbackrest"),
    );
    let text = render(&config, &secrets).unwrap();
    for line in [
        "repo1-host=db-repo-host.ns.svc",
        "repo1-host-type=tls",
        "repo1-host-port=8432",
        "repo1-host-cert-file=/etc/capstan/tls/pgbackrest/tls.crt",
        "repo1-host-key-file=/etc/capstan/tls/pgbackrest/tls.key",
        "repo1-host-ca-file=/etc/capstan/tls/pgbackrest/ca.crt",
        // The host's volume: pgBackRest sends the path to the server.
        "repo1-path=/var/lib/pgbackrest/repo1",
        "repo2-type=s3",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }
    assert!(!text.contains("repo1-type"), "{text}");
    // Object stores alone need no certificate.
    assert_eq!(
        ClientTls::when_needed(&[s3(file_keys())], Path::new("/x")),
        None
    );
    let bad = Repository {
        storage: Storage::Host(crate::backup::repository::RepoHost {
            host: "https://db-repo-host".into(),
            port: 8432,
        }),
        ..on_host
    };
    config.repositories = vec![bad];
    let err = render(&config, &Secrets::from_values(vec![vec![]])).unwrap_err();
    assert!(err.to_string().contains("without a scheme"), "{err}");
}
