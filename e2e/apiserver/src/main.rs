//! `capstan-e2e-apiserver`: run the emulated API server by hand, for
//! debugging the harness with kubectl.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use capstan_e2e_apiserver::{ApiServer, Config};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Emulated Kubernetes API server (Capstan e2e test infrastructure)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:24443")]
    bind: SocketAddr,
    /// CRD manifests (files or directories) to install at startup.
    #[arg(long = "crds")]
    crd_paths: Vec<PathBuf>,
    /// Where to write a kubeconfig for this server.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Bind pods without spec.nodeName to this node.
    #[arg(long)]
    node_name: Option<String>,
    /// Extra IP address for the serving certificate.
    #[arg(long = "extra-ip")]
    extra_ips: Vec<IpAddr>,
    /// End watches after this many seconds.
    #[arg(long)]
    watch_timeout_cap: Option<u64>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config = Config {
        bind: args.bind,
        crd_paths: args.crd_paths,
        node_name: args.node_name,
        extra_ips: args.extra_ips,
        watch_timeout_cap: args.watch_timeout_cap.map(Duration::from_secs),
        ..Config::default()
    };
    let server = match ApiServer::start(config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("capstan-e2e-apiserver: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("listening on {}", server.url());
    if let Some(path) = &args.kubeconfig {
        if let Err(e) = server.write_kubeconfig(path) {
            eprintln!(
                "capstan-e2e-apiserver: cannot write {}: {e}",
                path.display()
            );
            return std::process::ExitCode::FAILURE;
        }
        println!("kubeconfig written to {}", path.display());
    }
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("capstan-e2e-apiserver: cannot wait for Ctrl-C: {e}");
    }
    server.shutdown().await;
    std::process::ExitCode::SUCCESS
}
