//! `capstan`: one binary, several roles (DESIGN §2).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "capstan",
    version,
    about = "PostgreSQL behind PgBouncer on Kubernetes, from declarative specs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller manager against the current kubeconfig or in-cluster config.
    Operator(capstan::operator::Args),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
    /// Print every object the operator would create for the PostgresClusters
    /// in FILE (defaults filled in, secrets redacted), without a cluster.
    Render {
        /// YAML file(s) with PostgresCluster documents.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Image the init containers would use.
        #[arg(long, env = "CAPSTAN_IMAGE", default_value = concat!("ghcr.io/capstan-dev/capstan:", env!("CARGO_PKG_VERSION")))]
        image: String,
    },
    /// Copy this binary to DEST (run by the init container of Capstan's pods,
    /// so stock PostgreSQL and PgBouncer images can run the agents).
    CopyBinary {
        /// Destination path, e.g. /capstan/bin/capstan.
        dest: PathBuf,
    },
    /// PID 1 of pooler pods: supervise PgBouncer and serve the pooler API.
    Pooler(capstan::pooler::Args),
    /// Run the instance manager (PID 1 of PostgreSQL pods).
    Instance(Box<capstan::instance::Args>),
    /// One screen on a cluster: instances, the operation in progress,
    /// poolers, certificates, backups, conditions and recent warnings.
    Status(capstan::cli::status::Args),
    /// Ask for a planned switchover to another instance and wait for it
    /// (sets the capstan.dev/switchover annotation).
    Switchover(capstan::cli::switchover::Args),
    /// Restart a cluster's instances, or one, the way a rolling update
    /// does: replicas one at a time, the primary after a switchover.
    Restart(capstan::cli::restart::Args),
    /// Take a backup now (creates a PostgresBackup) and follow it.
    Backup(capstan::cli::backup::Args),
    /// Run psql on a cluster through a port-forward: a pooler pod by
    /// default, a replica with --replica, the primary with --primary;
    /// TLS verify-full, credentials from the cluster's Secrets.
    Psql(capstan::cli::psql::Args),
    /// Restore one backup into a scratch directory and check it (the one
    /// process of a verification pod); the result goes to the termination
    /// message.
    Verify(capstan::verify::Args),
    /// Check that a PostgreSQL image runs the major a cluster needs (the
    /// one process of an image-check pod); the result goes to the
    /// termination message.
    CheckImage(capstan::image_check::Args),
    /// PID 1 of a cluster's repository host: pgBackRest's TLS server in
    /// front of its volume repositories.
    RepoHost(capstan::repo_host::Args),
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var(capstan::contract::layout::env::LOG_FORMAT).is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Runs a `kubectl capstan` verb; its error is one line for the user.
fn verb(
    run: impl std::future::Future<Output = Result<(), capstan::cli::CliError>>,
) -> Result<(), String> {
    runtime().and_then(|rt| rt.block_on(run).map_err(|e| e.to_string()))
}

/// Parses the command line; installed as `kubectl-capstan`, help and usage
/// errors say `kubectl capstan` as the user typed it.
fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let plugin = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == "kubectl-capstan"))
        .unwrap_or(false);
    let mut command = Cli::command();
    if plugin {
        command = command.bin_name("kubectl capstan");
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    let cli = parse();
    let result = match cli.command {
        Command::Operator(args) => {
            init_tracing();
            runtime().and_then(|rt| {
                rt.block_on(capstan::operator::run(args))
                    .map_err(|e| e.to_string())
            })
        }
        Command::Crd => print_crds(),
        Command::Render { files, image } => render(&files, &image),
        Command::CopyBinary { dest } => copy_binary(&dest),
        Command::Pooler(args) => capstan::pooler::run(args),
        Command::Instance(args) => capstan::instance::run(*args).map_err(|e| e.to_string()),
        Command::Verify(args) => {
            init_tracing();
            capstan::verify::run(args)
        }
        Command::CheckImage(args) => {
            init_tracing();
            capstan::image_check::run(args)
        }
        Command::RepoHost(args) => {
            init_tracing();
            capstan::repo_host::run(args)
        }
        Command::Status(args) => verb(capstan::cli::status::run(args)),
        Command::Switchover(args) => verb(capstan::cli::switchover::run(args)),
        Command::Restart(args) => verb(capstan::cli::restart::run(args)),
        Command::Backup(args) => verb(capstan::cli::backup::run(args)),
        // psql's exit code is the verb's.
        Command::Psql(args) => match runtime().and_then(|rt| {
            rt.block_on(capstan::cli::psql::run(args))
                .map_err(|e| e.to_string())
        }) {
            Ok(code) => return ExitCode::from(code),
            Err(message) => Err(message),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("capstan: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout; a reader that went away (`| head`) ends the output
/// quietly instead of with a panic.
fn emit(text: &str) -> Result<(), String> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(format!("cannot write to stdout: {e}"))
        }
        _ => Ok(()),
    }
}

fn print_crds() -> Result<(), String> {
    for (i, crd) in capstan::api::crd::all().iter().enumerate() {
        if i > 0 {
            emit("---\n")?;
        }
        let text =
            capstan::api::crd::to_yaml(crd).map_err(|e| format!("cannot serialize CRD: {e}"))?;
        emit(&text)?;
    }
    Ok(())
}

fn render(files: &[PathBuf], image: &str) -> Result<(), String> {
    for file in files {
        let text = capstan::render::render_file(file, image).map_err(|e| e.to_string())?;
        emit(&text)?;
    }
    Ok(())
}

fn copy_binary(dest: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let source =
        std::env::current_exe().map_err(|e| format!("cannot locate the capstan binary: {e}"))?;
    // Copy to a temporary name and rename, so a restarted init container
    // never leaves a truncated binary behind for the agent to exec.
    let partial = dest.with_extension("partial");
    std::fs::copy(&source, &partial).map_err(|e| {
        format!(
            "cannot copy {} to {}: {e}",
            source.display(),
            partial.display()
        )
    })?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot make {} executable: {e}", partial.display()))?;
    std::fs::rename(&partial, dest).map_err(|e| {
        format!(
            "cannot move {} to {}: {e}",
            partial.display(),
            dest.display()
        )
    })?;
    Ok(())
}
