//! The `replicate` and `index` commands of `esgf-events`: their flags (clap) and what they do.
//!
//! - `replicate --server URL --topic T --index FILE [--from-snapshot SNAP] [--exit-when-caught-up]` follows a
//!   topic into an index, resuming from the offsets stored in it.
//! - `replicate snapshot --index FILE --out SNAP` writes a consistent copy with the offsets it reflects.
//! - `index export --index FILE` prints every item as canonical JSON lines in id order;
//!   `index query --index FILE [--id ID] [facet=value ...]` prints the matching ones; `index info` the state.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::facets::Condition;
use crate::follow::{FollowError, FollowOptions, follow};
use crate::index::{Bootstrapped, ErrorPolicy, Index, IndexError, bootstrap, snapshot};
use crate::source::{Source, SourceError, SourceOptions, read_ca_file};

const MAX_TOKEN_FILE_BYTES: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Follow(#[from] Box<FollowError>),
    #[error(transparent)]
    Source(#[from] Box<SourceError>),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

impl From<FollowError> for ReplicaError {
    fn from(error: FollowError) -> Self {
        ReplicaError::Follow(Box::new(error))
    }
}

impl From<SourceError> for ReplicaError {
    fn from(error: SourceError) -> Self {
        ReplicaError::Source(Box::new(error))
    }
}

/// `esgf-events replicate`: follow a topic into a local index, or (`replicate snapshot`) copy an index.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ReplicateArgs {
    #[command(subcommand)]
    pub command: Option<ReplicateCommand>,
    #[command(flatten)]
    pub follow: FollowArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ReplicateCommand {
    /// Write a consistent copy of an index, with the offsets it reflects, to bootstrap another replica from.
    Snapshot(SnapshotArgs),
}

#[derive(Debug, Clone, Args)]
pub struct FollowArgs {
    /// Base URL of the esgf-events server.
    #[arg(long, value_name = "URL", env = "ESGF_EVENTS_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Bearer token (needs read access to the topic, and publish access to `<topic>.errors` for error
    /// reports) [env: ESGF_EVENTS_TOKEN]. Other users can see a command line: prefer --token-file.
    #[arg(long, value_name = "TOKEN", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// File holding the bearer token [env: ESGF_EVENTS_TOKEN_FILE].
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the certificate authority to trust for an https:// server, instead of the system's roots.
    #[arg(long, value_name = "FILE", env = "ESGF_EVENTS_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Topic to follow.
    #[arg(long, short, required = true)]
    pub topic: Option<String>,
    /// The index file (SQLite); created if missing.
    #[arg(long, value_name = "FILE", required = true)]
    pub index: Option<PathBuf>,
    /// Make the index from this snapshot first, then follow from exactly its offsets. An existing index must
    /// have been made from the same snapshot (a restart), or the command refuses.
    #[arg(long, value_name = "SNAP")]
    pub from_snapshot: Option<PathBuf>,
    /// Stop once every partition reached the end it had when the command started.
    #[arg(long)]
    pub exit_when_caught_up: bool,
    /// Follow only up to the offsets another index reflects (a snapshot of another replica), then stop: the
    /// two then export identical bytes if they agree.
    #[arg(long, value_name = "SNAP", conflicts_with = "exit_when_caught_up")]
    pub until_offsets_of: Option<PathBuf>,
    /// Stop at the first event that cannot be applied (after reporting it) instead of skipping it.
    #[arg(long)]
    pub stop_on_error: bool,
    /// File holding the token error reports are published to `<topic>.errors` with [default: the reading
    /// token]. A consumer token may not publish: give a producer token granted `<topic>.errors`.
    #[arg(long, value_name = "FILE")]
    pub errors_token_file: Option<PathBuf>,
    /// Events per read.
    #[arg(long, default_value_t = 1000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub fetch_size: u32,
    /// Seconds one long-poll waits on the server.
    #[arg(long, default_value_t = 20, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=30))]
    pub wait: u64,
}

#[derive(Debug, Clone, Args)]
pub struct SnapshotArgs {
    /// The index to copy (it may be in use by a running replica).
    #[arg(long, value_name = "FILE")]
    pub index: PathBuf,
    /// Where to write the snapshot; must not exist.
    #[arg(long, value_name = "SNAP")]
    pub out: PathBuf,
}

/// `esgf-events index`: read a local index.
#[derive(Debug, Clone, Args)]
pub struct IndexArgs {
    #[command(subcommand)]
    pub command: IndexCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum IndexCommand {
    /// Print every item as canonical JSON lines (sorted keys, no whitespace) in id order, so two replicas can
    /// be compared byte for byte.
    Export(ExportArgs),
    /// Print the items matching an id and facet conditions (collection, institution, source, experiment,
    /// variable, version, retracted, latest), as JSON lines in id order.
    Query(QueryArgs),
    /// Print the index's topic, item count, offsets and lineage as JSON.
    Info(InfoArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The index file (or a snapshot).
    #[arg(long, value_name = "FILE")]
    pub index: PathBuf,
    /// Write to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct QueryArgs {
    /// The index file (or a snapshot).
    #[arg(long, value_name = "FILE")]
    pub index: PathBuf,
    /// Only the item with this id.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Print at most N items.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Conditions, all of which must hold, e.g. `institution=IPSL variable=tas retracted=false`.
    #[arg(value_name = "FACET=VALUE")]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Args)]
pub struct InfoArgs {
    /// The index file (or a snapshot).
    #[arg(long, value_name = "FILE")]
    pub index: PathBuf,
}

/// Runs `replicate` (following until caught up, interrupted, or failed) or `replicate snapshot`.
pub async fn run_replicate(args: ReplicateArgs) -> Result<(), ReplicaError> {
    match args.command {
        Some(ReplicateCommand::Snapshot(args)) => run_snapshot(&args),
        None => run_follow(args.follow).await,
    }
}

fn run_snapshot(args: &SnapshotArgs) -> Result<(), ReplicaError> {
    let info = snapshot(&args.index, &args.out)?;
    let offsets: Vec<_> = info
        .offsets
        .iter()
        .map(|(partition, next)| serde_json::json!({"partition": partition, "next_offset": next}))
        .collect();
    let summary = serde_json::json!({
        "snapshot": args.out.display().to_string(),
        "snapshot_id": info.snapshot_id,
        "topic": info.topic,
        "items": info.items,
        "offsets": offsets,
    });
    print_line(&summary.to_string())
}

async fn run_follow(args: FollowArgs) -> Result<(), ReplicaError> {
    init_logging();
    let (Some(topic), Some(index_path)) = (args.topic.clone(), args.index.clone()) else {
        return Err(ReplicaError::Usage("--topic and --index are required".into()));
    };
    let token = resolve_token(&args)?;
    let ca_cert = args.ca_cert.as_deref().map(read_ca_file).transpose()?;
    let source = Source::new(&args.server, SourceOptions { token, ca_cert: ca_cert.clone() })?;
    let report_source = match &args.errors_token_file {
        Some(path) => {
            let token = Some(checked_token(read_token_file(path)?)?);
            Some(Source::new(&args.server, SourceOptions { token, ca_cert })?)
        }
        None => None,
    };
    let stop_at = match &args.until_offsets_of {
        Some(other) => {
            let other = Index::open_read_only(other)?;
            if let Some(indexed) = other.topic().filter(|indexed| *indexed != topic) {
                return Err(
                    IndexError::TopicMismatch { indexed: indexed.to_owned(), requested: topic }.into()
                );
            }
            Some(other.offsets()?)
        }
        None => None,
    };

    if let Some(snapshot) = &args.from_snapshot {
        match bootstrap(snapshot, &index_path, &topic)? {
            Bootstrapped::Created { snapshot_id } => tracing::info!(
                index = %index_path.display(), snapshot = %snapshot.display(), snapshot_id, "index made from the snapshot"
            ),
            Bootstrapped::Resumed { snapshot_id } => tracing::info!(
                index = %index_path.display(), snapshot_id, "index was made from this snapshot before; resuming"
            ),
        }
    }
    let index = Index::open_or_create(&index_path)?;
    let options = FollowOptions {
        policy: if args.stop_on_error { ErrorPolicy::Stop } else { ErrorPolicy::Continue },
        exit_when_caught_up: args.exit_when_caught_up,
        stop_at,
        report_source,
        fetch_size: args.fetch_size,
        wait: Duration::from_secs(args.wait),
        ..FollowOptions::new(topic)
    };
    follow(index, source, options, shutdown_signal()).await?;
    Ok(())
}

/// Runs an `index` subcommand.
pub fn run_index(args: IndexArgs) -> Result<(), ReplicaError> {
    match args.command {
        IndexCommand::Export(args) => {
            let index = Index::open_read_only(&args.index)?;
            match &args.out {
                Some(path) => {
                    let context = || format!("writing {}", path.display());
                    let io = |source| ReplicaError::Io { context: context(), source };
                    let file = std::fs::File::create(path).map_err(io)?;
                    let mut out = BufWriter::new(file);
                    index.export(&mut out)?;
                    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
                    file.sync_all().map_err(io)?;
                    Ok(())
                }
                None => to_stdout(|out| index.export(out).map(drop)),
            }
        }
        IndexCommand::Query(args) => {
            let index = Index::open_read_only(&args.index)?;
            to_stdout(|out| {
                index
                    .query(args.id.as_deref(), &args.conditions, args.limit, &mut |item| {
                        out.write_all(item.as_bytes())?;
                        out.write_all(b"\n")
                    })
                    .map(drop)
            })
        }
        IndexCommand::Info(args) => {
            let info = Index::open_read_only(&args.index)?.info()?;
            let text = serde_json::to_string_pretty(&info).map_err(|e| ReplicaError::Usage(e.to_string()))?;
            print_line(&text)
        }
    }
}

/// Runs `write` on a buffered stdout; a reader that stops reading (`| head`) is not a failure.
fn to_stdout(write: impl FnOnce(&mut dyn Write) -> Result<(), IndexError>) -> Result<(), ReplicaError> {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = write(&mut out).map_err(ReplicaError::from).and_then(|()| {
        out.flush().map_err(|source| ReplicaError::Io { context: "writing to stdout".into(), source })
    });
    match result {
        Err(error) if is_broken_pipe(&error) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(error: &ReplicaError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) {
            return true;
        }
        source = current.source();
    }
    false
}

fn print_line(text: &str) -> Result<(), ReplicaError> {
    to_stdout(|out| {
        writeln!(out, "{text}").map_err(|source| IndexError::Io { path: PathBuf::from("stdout"), source })
    })
}

/// The token from `--token`, `--token-file`, `ESGF_EVENTS_TOKEN` or `ESGF_EVENTS_TOKEN_FILE`, in that order.
fn resolve_token(args: &FollowArgs) -> Result<Option<String>, ReplicaError> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let token = if let Some(token) = &args.token {
        Some(token.clone())
    } else if let Some(path) = &args.token_file {
        Some(read_token_file(path)?)
    } else if let Some(token) = env("ESGF_EVENTS_TOKEN") {
        Some(token)
    } else if let Some(path) = env("ESGF_EVENTS_TOKEN_FILE") {
        Some(read_token_file(Path::new(&path))?)
    } else {
        None
    };
    token.map(checked_token).transpose()
}

/// `token` if it can travel in an HTTP header; the error never quotes it.
fn checked_token(token: String) -> Result<String, ReplicaError> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ReplicaError::Usage(
            "a token is empty or holds spaces, control or non-ASCII characters".into(),
        ));
    }
    Ok(token)
}

fn read_token_file(path: &Path) -> Result<String, ReplicaError> {
    use std::io::Read;
    let io =
        |source| ReplicaError::Io { context: format!("reading the token file {}", path.display()), source };
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(ReplicaError::Usage(format!("the token file {} is too large", path.display())));
    }
    Ok(text.trim().to_owned())
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); plain text unless stderr is a terminal.
fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    // Another subscriber installed first (a test, an embedding program) keeps priority.
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr).with_ansi(ansi).try_init();
}

/// Completes on Ctrl-C or SIGTERM. The page being applied is committed (or not) atomically either way; this
/// only lets a stop deliver pending reports and log where the index stands.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Top,
    }

    #[derive(Debug, Subcommand)]
    enum Top {
        Replicate(ReplicateArgs),
        Index(IndexArgs),
    }

    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn follow_needs_topic_and_index_but_snapshot_does_not() {
        assert!(Cli::try_parse_from(["x", "replicate", "--topic", "t"]).is_err());
        let cli = Cli::try_parse_from([
            "x",
            "replicate",
            "--topic",
            "t",
            "--index",
            "i.db",
            "--exit-when-caught-up",
        ])
        .unwrap();
        let Top::Replicate(args) = cli.command else { panic!() };
        assert!(args.command.is_none());
        assert!(args.follow.exit_when_caught_up);
        let cli =
            Cli::try_parse_from(["x", "replicate", "snapshot", "--index", "i.db", "--out", "s.db"]).unwrap();
        let Top::Replicate(ReplicateArgs { command: Some(ReplicateCommand::Snapshot(args)), .. }) =
            cli.command
        else {
            panic!()
        };
        assert_eq!(args.out, PathBuf::from("s.db"));
    }

    #[test]
    fn query_conditions_are_checked_while_parsing() {
        let cli =
            Cli::try_parse_from(["x", "index", "query", "--index", "i", "institution=IPSL", "latest=true"])
                .unwrap();
        let Top::Index(IndexArgs { command: IndexCommand::Query(args) }) = cli.command else { panic!() };
        assert_eq!(args.conditions.len(), 2);
        assert!(Cli::try_parse_from(["x", "index", "query", "--index", "i", "colour=red"]).is_err());
    }

    #[test]
    fn fetch_size_is_bounded_by_the_server_limit() {
        let parse =
            |n: &str| Cli::try_parse_from(["x", "replicate", "-t", "t", "--index", "i", "--fetch-size", n]);
        assert!(parse("1000").is_ok());
        assert!(parse("1001").is_err());
        assert!(parse("0").is_err());
    }
}
