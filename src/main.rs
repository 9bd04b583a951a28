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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Crd => print_crds(),
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
