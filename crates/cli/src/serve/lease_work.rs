//! Single-owner work on a node among several: this node's identity, its entry in the node registry, and
//! running a background loop only while this node holds the loop's lease ([`esgf_events_meta::lease`]).
//!
//! Alone (the embedded backend, or one node on NATS) the node takes every lease at start-up, so nothing
//! changes for a single machine except that the loops start once their lease is written (milliseconds).

use std::future::Future;
use std::net::SocketAddr;

use tokio::sync::watch;
use tracing::{info, warn};

/// Lease names (the contract in `esgf_events_meta::lease`).
pub(super) const WEBHOOKS: &str = "webhooks";
pub(super) const MAIL: &str = "mail";
pub(super) const RETENTION: &str = "retention";
pub(super) const LIFECYCLE: &str = "lifecycle";
pub(super) const ANNOUNCER: &str = "announcer";

/// `<hostname>-<6 random hex digits>`: unique per start, recognisable in logs and `GET /v1/cluster`.
pub(super) fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    node_id_from(&host, fastrand::u32(..) & 0x00ff_ffff)
}

fn node_id_from(host: &str, random: u32) -> String {
    // The id is a key in the state store: keep the characters it allows (see `config::check_node_id`).
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(40)
        .collect();
    let host = if host.is_empty() { "node".to_owned() } else { host };
    format!("{host}-{random:06x}")
}

/// The URL other nodes and operators reach this node's HTTP API at. A wildcard bind address says nothing about
/// where the node is, so the host name stands in for it.
pub(super) fn http_url(bound: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    if bound.ip().is_unspecified() {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_owned());
        if let Some(host) = host.filter(|h| !h.is_empty()) {
            return format!("{scheme}://{host}:{}", bound.port());
        }
    }
    format!("{scheme}://{bound}")
}

/// Runs `work` while `held` is true: started each time this node acquires the lease, and told to stop (through
/// the receiver `work` is given) as soon as the lease is lost or `stop` turns true. Returns once `stop` is true
/// (or the lease task is gone) and the current run has ended.
pub(super) async fn while_held<F, Fut>(
    lease: &'static str,
    mut held: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    work: F,
) where
    F: Fn(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        tokio::select! {
            acquired = held.wait_for(|h| *h) => if acquired.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
        info!(lease, "lease held: starting its work on this node");
        let (stop_run, run_stopped) = watch::channel(false);
        let run = work(run_stopped);
        tokio::pin!(run);
        let mut stopping = false;
        loop {
            tokio::select! {
                () = &mut run => break,
                lost = held.wait_for(|h| !*h), if !stopping => {
                    if lost.is_ok() {
                        warn!(lease, "lease lost: stopping its work on this node");
                    }
                    stop_run.send_replace(true);
                    stopping = true;
                }
                _ = stop.wait_for(|s| *s), if !stopping => {
                    stop_run.send_replace(true);
                    stopping = true;
                }
            }
        }
        if *stop.borrow() {
            return;
        }
        if !stopping {
            // The work ended on its own while the lease is held: do not restart it in a loop; wait for the
            // lease to change hands (or the node to stop) first.
            warn!(lease, "work under a lease ended on its own");
            tokio::select! {
                lost = held.wait_for(|h| !*h) => if lost.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn default_node_ids_keep_only_key_safe_characters() {
        assert_eq!(node_id_from("east-1.example.org\n", 0xabc), "east-1.example.org-000abc");
        assert_eq!(node_id_from("", 1), "node-000001");
        assert_eq!(node_id_from("we ird/host", 0xffffff), "weirdhost-ffffff");
    }

    #[test]
    fn a_wildcard_bind_is_not_announced_as_is() {
        let url = http_url("0.0.0.0:8080".parse().unwrap(), false);
        assert!(url.starts_with("http://") && url.ends_with(":8080") && !url.contains("0.0.0.0"), "{url}");
        assert_eq!(http_url("127.0.0.1:9".parse().unwrap(), true), "https://127.0.0.1:9");
    }

    /// Counts runs and how many are running now.
    async fn work(stop: watch::Receiver<bool>, runs: Arc<AtomicUsize>, running: watch::Sender<bool>) {
        runs.fetch_add(1, Ordering::SeqCst);
        running.send_replace(true);
        let mut stop = stop;
        let _ = stop.wait_for(|s| *s).await;
        running.send_replace(false);
    }

    #[tokio::test]
    async fn work_runs_only_while_the_lease_is_held_and_restarts_when_it_comes_back() {
        let (held_tx, held) = watch::channel(false);
        let (stop_tx, stop) = watch::channel(false);
        let runs = Arc::new(AtomicUsize::new(0));
        let (running_tx, mut running) = watch::channel(false);
        let task = {
            let runs = Arc::clone(&runs);
            tokio::spawn(while_held("test", held, stop, move |s| {
                work(s, Arc::clone(&runs), running_tx.clone())
            }))
        };
        let within = Duration::from_secs(2);
        tokio::task::yield_now().await;
        assert_eq!(runs.load(Ordering::SeqCst), 0, "ran without the lease");
        held_tx.send_replace(true);
        tokio::time::timeout(within, running.wait_for(|r| *r)).await.unwrap().unwrap();
        held_tx.send_replace(false);
        tokio::time::timeout(within, running.wait_for(|r| !*r)).await.unwrap().unwrap();
        held_tx.send_replace(true);
        tokio::time::timeout(within, running.wait_for(|r| *r)).await.unwrap().unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        stop_tx.send_replace(true);
        tokio::time::timeout(within, task).await.expect("ends on stop").unwrap();
        assert!(!*running.borrow(), "work still running after stop");
    }
}
