//! The `keygate` binary: parse the command line, hand it to the library, report errors.

use std::process::ExitCode;

use clap::Parser;
use keygate::cli::{self, Cli};
use keygate::config::LogFormat;
use tracing_subscriber::EnvFilter;

// Opt-in (`--features mimalloc`): about 5% more requests per second on one worker, but
// ~14 MB more idle RSS than glibc malloc, which misses the sidecar's 20 MB idle budget
// (figures in bench/RESULTS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, cli::Command::Serve | cli::Command::Demo) {
        keygate::server::restart_without_tcache();
    }
    let mut builder = match cli::workers(&cli) {
        // One worker: a current-thread runtime, no work-stealing machinery at all.
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::execute(cli, init_logging)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code();
            eprintln!("error: {}", cli::report(&e));
            ExitCode::from(code)
        }
    }
}

/// Logs go to stderr, so stdout stays clean JSON for `keys` commands. `KEYGATE_LOG`
/// (e.g. `debug`, `keygate=trace`) overrides the configured level.
fn init_logging(format: LogFormat, level: &str) {
    let filter = std::env::var("KEYGATE_LOG")
        .ok()
        .and_then(|l| EnvFilter::try_new(l).ok())
        .unwrap_or_else(|| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}
