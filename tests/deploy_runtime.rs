//! deploy/ running: a real Prometheus scraping a real keygate (and evaluating the alert rules
//! and every dashboard query), the image's runtime contract without Docker (an unprivileged
//! user, read-only config and keys, every file it opens for writing recorded by strace), keygate
//! under deploy/seccomp/keygate.json, and how many keys a Secret holds.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::redis::{RedisServer, free_port};
use common::tools::{dashboard_queries, is_root, python_seccomp, repo, run_ok, tool};
use common::*;
use serde_json::Value;

/// A child process killed (by its PID) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server of its own, on a free loopback port.
struct Prometheus {
    port: u16,
    _process: Killed,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(binary: &Path, config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let prometheus = Self {
            port,
            _process: Killed(child),
            _dir: dir,
        };
        let ready = eventually(Duration::from_secs(60), || async {
            try_get(&format!("http://127.0.0.1:{port}/-/ready"))
                .await
                .is_some_and(|(status, _)| status == 200)
        })
        .await;
        assert!(ready.is_some(), "Prometheus did not get ready");
        prometheus
    }

    /// An instant query's `data.result`.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let url = format!(
            "http://127.0.0.1:{}/api/v1/query?query={}",
            self.port,
            percent_encode(promql)
        );
        let reply = get(&url, &[]).await;
        let json = reply.json();
        assert_eq!(json["status"], "success", "{promql}: {json}");
        json["data"]["result"].as_array().unwrap().clone()
    }

    /// The values of a query's series by the value of `label`.
    async fn by(&self, promql: &str, label: &str) -> BTreeMap<String, f64> {
        self.query(promql)
            .await
            .iter()
            .map(|s| {
                let key = s["metric"][label].as_str().unwrap_or_default().to_owned();
                (key, s["value"][1].as_str().unwrap().parse::<f64>().unwrap())
            })
            .collect()
    }
}

/// GET without panicking (for servers still starting).
async fn try_get(url: &str) -> Option<(u16, String)> {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let response = tokio::time::timeout(Duration::from_secs(5), client.get(url.parse().unwrap()))
        .await
        .ok()?
        .ok()?;
    let status = response.status().as_u16();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .ok()?
        .to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_keygate_alerts_load_and_dashboard_queries_answer() {
    let Some(prometheus_bin) = tool("prometheus") else {
        return;
    };
    let redis = RedisServer::start();
    let up = Upstream::start().await;
    let extra = "[plans.free]\nper_second = 1000\nburst = 1000\nper_hour = 100000\n\n\
                 [plans.tiny]\nper_second = 1\nburst = 1\n\n\
                 [metrics]\nby_owner = true\n\n\
                 # 30 unknown keys from one address are the point here, not a stuffing attack.\n\
                 [guard]\nmax_invalid = 1000\n";
    let ws = Workspace::redis(&up.url(), &redis.url(), extra);
    let (_, live) = ws.create_key(&["--owner", "acme", "--plan", "free"]);
    let (_, sandbox) = ws.create_key(&["--owner", "beta", "--env", "test"]);
    let (doomed_id, doomed) = ws.create_key(&["--owner", "acme"]);
    let (_, tiny) = ws.create_key(&["--owner", "gamma", "--plan", "tiny"]);
    // Sandbox keys go to a port nothing listens on: 502, counted as kind="refused".
    let closed_port = common::redis::ClosedPort::new();
    let closed = closed_port.url();
    let kg = ws.serve_with_env(&[("KEYGATE_UPSTREAM__SANDBOX_URL", &closed)]);
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - {}\n\
         scrape_configs:\n  - job_name: keygate\n    static_configs:\n      - targets: [\"{}\"]\n",
        repo().join("deploy/prometheus/rules.yaml").display(),
        kg.admin
    );
    let prom = Prometheus::start(&prometheus_bin, &config).await;

    let unknown = "kg_sk_live_AAAAAAAAAAAAAAAAAAAAAAAAAAAA000000";
    let send = |n: usize, key: Option<&str>| {
        let url = kg.url("/v1/items");
        let key = key.map(str::to_owned);
        async move {
            let mut statuses = BTreeMap::new();
            for _ in 0..n {
                let headers: Vec<(&str, &str)> = match &key {
                    Some(k) => vec![("x-api-key", k.as_str())],
                    None => vec![],
                };
                *statuses
                    .entry(get(&url, &headers).await.status.as_u16())
                    .or_insert(0) += 1;
            }
            statuses
        }
    };
    // One of each first, so every series exists before the traffic whose rate is measured.
    assert_eq!(send(1, Some(&live)).await, BTreeMap::from([(200, 1)]));
    assert_eq!(send(1, Some(unknown)).await, BTreeMap::from([(401, 1)]));
    assert_eq!(send(1, None).await, BTreeMap::from([(401, 1)]));
    assert_eq!(send(1, Some(&sandbox)).await, BTreeMap::from([(502, 1)]));
    // A 429, so the rate-limit panel has its series.
    assert_eq!(send(2, Some(&tiny)).await.get(&429), Some(&1));
    // A revocation, for the propagation histogram.
    assert_eq!(send(1, Some(&doomed)).await, BTreeMap::from([(200, 1)]));
    let out = ws.cli(&["keys", "revoke", &doomed_id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let revoked = eventually(Duration::from_secs(10), || async {
        get(&kg.url("/v1/items"), &[("x-api-key", &doomed)])
            .await
            .status
            == 401
    })
    .await;
    assert!(revoked.is_some(), "the revocation reached keygate");
    let first = prom
        .by(
            r#"sum by (decision) (keygate_requests_total{job="keygate"})"#,
            "decision",
        )
        .await;
    let seen = eventually(Duration::from_secs(20), || async {
        prom.query(r#"keygate_requests_total{job="keygate", decision="upstream_unavailable"}"#)
            .await
            .len()
            == 1
    })
    .await;
    assert!(
        seen.is_some(),
        "Prometheus scraped the first requests; had {first:?}"
    );
    // Quiet for longer than the rate window below, so it holds the measured traffic only.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let before = prom
        .by(
            r#"sum by (decision) (keygate_requests_total{job="keygate"})"#,
            "decision",
        )
        .await;

    // The traffic, in known proportions.
    let sent = [
        ("allowed", 60.0),
        ("invalid_api_key", 30.0),
        ("missing_api_key", 20.0),
        ("upstream_unavailable", 10.0),
    ];
    let (a, b, c, d) = tokio::join!(
        send(60, Some(&live)),
        send(30, Some(unknown)),
        send(20, None),
        send(10, Some(&sandbox)),
    );
    assert_eq!(a, BTreeMap::from([(200, 60)]));
    assert_eq!(b, BTreeMap::from([(401, 30)]));
    assert_eq!(c, BTreeMap::from([(401, 20)]));
    assert_eq!(d, BTreeMap::from([(502, 10)]));

    // Prometheus sees exactly what was sent.
    let expected: BTreeMap<String, f64> = sent
        .iter()
        .map(|(d, n)| (d.to_string(), before.get(*d).copied().unwrap_or(0.0) + n))
        .collect();
    let query = r#"sum by (decision) (keygate_requests_total{job="keygate"})"#;
    let caught_up = eventually(Duration::from_secs(20), || async {
        let now = prom.by(query, "decision").await;
        expected.iter().all(|(d, n)| now.get(d) == Some(n))
    })
    .await;
    let last = prom.by(query, "decision").await;
    assert!(
        caught_up.is_some(),
        "expected {expected:?}, Prometheus has {last:?}"
    );

    let up = prom.query(r#"up{job="keygate"}"#).await;
    assert_eq!(up.len(), 1);
    assert_eq!(up[0]["value"][1], "1", "up == 1");

    // The request rate by decision is in the proportions sent. The 7 s window holds the
    // measured traffic and nothing before it (8 s of quiet), and every series has the same
    // sample times (one target), so the rates compare exactly.
    let rates = prom
        .by(
            r#"sum by (decision) (rate(keygate_requests_total{job="keygate"}[7s]))"#,
            "decision",
        )
        .await;
    let increases = prom
        .by(
            r#"sum by (decision) (increase(keygate_requests_total{job="keygate"}[7s]))"#,
            "decision",
        )
        .await;
    let allowed_rate = rates["allowed"];
    assert!(allowed_rate > 0.0, "{rates:?}");
    for (decision, n) in sent {
        let share = rates[decision] / allowed_rate;
        let want = n / 60.0;
        assert!(
            (share - want).abs() < 0.01,
            "{decision}: rate {share} of allowed's, sent {want} ({rates:?})"
        );
        assert!(increases[decision] >= n - 0.5, "{decision}: {increases:?}");
    }
    for (decision, rate) in &rates {
        if !sent.iter().any(|(d, _)| d == decision) {
            assert_eq!(*rate, 0.0, "{decision} was not sent in the window");
        }
    }

    // A finite p99 from the latency histogram.
    let p99 = prom
        .query(
            r#"histogram_quantile(0.99, sum by (le) (rate(keygate_request_duration_seconds_bucket{job="keygate"}[1m])))"#,
        )
        .await;
    let p99: f64 = p99[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(p99.is_finite() && p99 > 0.0, "p99 = {p99}");

    // The new metrics, through Prometheus.
    let failures = prom
        .by(r#"keygate_upstream_failures_total{job="keygate"}"#, "kind")
        .await;
    assert_eq!(failures["refused"], 11.0, "{failures:?}");
    let plans = prom
        .by(r#"keygate_plan_requests_total{job="keygate"}"#, "plan")
        .await;
    assert_eq!(plans["free"], 61.0, "{plans:?}");
    let owners = prom
        .by(r#"keygate_owner_requests_total{job="keygate"}"#, "owner")
        .await;
    assert_eq!(owners["acme"], 62.0, "{owners:?}");
    let build = prom.query(r#"keygate_build_info{job="keygate"}"#).await;
    assert_eq!(build[0]["metric"]["commit"], keygate::COMMIT);
    assert_eq!(
        prom.query(r#"process_resident_memory_bytes{job="keygate"} > 0"#)
            .await
            .len(),
        1
    );
    let propagation = prom
        .query(r#"keygate_key_change_propagation_seconds_count{job="keygate"} > 0"#)
        .await;
    assert_eq!(propagation.len(), 1, "a propagation was observed");

    // The alert rules load and evaluate in a real Prometheus.
    let rules = get(&format!("http://127.0.0.1:{}/api/v1/rules", prom.port), &[])
        .await
        .json();
    let loaded: Vec<&Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert!(loaded.len() >= 11, "{rules}");
    let evaluated = eventually(Duration::from_secs(10), || async {
        let rules = get(&format!("http://127.0.0.1:{}/api/v1/rules", prom.port), &[])
            .await
            .json();
        rules["data"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["health"] == "ok")
    })
    .await;
    assert!(evaluated.is_some(), "every rule evaluates without error");

    // Every dashboard query runs; each returns data, except those on metrics this branch does
    // not have yet.
    const NOT_HERE_YET: &[&str] = &["keygate_write_batching_enabled"];
    for (panel, query) in dashboard_queries() {
        let result = prom.query(&query).await;
        if NOT_HERE_YET.iter().any(|m| query.contains(m)) {
            continue;
        }
        assert!(
            !result.is_empty(),
            "panel {panel:?}: {query} returned nothing"
        );
    }
    drop(kg);
}

/// Parses `strace -f` output for every system call that writes to the file system: opens for
/// writing or creating, and creating, renaming, linking, removing or truncating a path.
/// Returns the paths, failed attempts included.
fn written_paths(trace: &str) -> Vec<String> {
    const CALLS: &[&str] = &[
        "creat(",
        "mkdir(",
        "mkdirat(",
        "rename(",
        "renameat(",
        "renameat2(",
        "unlink(",
        "unlinkat(",
        "link(",
        "linkat(",
        "symlink(",
        "symlinkat(",
        "truncate(",
        "rmdir(",
    ];
    let mut out = Vec::new();
    for line in trace.lines() {
        let call = line.split_whitespace().nth(1).unwrap_or_default();
        let quoted: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        let opens = call.starts_with("open(") || call.starts_with("openat(");
        let writes = opens
            && ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"]
                .iter()
                .any(|f| line.contains(f));
        if writes || CALLS.iter().any(|c| call.starts_with(c)) {
            out.extend(quoted.iter().map(|s| s.to_string()));
        }
    }
    out
}

/// A keygate started as uid 65532 under `strace`, as the image runs it.
struct Unprivileged {
    /// keygate itself, strace's child: killed on drop too, or a failed test would leave it
    /// running once strace is gone.
    keygate: i32,
    process: Killed,
    trace: PathBuf,
    public: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Unprivileged {
    /// `keygate`: the binary, where uid 65532 can run it.
    fn start(strace: &Path, keygate: &Path, config: &Path, trace: PathBuf) -> Self {
        let mut cmd = Command::new(strace);
        cmd.args(["-f", "-qq", "-s", "256", "-o"])
            .arg(&trace)
            .args([
                "-e",
                "trace=open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,link,linkat,symlink,symlinkat,truncate,rmdir",
                "--",
            ])
            .arg(keygate)
            .args(["serve", "-c"])
            .arg(config)
            .current_dir("/")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("KEYGATE_LOG", "info")
            .uid(65532)
            .gid(65532)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("keygate listening") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let process = Killed(child);
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("keygate did not start: {:?}", logs.lock().unwrap()));
        let json: Value = serde_json::from_str(&line).unwrap();
        let strace = process.0.id();
        let children =
            std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children")).unwrap();
        let keygate = children
            .split_whitespace()
            .next()
            .expect("strace's child")
            .parse()
            .unwrap();
        Self {
            keygate,
            process,
            trace,
            public: json["public"].as_str().unwrap().parse().unwrap(),
            admin: json["admin"].as_str().unwrap().parse().unwrap(),
            logs,
        }
    }

    /// SIGTERM to keygate (strace's child), then what it wrote (after it exited, so the
    /// trace is complete).
    fn stop(mut self) -> (Vec<String>, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.keygate.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.process.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "keygate did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        // strace exits only after keygate has: nothing of ours has that PID any more.
        self.keygate = 0;
        let trace = std::fs::read_to_string(&self.trace).unwrap();
        let logs = self.logs.lock().unwrap().join("\n");
        (written_paths(&trace), logs)
    }
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        // After `stop` keygate has exited and strace has reaped it (0 here: its PID may
        // belong to another process by now). Before, strace is alive and keygate is its
        // unreaped child, so the PID is still keygate's.
        if self.keygate > 0 {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(self.keygate, libc::SIGKILL);
            }
        }
    }
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runtime_contract_holds_without_docker() {
    if !is_root() {
        return;
    }
    let Some(strace) = tool("strace") else {
        return;
    };
    let up = Upstream::start().await;
    // A root-owned tree like the image's, with two ways to hold the keys:
    //   etc/keygate/keys/keys.json  read-only, like a Secret mount
    //   var/lib/keygate/keys.json   the image's volume, owned by 65532
    let root = tempfile::Builder::new()
        .prefix("keygate-rootfs-")
        .tempdir()
        .unwrap();
    chmod(root.path(), 0o755);
    let etc = root.path().join("etc/keygate");
    let secret = etc.join("keys");
    let volume = root.path().join("var/lib/keygate");
    let traces = root.path().join("traces");
    let bin = root.path().join("usr/local/bin");
    for dir in [&etc, &secret, &volume, &traces, &bin] {
        std::fs::create_dir_all(dir).unwrap();
    }
    // The test binary's folder may be closed to other users (a checkout under /root).
    let keygate_bin = bin.join("keygate");
    std::fs::copy(env!("CARGO_BIN_EXE_keygate"), &keygate_bin).unwrap();
    chmod(&keygate_bin, 0o755);
    let config = |store: &Path| {
        format!(
            "[listen]\npublic = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"{}\"\n[store]\nkind = \"file\"\npath = \"{}\"\n\
             [auth]\nunmatched = \"allow\"\n[server]\nworkers = 1\ndrain_period = \"0s\"\n",
            up.url(),
            store.display()
        )
    };
    let keygate = env!("CARGO_BIN_EXE_keygate");
    let mut keys = Vec::new();
    for (name, store) in [
        ("secret", secret.join("keys.json")),
        ("volume", volume.join("keys.json")),
    ] {
        let file = etc.join(format!("{name}.toml"));
        std::fs::write(&file, config(&store)).unwrap();
        let out = run_ok(
            Command::new(keygate)
                .args(["keys", "create", "--name", name, "--scopes", "*", "-c"])
                .arg(&file),
        );
        let created: Value = serde_json::from_slice(&out.stdout).unwrap();
        keys.push((
            created["id"].as_str().unwrap().to_owned(),
            created["key"].as_str().unwrap().to_owned(),
        ));
        chmod(&file, 0o444);
    }
    // The Secret: root's, readable by all, writable by none. The volume: 65532's own.
    chmod(&secret.join("keys.json"), 0o444);
    let _ = std::fs::remove_file(secret.join("keys.json.lock"));
    chmod(&secret, 0o555);
    for entry in std::fs::read_dir(&volume).unwrap() {
        let path = entry.unwrap().path();
        chown(&path, 65532);
    }
    chown(&volume, 65532);
    chmod(&etc, 0o555);
    chown(&traces, 65532);

    let start = |name: &str| {
        let config = etc.join(format!("{name}.toml"));
        Unprivileged::start(&strace, &keygate_bin, &config, traces.join(name))
    };
    let on_secret = start("secret");
    let on_volume = start("volume");
    for (kg, (_, key)) in [(&on_secret, &keys[0]), (&on_volume, &keys[1])] {
        for _ in 0..5 {
            let reply = get(&format!("http://{}/v1/x", kg.public), &[("x-api-key", key)]).await;
            assert_eq!(reply.status, 200);
        }
    }
    // Past one last-used flush (every 10 s).
    tokio::time::sleep(Duration::from_secs(11)).await;
    let last_used = get(&format!("http://{}/last-used", on_secret.admin), &[])
        .await
        .json();
    assert!(
        last_used[&keys[0].0].is_string(),
        "kept in memory and served: {last_used}"
    );
    let last_used = get(&format!("http://{}/last-used", on_volume.admin), &[])
        .await
        .json();
    assert!(
        last_used[&keys[1].0].is_string(),
        "written to the volume: {last_used}"
    );

    let (written, logs) = on_secret.stop();
    assert_eq!(
        written,
        Vec::<String>::new(),
        "with a read-only keys file nothing is written"
    );
    assert_eq!(
        logs.matches("last-used times are kept in memory").count(),
        1,
        "said once: {logs}"
    );
    assert!(!logs.contains("write-behind failed"), "{logs}");
    assert!(!logs.contains("\"level\":\"ERROR\""), "{logs}");

    let (written, logs) = on_volume.stop();
    let volume_str = volume.to_str().unwrap();
    assert!(!written.is_empty(), "the volume got the last-used file");
    for path in &written {
        assert!(
            path.starts_with(volume_str),
            "wrote outside the volume: {path} ({written:?})"
        );
    }
    assert!(!logs.contains("kept in memory"), "{logs}");
    assert!(volume.join("keys.json.last-used").is_file());
}

#[test]
fn strace_parsing_finds_writes() {
    // The contract test above asserts on what this finds; it must find what is there.
    let trace = r#"101 openat(AT_FDCWD, "/etc/keygate/proxy.toml", O_RDONLY|O_CLOEXEC) = 3
101 openat(AT_FDCWD, "/var/lib/keygate/.keys-x.tmp", O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 4
102 renameat(AT_FDCWD, "/var/lib/keygate/.keys-x.tmp", AT_FDCWD, "/var/lib/keygate/keys.json.last-used") = 0
102 mkdir("/tmp/x", 0777) = -1 EACCES (Permission denied)
103 unlinkat(AT_FDCWD, "/tmp/y", 0) = 0"#;
    assert_eq!(
        written_paths(trace),
        [
            "/var/lib/keygate/.keys-x.tmp",
            "/var/lib/keygate/.keys-x.tmp",
            "/var/lib/keygate/keys.json.last-used",
            "/tmp/x",
            "/tmp/y"
        ]
    );
}

/// keygate under a seccomp profile, through tests/tools/seccomp_exec.py.
fn under_profile(profile: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(repo().join("tests/tools/seccomp_exec.py"))
        .arg(profile)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_keygate"))
        .args(args)
        .env_remove("KEYGATE_CONFIG");
    cmd
}

/// Runs `serve` under `profile`, sends 20 keyed requests, and returns the writes batched and
/// the logs, after a SIGHUP reload and a SIGTERM drain.
async fn serve_under(profile: &Path, ws: &Workspace, key: &str) -> (f64, String) {
    let mut cmd = under_profile(profile, &["serve", "-c", ws.config().to_str().unwrap()]);
    cmd.env("KEYGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = logs.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("keygate listening") {
                let _ = tx.send(line.clone());
            }
            sink.lock().unwrap().push(line);
        }
    });
    let mut process = Killed(child);
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("no start under the profile: {:?}", logs.lock().unwrap()));
    let json: Value = serde_json::from_str(&line).unwrap();
    let public = json["public"].as_str().unwrap();
    let admin = json["admin"].as_str().unwrap();
    for _ in 0..20 {
        let reply = get(&format!("http://{public}/v1/x"), &[("x-api-key", key)]).await;
        assert_eq!(reply.status, 200);
    }
    let metrics = text(&get(&format!("http://{admin}/metrics"), &[]).await.body);
    let batches = metrics
        .lines()
        .find_map(|l| l.strip_prefix("keygate_write_batches_total "))
        .map(|v| v.parse::<f64>().unwrap())
        .unwrap();
    // `keygate health` under the same profile, as a container health check runs.
    let health = under_profile(
        profile,
        &["health", "--url", &format!("http://{admin}/healthz")],
    )
    .output()
    .unwrap();
    assert!(health.status.success(), "{}", text(&health.stderr));
    // Reload and drain under the profile.
    let pid = process.0.id().to_string();
    run_ok(Command::new("kill").args(["-HUP", &pid]));
    let reloaded = eventually(Duration::from_secs(10), || async {
        text(&get(&format!("http://{admin}/metrics"), &[]).await.body)
            .contains(r#"keygate_reloads_total{result="ok",what="config"} 1"#)
    })
    .await;
    assert!(reloaded.is_some(), "SIGHUP reload under the profile");
    run_ok(Command::new("kill").args(["-TERM", &pid]));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit after the drain: {status}");
    let logs = logs.lock().unwrap().join("\n");
    (batches, logs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygate_serves_and_batches_under_the_seccomp_profile() {
    if !python_seccomp() {
        return;
    }
    let profile = repo().join("deploy/seccomp/keygate.json");
    let up = Upstream::start().await;
    let ws = Workspace::new(
        &up.url(),
        "[server]\ndrain_period = \"0s\"\nwatch_interval = \"0s\"\n",
    );
    // The CLI too: `docker compose run … keys create` runs under the same profile.
    let out = run_ok(&mut under_profile(
        &profile,
        &[
            "keys",
            "create",
            "--name",
            "t",
            "--scopes",
            "*",
            "-c",
            ws.config().to_str().unwrap(),
        ],
    ));
    let key = serde_json::from_slice::<Value>(&out.stdout).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();

    // First without any restriction: whether this kernel batches at all.
    let dir = tempfile::tempdir().unwrap();
    let allow_all = dir.path().join("allow-all.json");
    std::fs::write(
        &allow_all,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"], "syscalls": []}"#,
    )
    .unwrap();
    let (unrestricted, logs) = serve_under(&allow_all, &ws, &key).await;
    let kernel_batches = unrestricted > 0.0;
    if !kernel_batches {
        eprintln!("io_uring is unavailable on this host, so only serving is checked: {logs}");
    }

    let (batches, logs) = serve_under(&profile, &ws, &key).await;
    if kernel_batches {
        assert!(
            batches > 0.0,
            "writes were batched through io_uring: {logs}"
        );
        assert!(!logs.contains("writes are not batched"), "{logs}");
    }

    // The same profile without the three io_uring calls, as Docker's and containerd's default
    // profiles are: the filter is in force (what worked above is refused now), and keygate
    // batches through Linux AIO instead, which those profiles allow.
    let without = |prefixes: &[&str]| {
        let mut reduced: Value =
            serde_json::from_str(&std::fs::read_to_string(&profile).unwrap()).unwrap();
        for rule in reduced["syscalls"].as_array_mut().unwrap() {
            rule["names"]
                .as_array_mut()
                .unwrap()
                .retain(|n| !prefixes.iter().any(|p| n.as_str().unwrap().starts_with(p)));
        }
        reduced.to_string()
    };
    let reduced = dir.path().join("no-io-uring.json");
    std::fs::write(&reduced, without(&["io_uring"])).unwrap();
    let (batches, logs) = serve_under(&reduced, &ws, &key).await;
    if kernel_batches {
        assert!(batches > 0.0, "writes were batched through AIO: {logs}");
        assert!(
            logs.contains("io_uring unavailable: writes go through AIO"),
            "{logs}"
        );
        assert!(logs.contains(r#""backend":"aio""#), "{logs}");
    }

    // Without AIO either: plain writes, and keygate keeps serving.
    let neither = dir.path().join("no-io-uring-no-aio.json");
    std::fs::write(&neither, without(&["io_uring", "io_s", "io_g", "io_d"])).unwrap();
    let (batches, logs) = serve_under(&neither, &ws, &key).await;
    assert_eq!(batches, 0.0);
    assert!(
        logs.contains("writes are not batched (io_uring unavailable)"),
        "{logs}"
    );
}

#[test]
fn a_secret_holds_the_number_of_keys_deploy_readme_says() {
    // deploy/README.md: about 2,050 keys with a name, an owner and two scopes; about 1,580
    // with an expiry, an IP allowlist and three scopes. A Secret holds 1 MiB.
    const SECRET_LIMIT: u64 = 1024 * 1024;
    let cases: &[(&[&str], u32)] = &[
        (
            &[
                "--name",
                "billing service",
                "--scopes",
                "content:read,content:write",
                "--owner",
                "acme-corp",
            ],
            2050,
        ),
        (
            &[
                "--name",
                "a-somewhat-longer-key-name-for-a-customer",
                "--scopes",
                "content:read,content:write,analytics:read",
                "--owner",
                "customer-000123",
                "--expires-in",
                "90d",
                "--allow-ip",
                "10.0.0.0/8",
            ],
            1580,
        ),
    ];
    for (args, count) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("proxy.toml");
        std::fs::write(
            &config,
            "[upstream]\nurl = \"http://127.0.0.1:3000\"\n[auth]\nunmatched = \"allow\"\n",
        )
        .unwrap();
        run_ok(
            Command::new(env!("CARGO_BIN_EXE_keygate"))
                .args(["keys", "create", "--count", &count.to_string()])
                .args(*args)
                .arg("-c")
                .arg(&config)
                .stdout(Stdio::null()),
        );
        let size = std::fs::metadata(dir.path().join("keys.json"))
            .unwrap()
            .len();
        assert!(size <= SECRET_LIMIT, "{count} keys take {size} bytes");
        // And the figure is not far off: 5 % more would not fit.
        assert!(
            size * 105 / 100 > SECRET_LIMIT * 95 / 100,
            "{count} keys: {size} bytes"
        );
    }
}
