//! What an operator gets besides the request path: upstream failures by kind, usage by plan and
//! owner (bounded), build and process metrics, and the commands around deployment (`health`,
//! `echo`, `completions`, `man`, `--version`).

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::redis::free_port;
use common::*;
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// An upstream that misbehaves by path: `/hang` never answers, `/close` hangs up after reading
/// the request, `/garbage` answers something that is not HTTP. Anything else gets a 200.
async fn misbehaving_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let Some(head) = read_request_head(&mut stream).await else {
                    return;
                };
                let line = String::from_utf8_lossy(&head);
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                match path.as_str() {
                    "/hang" => tokio::time::sleep(Duration::from_secs(30)).await,
                    "/close" => {}
                    "/garbage" => {
                        let _ = stream.write_all(b"NOT HTTP AT ALL\r\n\r\n").await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    _ => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    addr
}

/// A plain TCP server where keygate expects TLS: the handshake fails.
async fn not_tls() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            });
        }
    });
    addr
}

async fn samples(kg: &Keygate, metric: &str, label: &str) -> BTreeMap<String, f64> {
    let body = text(&get(&kg.admin_url("/metrics"), &[]).await.body);
    body.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let key = series
                .split(&format!("{label}=\""))
                .nth(1)?
                .split('"')
                .next()?
                .to_owned();
            Some((key, value.parse().ok()?))
        })
        .collect()
}

/// An HTTP/2 (prior knowledge) GET, as hyper's side of keygate serves it.
async fn get_h2(url: &str, key: &str) -> u16 {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = http::Request::get(url)
        .header("x-api-key", key)
        .body(Full::new(Bytes::new()))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .unwrap()
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn upstream_failures_are_counted_by_kind_on_both_engines() {
    let upstream = misbehaving_upstream().await;
    let closed_port = common::redis::ClosedPort::new();
    let closed = closed_port.url();
    let ws = Workspace::new(&format!("http://{upstream}"), "");
    let (_, live) = ws.create_key(&[]);
    let (_, sandbox) = ws.create_key(&["--env", "test"]);
    let kg = ws.serve_with_env(&[
        ("KEYGATE_UPSTREAM__SANDBOX_URL", &closed),
        ("KEYGATE_UPSTREAM__TIMEOUT", "300ms"),
    ]);
    let key = [("x-api-key", live.as_str())];
    assert_eq!(get(&kg.url("/fine"), &key).await.status, 200);
    assert_eq!(get(&kg.url("/hang"), &key).await.status, 504);
    assert_eq!(get(&kg.url("/close"), &key).await.status, 502);
    assert_eq!(get(&kg.url("/garbage"), &key).await.status, 502);
    assert_eq!(
        get(&kg.url("/fine"), &[("x-api-key", &sandbox)])
            .await
            .status,
        502
    );
    // HTTP/2 clients go through hyper's pool: classified the same way.
    assert_eq!(get_h2(&kg.url("/close"), &live).await, 502);
    assert_eq!(get_h2(&kg.url("/fine"), &sandbox).await, 502);

    let kinds = samples(&kg, "keygate_upstream_failures_total", "kind").await;
    let want = BTreeMap::from([
        ("refused".to_owned(), 2.0),
        ("connect_timeout".to_owned(), 0.0),
        ("timeout".to_owned(), 1.0),
        ("reset".to_owned(), 2.0),
        ("tls".to_owned(), 0.0),
        ("protocol".to_owned(), 1.0),
        ("other".to_owned(), 0.0),
        ("body_timeout".to_owned(), 0.0),
    ]);
    assert_eq!(kinds, want);

    // An https:// upstream that does not speak TLS.
    let plain = not_tls().await;
    let ws = Workspace::new(&format!("https://{plain}"), "");
    let (_, live) = ws.create_key(&[]);
    let kg = ws.serve();
    assert_eq!(
        get(&kg.url("/x"), &[("x-api-key", &live)]).await.status,
        502
    );
    let kinds = samples(&kg, "keygate_upstream_failures_total", "kind").await;
    assert_eq!(kinds["tls"], 1.0, "{kinds:?}");
}

#[tokio::test]
async fn usage_by_plan_and_a_bounded_number_of_owners() {
    let up = Upstream::start().await;
    let extra = "[plans.free]\nper_second = 100\nburst = 100\n\n\
                 [metrics]\nby_owner = true\nmax_owners = 2\n";
    let ws = Workspace::new(&up.url(), extra);
    let keys: Vec<String> = ["acme", "beta", "gamma", "delta"]
        .iter()
        .enumerate()
        .map(|(i, owner)| {
            let mut args = vec!["--owner", owner];
            if i % 2 == 0 {
                args.extend(["--plan", "free"]);
            }
            ws.create_key(&args).1
        })
        .collect();
    let kg = ws.serve();
    for (i, key) in keys.iter().enumerate() {
        for _ in 0..=i {
            assert_eq!(get(&kg.url("/x"), &[("x-api-key", key)]).await.status, 200);
        }
    }
    // Refused requests count for no plan and no owner.
    assert_eq!(get(&kg.url("/x"), &[]).await.status, 401);

    let plans = samples(&kg, "keygate_plan_requests_total", "plan").await;
    assert_eq!(
        plans,
        BTreeMap::from([
            ("free".to_owned(), 1.0 + 3.0),
            ("none".to_owned(), 2.0 + 4.0)
        ])
    );
    let owners = samples(&kg, "keygate_owner_requests_total", "owner").await;
    assert_eq!(
        owners,
        BTreeMap::from([
            ("acme".to_owned(), 1.0),
            ("beta".to_owned(), 2.0),
            ("_other".to_owned(), 3.0 + 4.0),
        ])
    );
    assert_eq!(
        kg.all_logs()
            .matches("more key owners than [metrics] max_owners")
            .count(),
        1,
        "said once"
    );

    // Off by default: no owner series at all.
    let ws = Workspace::new(&up.url(), "");
    let (_, key) = ws.create_key(&["--owner", "acme"]);
    let kg = ws.serve();
    assert_eq!(get(&kg.url("/x"), &[("x-api-key", &key)]).await.status, 200);
    assert!(
        samples(&kg, "keygate_owner_requests_total", "owner")
            .await
            .is_empty()
    );
    assert_eq!(
        samples(&kg, "keygate_plan_requests_total", "plan").await["none"],
        1.0
    );
}

#[tokio::test]
async fn build_and_process_metrics_and_the_version() {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), "");
    let kg = ws.serve();
    let version = Command::new(BIN).arg("--version").output().unwrap();
    let version = text(&version.stdout);
    let commit = samples(&kg, "keygate_build_info", "commit").await;
    let (commit, one) = commit.iter().next().expect("keygate_build_info");
    assert_eq!(*one, 1.0);
    assert_eq!(
        version.trim(),
        format!("keygate {} (commit {commit})", env!("CARGO_PKG_VERSION"))
    );
    assert_ne!(commit, "unknown", "built from a git checkout");
    for metric in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let value = kg
            .metric(metric)
            .await
            .unwrap_or_else(|| panic!("{metric}"));
        assert!(value > 0.0, "{metric} = {value}");
    }
    // Whole seconds: a fresh process may show 0.
    assert!(kg.metric("process_cpu_seconds_total").await.is_some());
    // The file store always answers.
    assert_eq!(kg.metric("keygate_key_store_up").await, Some(1.0));
}

#[tokio::test]
async fn health_and_echo_commands() {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), "");
    let admin = format!("127.0.0.1:{}", free_port());
    let env = [("KEYGATE_LISTEN__ADMIN", admin.as_str())];
    let health = |args: &[&str]| {
        Command::new(BIN)
            .arg("health")
            .args(args)
            .arg("-c")
            .arg(ws.config())
            .envs(env)
            .env_remove("KEYGATE_CONFIG")
            .output()
            .unwrap()
    };
    let down = health(&[]);
    assert_eq!(down.status.code(), Some(1), "nothing listens yet");
    assert!(text(&down.stderr).contains("not healthy"));
    let kg = ws.serve_with_env(&env);
    assert!(health(&[]).status.success());
    assert!(health(&["--path", "/readyz"]).status.success());
    let missing = health(&["--path", "/nope"]);
    assert!(
        text(&missing.stderr).contains("status 404"),
        "{}",
        text(&missing.stderr)
    );
    drop(kg);

    // `keygate echo`: the example upstream of deploy/compose and deploy/kubernetes.
    let listen = format!("127.0.0.1:{}", free_port());
    let mut echo = Command::new(BIN)
        .args(["echo", "--listen", &listen])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://{listen}/hello?x=1");
    let ready = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(&listen).await.is_ok()
    })
    .await;
    assert!(ready.is_some());
    let reply = get(&url, &[("x-test", "1")]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["path"], "/hello");
    let probe = Command::new(BIN)
        .args(["health", "--url", &format!("http://{listen}/healthz")])
        .output()
        .unwrap();
    assert!(probe.status.success(), "{}", text(&probe.stderr));
    assert!(
        Command::new("kill")
            .args(["-TERM", &echo.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = echo.wait().unwrap();
    assert!(status.success(), "echo exits cleanly on SIGTERM: {status}");
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let bash = run(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keygate.bash"), &bash).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(dir.path().join("keygate.bash"))
        .output()
        .unwrap();
    assert!(syntax.status.success(), "{}", text(&syntax.stderr));
    for sub in [
        "serve",
        "check-config",
        "keys",
        "health",
        "completions",
        "man",
    ] {
        assert!(bash.contains(sub), "bash completes {sub}");
    }
    assert!(run(&["completions", "zsh"]).starts_with("#compdef keygate"));
    assert!(run(&["completions", "fish"]).contains("complete -c keygate"));
    let bad = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert!(!bad.status.success());

    let man = run(&["man"]);
    assert!(man.contains(".TH keygate 1"), "{man}");
    assert!(man.contains(keygate::VERSION), "the page names the version");
    run(&["man", "--dir", dir.path().join("man1").to_str().unwrap()]);
    for page in ["keygate.1", "keygate-serve.1", "keygate-keys-create.1"] {
        let text = std::fs::read_to_string(dir.path().join("man1").join(page)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
}
