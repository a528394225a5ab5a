//! Real `redis-server` processes for tests: each on its own free loopback port, in its own
//! folder, killed by PID when dropped. Standalone, a three-node Cluster, and Sentinel.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback port that refuses every connection for as long as this value lives: the socket
/// is bound but never listens, so a connect gets RST and no other test can take the port
/// (a port from `free_port()` that nothing listens on can be taken by a parallel test's
/// server between the lookup and the connect, turning an expected 502 into its 404).
pub struct ClosedPort {
    _socket: socket2::Socket,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> Self {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("a TCP socket");
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&any.into()).expect("bind a loopback port");
        let port = socket
            .local_addr()
            .unwrap()
            .as_socket()
            .expect("an IP address")
            .port();
        Self {
            _socket: socket,
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Extra `redis-server` arguments, e.g. `["--appendonly", "yes"]`.
    pub fn start_with(args: &[&str]) -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().unwrap(),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--dir"])
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test.sh installs it)");
        self.child = Some(child);
        wait_for_ping(self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// SIGKILL: no shutdown, no save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process freezes, its sockets stay open and the kernel keeps accepting.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Starts again on the same port with the same arguments (and folder).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `redis-cli -p PORT ARGS…`, its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// How often `command` ran since start (INFO commandstats).
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{}:calls=", command.to_ascii_lowercase());
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli on PATH");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_for_ping(port: u16) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let answer = cli(port, &["PING"]);
        // NOAUTH: up, and protected by a password.
        if answer.trim() == "PONG" || answer.contains("NOAUTH") {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not answer PING within 10 s");
}

/// Three masters, no replicas, slots spread by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let start = Instant::now();
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "cluster never became ok"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { nodes }
    }

    /// Seed node URLs, as `[store] nodes` takes them.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// A `[store]` table pointing keygate at this cluster.
    pub fn store_toml(&self) -> String {
        let nodes = self
            .urls()
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ");
        format!("[store]\nkind = \"redis\"\nnodes = [{nodes}]\nepoch_poll = \"1s\"\n")
    }
}

/// A master watched by one sentinel (quorum 1), with a replica if asked for.
pub struct RedisSentinel {
    pub master: RedisServer,
    pub replica: Option<RedisServer>,
    /// The replica's link to the master goes through this, so a test can make it lag.
    pub replication: Option<super::fault::FaultProxy>,
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisSentinel {
    pub const MASTER_NAME: &'static str = "mymaster";

    pub fn start() -> Self {
        Self::start_inner(false)
    }

    /// With a replica the sentinel can promote (a failover takes a few seconds: the master is
    /// judged down after 1 s), following the master through [`Self::replication`].
    pub fn with_replica() -> Self {
        Self::start_inner(true)
    }

    fn start_inner(with_replica: bool) -> Self {
        let master = RedisServer::start();
        let replication = with_replica.then(|| super::fault::FaultProxy::start(master.port));
        let replica = replication.as_ref().map(|link| {
            let replica =
                RedisServer::start_with(&["--replicaof", "127.0.0.1", &link.port.to_string()]);
            let start = Instant::now();
            while !replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
            {
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "the replica never synced"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            replica
        });
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {} 1000\n\
                 sentinel failover-timeout {} 5000\n",
                dir.path().display(),
                Self::MASTER_NAME,
                master.port,
                Self::MASTER_NAME,
                Self::MASTER_NAME,
            ),
        )
        .unwrap();
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_ping(port);
        let start = Instant::now();
        while !cli(
            port,
            &["SENTINEL", "get-master-addr-by-name", Self::MASTER_NAME],
        )
        .contains(&master.port.to_string())
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sentinel never saw the master"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            master,
            replica,
            replication,
            port,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port the sentinel names as master now.
    pub fn master_port(&self) -> String {
        cli(
            self.port,
            &["SENTINEL", "get-master-addr-by-name", Self::MASTER_NAME],
        )
        .lines()
        .nth(1)
        .unwrap_or_default()
        .trim()
        .to_owned()
    }

    /// `[store]` for a keygate that finds its Redis through this sentinel.
    pub fn store_toml(&self) -> String {
        format!(
            "[store]\nkind = \"redis\"\nsentinels = [\"{}\"]\nmaster_name = \"{}\"\n\
             epoch_poll = \"1s\"\n",
            self.url(),
            Self::MASTER_NAME
        )
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
