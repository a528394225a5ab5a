//! Black-box tests of the `keygate` command line.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use http::StatusCode;
use serde_json::Value;

fn json(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "failed: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

#[test]
fn keys_lifecycle_never_shows_the_secret_twice() {
    let ws = Workspace::new("http://127.0.0.1:9", "[plans.pro]\nper_hour = 1000\n");
    let created = json(&ws.cli(&[
        "keys",
        "create",
        "--name",
        "billing",
        "--scopes",
        "content:read,analytics:read",
        "--type",
        "public",
        "--env",
        "test",
        "--owner",
        "acme",
        "--plan",
        "pro",
        "--expires-in",
        "30d",
        "--allow-ip",
        "10.0.0.0/24",
        "--allow-ip",
        "2001:db8::/32",
    ]));
    let id = created["id"].as_str().unwrap();
    let key = created["key"].as_str().unwrap();
    assert!(id.starts_with("key_"));
    assert!(key.starts_with("kg_pk_test_"), "{key}");
    assert_eq!(
        created["scopes"],
        serde_json::json!(["content:read", "analytics:read"])
    );
    assert_eq!(created["type"], "public");
    assert_eq!(created["env"], "test");
    assert_eq!(created["owner"], "acme");
    assert_eq!(created["plan"], "pro");
    assert_eq!(created["status"], "active");
    assert!(created["expires_at"].is_string());
    assert_eq!(
        created["allowed_cidrs"],
        serde_json::json!(["10.0.0.0/24", "2001:db8::/32"])
    );

    let keys_file = std::fs::read_to_string(ws.keys_file()).unwrap();
    assert!(!keys_file.contains(key), "the secret is in the keys file");
    let mode = std::fs::metadata(ws.keys_file())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    ws.create_key(&["--owner", "other"]);
    let list = ws.cli(&["keys", "list"]);
    assert!(!text(&list.stdout).contains(key));
    assert_eq!(json(&list).as_array().unwrap().len(), 2);
    let mine = json(&ws.cli(&["keys", "list", "--owner", "acme"]));
    assert_eq!(mine.as_array().unwrap().len(), 1);
    assert_eq!(mine[0]["id"], id);
    assert!(mine[0].get("key").is_none());

    let shown = ws.cli(&["keys", "show", id]);
    assert!(!text(&shown.stdout).contains(key));
    assert_eq!(json(&shown)["name"], "billing");

    let revoked = json(&ws.cli(&["keys", "revoke", id]));
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(json(&ws.cli(&["keys", "show", id]))["status"], "revoked");

    let missing = ws.cli(&["keys", "show", "key_nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("key_nope"));
}

#[test]
fn bad_key_options_fail_clearly_and_write_nothing() {
    let ws = Workspace::new("http://127.0.0.1:9", "");
    for (args, needle) in [
        (vec!["--allow-ip", "10.0.0.0/33"], "--allow-ip"),
        (vec!["--expires-in", "soon"], "--expires-in"),
        (vec!["--expires-at", "yesterday"], "--expires-at"),
        (vec!["--expires-at", "2001-01-01T00:00:00Z"], "future"),
        (vec!["--scopes", "bad scope"], "scope"),
        (vec!["--type", "root"], "root"),
    ] {
        let mut all = vec!["keys", "create", "--name", "n", "--scopes", "*"];
        all.extend(args);
        let out = ws.cli(&all);
        assert!(!out.status.success(), "{all:?} succeeded");
        assert!(
            text(&out.stderr).contains(needle),
            "{all:?}: {}",
            text(&out.stderr)
        );
        assert!(!ws.keys_file().exists(), "{all:?} wrote the keys file");
    }
}

#[test]
fn many_keys_in_one_call_print_one_json_line_each() {
    let ws = Workspace::new("http://127.0.0.1:9", "");
    let out = ws.cli(&[
        "keys", "create", "--name", "fleet", "--scopes", "*", "--count", "50",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 50);
    let unique: std::collections::HashSet<&str> =
        lines.iter().map(|l| l["key"].as_str().unwrap()).collect();
    assert_eq!(unique.len(), 50);
    assert_eq!(
        json(&ws.cli(&["keys", "list"])).as_array().unwrap().len(),
        50
    );
}

#[test]
fn check_config_prints_the_effective_config_or_names_the_field() {
    let ws = Workspace::new("http://127.0.0.1:3000", "[keys]\nprefix = \"acme\"\n");
    let out = ws.cli(&["check-config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("prefix = \"acme\""), "{shown}");
    assert!(
        shown.contains("url = \"http://127.0.0.1:3000/\""),
        "{shown}"
    );

    // Environment overrides win over the file.
    let out = Command::new(BIN)
        .args(["check-config", "-c"])
        .arg(ws.config())
        .env("KEYGATE_UPSTREAM__URL", "http://10.9.9.9:81")
        .env("KEYGATE_KEYS__PREFIX", "zz")
        .output()
        .unwrap();
    let shown = text(&out.stdout);
    assert!(
        shown.contains("http://10.9.9.9:81/") && shown.contains("prefix = \"zz\""),
        "{shown}"
    );

    // Errors: exit 1, the field named.
    for (toml, needle) in [
        ("[upstream]\nurl = \"nope\"\n", "upstream.url"),
        (
            "[upstream]\nurl = \"http://a:1\"\n[listen]\npublic = \"x\"\n",
            "listen.public",
        ),
        (
            "[upstream]\nurl = \"http://a:1\"\n[store]\nkind = \"etcd\"\n",
            "store.kind",
        ),
        ("[upstream]\nurl = \"http://a:1\"\ntypo = 1\n", "typo"),
        ("this is not toml", "proxy.toml"),
    ] {
        std::fs::write(ws.config(), toml).unwrap();
        let out = ws.cli(&["check-config"]);
        assert_eq!(out.status.code(), Some(1), "{toml}");
        assert!(
            text(&out.stderr).contains(needle),
            "{needle}: {}",
            text(&out.stderr)
        );
    }
    let out = Command::new(BIN)
        .args(["check-config", "-c", "/nonexistent/proxy.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/proxy.toml"));
}

#[test]
fn config_path_falls_back_to_the_environment_then_the_working_directory() {
    let ws = Workspace::new("http://127.0.0.1:3000", "");
    let out = Command::new(BIN)
        .arg("check-config")
        .env("KEYGATE_CONFIG", ws.config())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = Command::new(BIN)
        .arg("check-config")
        .env_remove("KEYGATE_CONFIG")
        .current_dir(ws.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["demo", "--help"],
        vec!["check-config", "--help"],
        vec!["keys", "--help"],
        vec!["keys", "create", "--help"],
        vec!["keys", "list", "--help"],
        vec!["keys", "show", "--help"],
        vec!["keys", "revoke", "--help"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(text(&out.stdout).contains("Usage"), "{args:?}");
    }
}

#[tokio::test]
async fn demo_prints_working_curl_lines_and_stops_on_ctrl_c() {
    let mut child = Command::new(BIN)
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let done = line.contains("Ctrl-C");
            lines.push(line);
            if done {
                let _ = tx.send(lines.clone());
            }
        }
    });
    let lines = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("demo printed nothing");
    let curls: Vec<&String> = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("curl "))
        .collect();
    assert_eq!(curls.len(), 2, "{lines:#?}");

    // Replay the printed lines with the test client: the URL is the last word, the key is
    // inside the single-quoted header.
    let mut statuses = Vec::new();
    for line in &curls {
        let url = line.split_whitespace().last().unwrap();
        let key = line
            .split('\'')
            .nth(1)
            .map(|h| h.trim_start_matches("x-api-key: ").to_owned());
        let headers: Vec<(&str, &str)> = key.iter().map(|k| ("x-api-key", k.as_str())).collect();
        let reply = get(url, &headers).await;
        if reply.status == StatusCode::UNAUTHORIZED {
            assert_eq!(reply.error_code(), "missing_api_key");
        }
        statuses.push(reply.status);
    }
    assert_eq!(statuses, vec![StatusCode::OK, StatusCode::UNAUTHORIZED]);

    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let exited = eventually(Duration::from_secs(10), || {
        let done = child.try_wait().unwrap();
        async move { done.is_some() }
    })
    .await;
    assert!(exited.is_some(), "demo still running after Ctrl-C");
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml");
    let out = Command::new(BIN)
        .args(["check-config", "-c", example])
        .env_remove("KEYGATE_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("kind = \"file\""));
}

/// Each "…-style" section of the README (one per seed API) holds a proxy.toml snippet and the
/// commands that reproduce that API's key scheme: the snippet passes `check-config` and every
/// `keygate` command runs against it.
#[test]
fn readme_seed_api_sections_work_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let mut sections = 0;
    let mut titles = Vec::new();
    for section in readme.split("\n### ").skip(1) {
        let (title, body) = section.split_once('\n').unwrap();
        if !title.contains("-style") {
            continue;
        }
        titles.push(title.to_owned());
        let section = body.split("\n## ").next().unwrap();
        let block = |lang: &str| -> Option<String> {
            let start = section.find(&format!("```{lang}\n"))? + lang.len() + 4;
            let len = section[start..].find("```")?;
            Some(section[start..start + len].to_owned())
        };
        let toml = block("toml").unwrap_or_else(|| panic!("{title}: no toml block"));
        let ws = Workspace::new("http://127.0.0.1:9", &toml);
        let commands = block("sh").unwrap_or_default();
        // Files the commands make (a token secret) before the config that names them loads.
        for line in commands.lines().filter(|l| l.starts_with("openssl ")) {
            let out = Command::new("sh")
                .args(["-c", line])
                .current_dir(ws.dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{title}: {line}: {}",
                text(&out.stderr)
            );
        }
        let out = ws.cli(&["check-config"]);
        assert!(out.status.success(), "{title}: {}", text(&out.stderr));
        for line in commands.lines() {
            let words = shlex::split(line).unwrap();
            let Some(("keygate", args)) = words.split_first().map(|(a, b)| (a.as_str(), b)) else {
                continue;
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = ws.cli(&args);
            assert!(
                out.status.success(),
                "{title}: {line}: {}",
                text(&out.stderr)
            );
        }
        sections += 1;
    }
    assert!(sections >= 3, "{sections} seed API sections found");
    for seed in ["Railz-style", "Raily-style", "Railway-style"] {
        assert!(
            titles.iter().any(|t| t.starts_with(seed)),
            "no {seed} section: {titles:?}"
        );
    }
}
