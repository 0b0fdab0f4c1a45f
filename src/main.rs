use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// asg-batch: a self-hosted AWS Batch on EC2 Auto Scaling Groups.
#[derive(Parser)]
#[command(name = "asg-batch", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition as multi-document YAML.
    Crds,
    /// Run the embedded Kubernetes API server.
    Apiserver {
        /// Address to listen on (loopback unless --allow-remote).
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: std::net::SocketAddr,
        /// Write a kubeconfig for this server here.
        #[arg(long, default_value = "kubeconfig")]
        kubeconfig: std::path::PathBuf,
        /// Persist objects in this directory (in memory otherwise).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Allow a non-loopback listen address (the server has no authentication).
        #[arg(long)]
        allow_remote: bool,
    },
    /// Run the controller.
    Controller,
    /// Run a node agent.
    Agent,
    /// Run the embedded default: API server, controller and a local fleet.
    Dev,
}

fn not_built(what: &str, issue: &str) -> ExitCode {
    eprintln!("asg-batch {what}: not built yet ({issue})");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => match asg_batch::api::crds::all_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("asg-batch crds: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Apiserver {
            listen,
            kubeconfig,
            data_dir,
            allow_remote,
        } => run_apiserver(listen, kubeconfig, data_dir, allow_remote),
        Command::Controller => not_built("controller", "controller issue"),
        Command::Agent => not_built("agent", "node agent issue"),
        Command::Dev => not_built("dev", "embedded default issue"),
    }
}

fn run_apiserver(
    listen: std::net::SocketAddr,
    kubeconfig: std::path::PathBuf,
    data_dir: Option<std::path::PathBuf>,
    allow_remote: bool,
) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("asg-batch apiserver: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(asg_batch::apiserver::run_cli(
        listen,
        &kubeconfig,
        data_dir,
        allow_remote,
    ));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("asg-batch apiserver: {e}");
            ExitCode::from(2)
        }
    }
}
