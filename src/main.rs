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
    Apiserver,
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
        Command::Apiserver => not_built("apiserver", "embedded API server issue"),
        Command::Controller => not_built("controller", "controller issue"),
        Command::Agent => not_built("agent", "node agent issue"),
        Command::Dev => not_built("dev", "embedded default issue"),
    }
}
