use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

use asg_batch::simulate::{self, Output, Policy, Workload};

/// mimalloc instead of glibc's malloc for every command (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Allow a non-loopback listen address (the server has no TLS, and no
        /// authentication without --token-auth-file).
        #[arg(long)]
        allow_remote: bool,
        /// Bearer tokens, kube-apiserver's `--token-auth-file` CSV
        /// (`token,user,uid,"group1,group2"`): requests with one act as its user (checked by
        /// ValidatingAdmissionPolicies); an unknown token is 401; none is the loopback admin.
        #[arg(long)]
        token_auth_file: Option<std::path::PathBuf>,
    },
    /// Run the controller (against the kubeconfig or in-cluster configuration).
    Controller(asg_batch::controller::cli::ControllerArgs),
    /// Run a node agent on a worker instance.
    Agent(Box<asg_batch::agent::cli::AgentArgs>),
    /// Print an EKS bearer token made from this machine's AWS credentials (the instance
    /// profile) as an ExecCredential, for a kubeconfig `exec:` entry (as `aws eks get-token`).
    EksToken(asg_batch::kubeauth::EksTokenArgs),
    /// Print (`-f`: follow) the whole output of a BatchJob's attempt, served by the node
    /// agent that ran it.
    Logs(asg_batch::logs::LogsArgs),
    /// Cancel BatchJobs: not yet started ones never start, running ones are stopped
    /// (sets `spec.cancel`).
    Cancel(asg_batch::cancel::CancelArgs),
    /// Run the embedded default: API server, controller and a local fleet, with the
    /// demo jobs applied and their progress shown.
    Dev(asg_batch::dev::DevArgs),
    /// Replay a workload through the scheduler and a simulated fleet; print cost and
    /// makespan beside the seed's ways.
    Simulate {
        /// Workload YAML (format: manifests/examples/workloads/README.md).
        #[arg(long)]
        workload: PathBuf,
        /// One policy; all of them side by side when omitted.
        #[arg(long, value_enum)]
        policy: Option<Policy>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

fn main() -> ExitCode {
    // The process executor starts a shim per attempt: it is dispatched first, before the
    // whole command line (every subcommand's arguments) is built, and it sets up no
    // logging and no async runtime.
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == "shim") {
        return asg_batch::agent::executor::shim::cli_main(std::env::args_os().skip(1));
    }
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
            token_auth_file,
        } => run_apiserver(listen, kubeconfig, data_dir, allow_remote, token_auth_file),
        Command::Controller(args) => {
            run_async("controller", "info", asg_batch::controller::cli::main(args))
        }
        Command::Agent(args) => run_async("agent", "info", asg_batch::agent::cli::main(*args)),
        Command::EksToken(args) => run_async(
            "eks-token",
            "warn",
            asg_batch::kubeauth::eks_token_main(args),
        ),
        Command::Dev(args) => run_async("dev", "warn", asg_batch::dev::main(args)),
        Command::Cancel(args) => run_async("cancel", "warn", asg_batch::cancel::main(args)),
        Command::Logs(args) => run_async("logs", "warn", asg_batch::logs::main(args)),
        Command::Simulate {
            workload,
            policy,
            output,
        } => run_simulate(&workload, policy, output),
    }
}

/// Installs the log subscriber on stderr: RUST_LOG, else `default`.
fn init_tracing(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Runs a long-lived subcommand on a multi-threaded runtime (logs: RUST_LOG, else
/// `log_filter`); exit 1 with its error.
fn run_async<E: std::fmt::Display>(
    what: &str,
    log_filter: &str,
    main: impl std::future::Future<Output = Result<(), E>>,
) -> ExitCode {
    init_tracing(log_filter);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("asg-batch {what}: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("asg-batch {what}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_apiserver(
    listen: std::net::SocketAddr,
    kubeconfig: std::path::PathBuf,
    data_dir: Option<std::path::PathBuf>,
    allow_remote: bool,
    token_auth_file: Option<std::path::PathBuf>,
) -> ExitCode {
    init_tracing("info");
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("asg-batch apiserver: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(asg_batch_apiserver::run_cli(
        listen,
        &kubeconfig,
        data_dir,
        allow_remote,
        token_auth_file.as_deref(),
    ));
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("asg-batch apiserver: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_simulate(path: &std::path::Path, policy: Option<Policy>, output: Output) -> ExitCode {
    let workload = match Workload::from_file(path) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("asg-batch simulate: {e}");
            return ExitCode::from(2);
        }
    };
    let policies = policy.map_or(Policy::ALL.to_vec(), |p| vec![p]);
    let reports: Vec<_> = policies
        .into_iter()
        .map(|p| simulate::run(&workload, p))
        .collect();
    match output {
        Output::Table => print!("{}", simulate::table(&workload, &reports)),
        Output::Json => match simulate::json(&reports) {
            Ok(text) => println!("{text}"),
            Err(e) => {
                eprintln!("asg-batch simulate: cannot render JSON: {e}");
                return ExitCode::FAILURE;
            }
        },
    }
    ExitCode::SUCCESS
}
