//! `esgf-events topic create|list|describe`: topic administration over the HTTP API.

use crate::client::{CreateTopic, PartitionOffsets, ServerArgs, TopicDescription};
use crate::output::{Output, table};

#[derive(Debug, Clone, clap::Args)]
pub struct TopicArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(subcommand)]
    pub command: TopicCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create(CreateArgs),
    /// List topics.
    List(ListArgs),
    /// Show a topic's settings and per-partition offsets.
    Describe(DescribeArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct CreateArgs {
    /// Topic name: 1 to 249 of [A-Za-z0-9._-].
    pub name: String,
    /// Number of partitions (1 to 1024); events with the same key always land in the same one.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub partitions: u32,
    /// How long events are kept, e.g. "90d" or "forever" [default: the server's default_retention].
    #[arg(long, value_name = "DURATION")]
    pub retention: Option<String>,
    /// Per-partition size limit in bytes; the oldest segments are deleted past it.
    #[arg(long, value_name = "BYTES")]
    pub retention_bytes: Option<u64>,
    /// Print the server's JSON response instead of a summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Print the server's JSON response instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DescribeArgs {
    pub name: String,
    /// Print the server's JSON response instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: TopicArgs) -> anyhow::Result<()> {
    let client = args.server.client()?;
    let mut out = Output::stdout();
    match args.command {
        TopicCommand::Create(create) => {
            let request = CreateTopic {
                name: create.name,
                partitions: create.partitions,
                retention: create.retention,
                retention_bytes: create.retention_bytes,
            };
            let created = client.create_topic(&request).await?;
            if create.json {
                out.line(&created.raw)?;
            } else {
                let t = &created.value;
                out.line(format!(
                    "created topic {} ({} partition{}, retention {}{})",
                    t.name,
                    t.partitions,
                    if t.partitions == 1 { "" } else { "s" },
                    t.retention,
                    t.retention_bytes
                        .map(|b| format!(", at most {b} bytes per partition"))
                        .unwrap_or_default(),
                ))?;
            }
        }
        TopicCommand::List(list) => {
            let topics = client.list_topics().await?;
            if list.json {
                out.line(&topics.raw)?;
            } else {
                for line in list_table(&topics.value.topics) {
                    out.line(line)?;
                }
            }
        }
        TopicCommand::Describe(describe) => {
            let topic = client.describe_topic(&describe.name).await?;
            if describe.json {
                out.line(&topic.raw)?;
            } else {
                for line in describe_lines(&topic.value) {
                    out.line(line)?;
                }
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn retained(offsets: &[PartitionOffsets]) -> u64 {
    offsets.iter().map(|o| o.latest.saturating_sub(o.earliest)).sum()
}

fn bytes_limit(limit: Option<u64>) -> String {
    limit.map_or_else(|| "none".to_owned(), |b| b.to_string())
}

fn list_table(topics: &[TopicDescription]) -> Vec<String> {
    let rows: Vec<Vec<String>> = topics
        .iter()
        .map(|t| {
            vec![
                t.name.clone(),
                t.partitions.to_string(),
                t.retention.clone(),
                bytes_limit(t.retention_bytes),
                retained(&t.offsets).to_string(),
                t.created.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["NAME", "PARTITIONS", "RETENTION", "RETENTION_BYTES", "EVENTS", "CREATED"], &rows)
}

fn describe_lines(t: &TopicDescription) -> Vec<String> {
    let mut lines = vec![
        format!("name:             {}", t.name),
        format!("partitions:       {}", t.partitions),
        format!("retention:        {}", t.retention),
        format!("retention bytes:  {}", bytes_limit(t.retention_bytes)),
        format!("created:          {}", t.created.as_deref().unwrap_or("unknown")),
        format!("retained events:  {}", retained(&t.offsets)),
    ];
    if let Some(public) = t.public {
        lines.push(format!(
            "public:           {}",
            if public { "yes (anyone may read it without a token)" } else { "no" }
        ));
    }
    lines.push(String::new());
    let rows: Vec<Vec<String>> = t
        .offsets
        .iter()
        .map(|o| {
            vec![
                o.partition.to_string(),
                o.earliest.to_string(),
                o.latest.to_string(),
                o.latest.saturating_sub(o.earliest).to_string(),
            ]
        })
        .collect();
    lines.extend(table(&["PARTITION", "EARLIEST", "LATEST", "EVENTS"], &rows));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic() -> TopicDescription {
        serde_json::from_str(
            r#"{"name":"esgf2.publications","partitions":2,"retention":"90d","retention_bytes":null,
                "created":"2026-11-27T10:00:00.000Z",
                "offsets":[{"partition":0,"earliest":0,"latest":5},{"partition":1,"earliest":3,"latest":10}],
                "public":false}"#,
        )
        .unwrap()
    }

    #[test]
    fn describe_shows_settings_and_offsets_per_partition() {
        let lines = describe_lines(&topic());
        assert!(lines.contains(&"retained events:  12".to_owned()), "{lines:#?}");
        assert!(lines.contains(&"retention bytes:  none".to_owned()), "{lines:#?}");
        assert!(lines.contains(&"public:           no".to_owned()), "{lines:#?}");
        let tail: Vec<_> = lines.iter().rev().take(3).rev().cloned().collect();
        assert_eq!(
            tail,
            vec![
                "PARTITION  EARLIEST  LATEST  EVENTS",
                "0          0         5       5",
                "1          3         10      7",
            ]
        );
    }

    #[test]
    fn list_has_one_row_per_topic() {
        let lines = list_table(&[topic()]);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME"));
        assert!(lines[1].starts_with("esgf2.publications  2"), "{}", lines[1]);
        assert!(lines[1].contains(" 12 "), "{}", lines[1]);
    }
}
