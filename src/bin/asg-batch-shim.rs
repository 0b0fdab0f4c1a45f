//! `asg-batch-shim`: the process executor's per-attempt supervisor
//! ([`asg_batch::agent::executor::shim`]) as a binary of its own. The agent starts one per
//! attempt; linked with only the shim's code, it starts in a fraction of the time the whole
//! `asg-batch` binary (`asg-batch shim`, the fallback) takes.

fn main() -> std::process::ExitCode {
    asg_batch::agent::executor::shim::cli_main(std::env::args_os())
}
