//! The command line, as clap derives it. Usage errors exit with status 2 (clap's convention).

use clap::{Parser, Subcommand};

use crate::config::ServeFlags;
use crate::consume::ConsumeArgs;
use crate::publish::PublishArgs;
use crate::topic::TopicArgs;

#[derive(Debug, Parser)]
#[command(
    name = "esgf-events",
    version,
    about = "ESGF Event Service: a durable, partitioned event log over HTTP."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeFlags),
    /// Create, list and describe topics.
    Topic(TopicArgs),
    /// Publish events (JSON or NDJSON) from files or stdin.
    Publish(PublishArgs),
    /// Print a topic's events to stdout as NDJSON.
    Consume(ConsumeArgs),
    /// Watch a service from outside: announce unplanned downtime by mail and record incidents on it.
    Monitor(crate::monitor::MonitorArgs),
    /// Access control (operators): producers, consumers, public topics, the audit log.
    Admin(crate::admin::AdminArgs),
    /// Measure the engine, the HTTP API and the disk baseline (see README "Benchmarks").
    Bench(crate::bench::BenchArgs),
    /// Keep a local SQLite index of ESGF datasets in step with a topic; `replicate snapshot` copies one.
    Replicate(esgf_events_replica::cli::ReplicateArgs),
    /// Read a local index: `export` (canonical JSON lines), `query`, `info`.
    Index(esgf_events_replica::cli::IndexArgs),
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn consume_start_options_exclude_each_other() {
        let err =
            Cli::try_parse_from(["esgf-events", "consume", "-t", "x", "--offset", "3", "--from-beginning"])
                .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn server_option_works_before_and_after_the_topic_subcommand() {
        for args in [
            ["esgf-events", "topic", "--server", "http://h:1", "list"],
            ["esgf-events", "topic", "list", "--server", "http://h:1"],
        ] {
            let Command::Topic(topic) = Cli::try_parse_from(args).unwrap().command else { panic!() };
            assert_eq!(topic.server.server, "http://h:1");
        }
    }

    #[test]
    fn monitor_flags_parse_with_short_durations() {
        let cli = Cli::try_parse_from([
            "esgf-events",
            "monitor",
            "--target",
            "http://127.0.0.1:8080",
            "--threshold",
            "2s",
            "--interval",
            "200ms",
            "--announce-to",
            "a@example.org,b@example.org",
        ])
        .unwrap();
        let Command::Monitor(args) = cli.command else { panic!() };
        assert_eq!(args.threshold, std::time::Duration::from_secs(2));
        assert_eq!(args.interval, std::time::Duration::from_millis(200));
        assert_eq!(args.announce_to, ["a@example.org", "b@example.org"]);
        let defaults = Cli::try_parse_from(["esgf-events", "monitor", "--target", "http://h"]).unwrap();
        let Command::Monitor(args) = defaults.command else { panic!() };
        assert_eq!((args.threshold.as_secs(), args.interval.as_secs()), (600, 30));
    }

    #[test]
    fn serve_flags_parse() {
        let cli = Cli::try_parse_from([
            "esgf-events",
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
            "/tmp/d",
            "--durability",
            "relaxed",
        ])
        .unwrap();
        let Command::Serve(flags) = cli.command else { panic!() };
        assert_eq!(flags.http_addr.unwrap().port(), 0);
        assert_eq!(flags.durability, Some(crate::config::DurabilityMode::Relaxed));
        assert!(Cli::try_parse_from(["esgf-events", "serve", "--durability", "maybe"]).is_err());
    }
}
