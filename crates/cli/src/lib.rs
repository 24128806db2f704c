//! The `esgf-events` command: the ESGF Event Service server (`serve`) and its command-line clients (`topic`,
//! `publish`, `consume`, `admin`).
//!
//! The binary only parses the command line and picks a runtime; everything else lives here so that it can be
//! tested and reused: [`config`] (the server's one typed configuration), [`serve`] (start-up and shutdown),
//! [`client`] (the HTTP API client) and one module per client command.

pub mod admin;
pub mod admin_ops;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod consume;
pub mod monitor;
pub mod output;
pub mod publish;
pub mod serve;
pub mod topic;

use std::process::ExitCode;

pub use cli::{Cli, Command};

/// Makes ring the process's rustls crypto provider; call before building any TLS configuration or HTTP client.
///
/// rustls picks a provider by itself only when exactly one is compiled in, and dependencies can bring in both
/// ring and aws-lc-rs, so the choice is made here, explicitly, once. Idempotent; if some other provider was
/// installed first, that one stays.
pub fn install_crypto_provider() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Runs a client command (anything but `serve`) to completion.
pub async fn run_client(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) | Command::Bench(_) => anyhow::bail!("not a client command"),
        Command::Topic(args) => topic::run(args).await,
        Command::Publish(args) => publish::run(args).await,
        Command::Consume(args) => consume::run(args).await,
        Command::Monitor(args) => monitor::run(args).await,
        Command::Admin(args) => admin::run(args).await,
        Command::Replicate(args) => Ok(esgf_events_replica::cli::run_replicate(args).await?),
        Command::Index(args) => Ok(esgf_events_replica::cli::run_index(args)?),
    }
}

/// The process's exit status for `result`, after telling the user about a failure.
///
/// A closed stdout (`... | head`) is success: the reader stopped reading, nothing went wrong.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if output::is_closed_stdout(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
