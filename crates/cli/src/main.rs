//! The `esgf-events` binary: parses the command line, picks a runtime, reports the outcome.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use esgf_events::config::ServeConfig;
use esgf_events::{Cli, Command};

fn main() -> ExitCode {
    esgf_events::exit_code(run(Cli::parse()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Before any TLS configuration or HTTP client exists, in every mode.
    esgf_events::install_crypto_provider();
    match cli.command {
        Command::Serve(flags) => {
            let config = ServeConfig::load(&flags, std::env::vars_os())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let result = runtime.block_on(esgf_events::serve::serve(config));
            // The log is closed by now; do not hang on a stray blocking task.
            runtime.shutdown_timeout(Duration::from_secs(5));
            result
        }
        // Producers, readers and the in-process server must be able to use both cores.
        Command::Bench(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(esgf_events::bench::run(args)),
        command => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?
            .block_on(esgf_events::run_client(command)),
    }
}
