//! `capstan`: one binary, several roles (DESIGN §2).

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
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
    /// Copy this binary to DEST (run by the init container of Capstan's pods,
    /// so stock PostgreSQL and PgBouncer images can run the agents).
    CopyBinary {
        /// Destination path, e.g. /capstan/bin/capstan.
        dest: std::path::PathBuf,
    },
    /// Run the instance manager (PID 1 of PostgreSQL pods).
    Instance(Box<capstan::instance::Args>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => print_crds(),
        Command::CopyBinary { dest } => copy_binary(&dest),
        Command::Instance(args) => capstan::instance::run(*args).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("capstan: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_crds() -> Result<(), String> {
    for (i, crd) in capstan::api::crd::all().iter().enumerate() {
        if i > 0 {
            println!("---");
        }
        let text =
            capstan::api::crd::to_yaml(crd).map_err(|e| format!("cannot serialize CRD: {e}"))?;
        print!("{text}");
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
