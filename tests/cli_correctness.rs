//! Black-box tests of what a new user of `keygate keys` hit (issue 21.7): rotation of expired
//! keys, the owner cap, effective status, last-used on refused requests, `check-config`'s
//! output, negative durations, and errors that said their cause twice. Every test runs the
//! real binary.

mod common;

use std::process::Output;

use common::*;
use http::StatusCode;
use serde_json::Value;

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

fn refused(out: &Output, code: i32, needles: &[&str]) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
}

/// `keys rotate <id>`: the new key's record.
fn rotate(ws: &Workspace, id: &str, grace: &str) -> Output {
    ws.cli(&["keys", "rotate", id, "--grace", grace])
}

#[test]
fn an_expired_key_cannot_be_rotated_and_a_rotation_keeps_the_expiry() {
    let ws = Workspace::new("http://127.0.0.1:9", "");
    let (with_expiry, _) = ws.create_key(&["--expires-in", "30d"]);
    let (without, _) = ws.create_key(&[]);
    let before = json(&ws.cli(&["keys", "show", &with_expiry]));

    // A rotation with no grace expires the old key now; its successor keeps the old expiry.
    let next = json(&rotate(&ws, &with_expiry, "0s"));
    assert_eq!(next["expires_at"], before["expires_at"]);
    let next_plain = json(&rotate(&ws, &without, "0s"));
    assert!(next_plain.get("expires_at").is_none_or(Value::is_null));

    // Both old keys are now expired: rotating them again is refused, whatever expiry they
    // had, rather than issuing a key that never expires.
    for id in [&with_expiry, &without] {
        let out = rotate(&ws, id, "1h");
        refused(&out, 1, &[id.as_str(), "expired", "keys create"]);
        assert!(
            !text(&out.stderr).contains("Active"),
            "{}",
            text(&out.stderr)
        );
    }
    let listed = json(&ws.cli(&["keys", "list"]));
    assert_eq!(listed.as_array().unwrap().len(), 4, "nothing was created");
}

#[test]
fn expired_and_rotated_out_keys_free_their_cap_slot_and_rotation_respects_the_cap() {
    let ws = Workspace::new("http://127.0.0.1:9", "[keys]\nmax_per_owner = 2\n");
    let owner = ["--owner", "acme"];
    let (a, _) = ws.create_key(&owner);
    let (b, _) = ws.create_key(&owner);
    let mut args = vec!["keys", "create", "--name", "n", "--scopes", "*"];
    args.extend(owner);
    refused(&ws.cli(&args), 3, &["max_per_owner"]);

    // A at the cap rotates (its successor takes its slot); with no grace A is expired.
    let a2 = json(&rotate(&ws, &a, "0s"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    json(&ws.cli(&["keys", "revoke", &b]));
    // Held: a2 only. The expired A does not count, so there is room for one more.
    let c = json(&ws.cli(&args))["id"].as_str().unwrap().to_owned();
    refused(&ws.cli(&args), 3, &["max_per_owner"]);

    // C in its grace shares its slot with C2 ...
    json(&rotate(&ws, &c, "1h"));
    // ... so a second rotation of C (a third key while C2 holds the second slot) is refused,
    // and so is a create.
    refused(&rotate(&ws, &c, "1h"), 3, &["max_per_owner"]);
    refused(&ws.cli(&args), 3, &["max_per_owner"]);

    let listed = json(&ws.cli(&["keys", "list", "--owner", "acme"]));
    let live = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["status"] == "active" && k.get("rotated_to").is_none())
        .count();
    assert_eq!(live, 2, "{listed:#}");
    assert!(listed.as_array().unwrap().iter().any(|k| k["id"] == a2));
}

#[test]
fn list_and_show_say_expired_for_an_expired_key() {
    let ws = Workspace::new("http://127.0.0.1:9", "");
    let (old, _) = ws.create_key(&["--expires-in", "30d"]);
    let new = json(&rotate(&ws, &old, "0s"))["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (suspended, _) = ws.create_key(&[]);
    json(&ws.cli(&["keys", "suspend", &suspended]));

    let listed = json(&ws.cli(&["keys", "list"]));
    let status = |id: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(status(&old), "expired");
    assert_eq!(status(&new), "active");
    assert_eq!(status(&suspended), "suspended");
    assert_eq!(json(&ws.cli(&["keys", "show", &old]))["status"], "expired");
}

#[tokio::test]
async fn a_request_refused_for_its_address_does_not_count_as_a_use() {
    let upstream = Upstream::start().await;
    let ws = Workspace::new(&upstream.url(), "");
    let (fenced, fenced_key) = ws.create_key(&["--allow-ip", "10.0.0.0/8"]);
    let (open, open_key) = ws.create_key(&[]);
    let mut keygate = ws.serve();

    let reply = get(&keygate.url("/thing"), &[("x-api-key", &fenced_key)]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error_code(), "ip_not_allowed");
    let reply = get(&keygate.url("/thing"), &[("x-api-key", &open_key)]).await;
    assert_eq!(reply.status, StatusCode::OK);

    // SIGTERM flushes the last-used write-behind before exit.
    keygate.signal("TERM");
    assert!(keygate.child.wait().unwrap().success());

    let shown = json(&ws.cli(&["keys", "show", &open]));
    assert!(shown["last_used_at"].is_string(), "{shown}");
    let shown = json(&ws.cli(&["keys", "show", &fenced]));
    assert!(shown.get("last_used_at").is_none(), "{shown}");
}

#[test]
fn check_config_output_is_a_config_that_checks_to_the_same_output() {
    let ws = Workspace::new("http://127.0.0.1:9", "");
    // A config using most sections: plans, routes, the unmatched policy, suspension, Redis.
    let config = "\
[listen]
public = \"127.0.0.1:0\"
admin = \"127.0.0.1:0\"
manage = \"127.0.0.1:0\"
[server]
max_body_bytes = 1000
[upstream]
url = \"http://127.0.0.1:9\"
[store]
kind = \"redis\"
url = \"redis://127.0.0.1:1\"
[auth]
unmatched = \"scope:misc\"
public_paths = [\"/health\"]
[keys]
max_per_owner = 2
max_age = \"90d\"
warn_before = \"7d\"
[plans.free]
per_second = 5
per_hour = 100
[limits]
default_plan = \"free\"
[limits.suspend]
after = 10
within = \"1m\"
for = \"5m\"
[environments.staging]
upstream = \"http://127.0.0.1:7\"
plan = \"free\"
[cors]
allow_origins = [\"https://app.example.com\"]
[[route]]
path = \"/v1/things/{workspace}/**\"
methods = [\"GET\"]
scopes = [\"things:read\"]
[[route]]
path = \"/v1/admin\"
scopes_all = [\"a:b\", \"c:d\"]
environments = [\"live\"]
";
    std::fs::write(ws.config(), config).unwrap();
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.toml");
    for source in [ws.config(), std::path::PathBuf::from(shipped)] {
        let first = std::process::Command::new(BIN)
            .args(["check-config", "-c"])
            .arg(&source)
            .env_remove("KEYGATE_CONFIG")
            .output()
            .unwrap();
        assert!(first.status.success(), "{}", text(&first.stderr));
        let printed = ws.dir.path().join("printed.toml");
        std::fs::write(&printed, &first.stdout).unwrap();
        let again = std::process::Command::new(BIN)
            .args(["check-config", "-c"])
            .arg(&printed)
            .env_remove("KEYGATE_CONFIG")
            .output()
            .unwrap();
        assert!(
            again.status.success(),
            "{source:?}'s output is not a config: {}\n{}",
            text(&again.stderr),
            text(&first.stdout)
        );
        // The same effective values (the first line names the file).
        let body = |o: &Output| text(&o.stdout).split_once('\n').unwrap().1.to_owned();
        assert_eq!(body(&first), body(&again));
    }
}

#[test]
fn negative_and_zero_durations_name_the_flag_and_the_fix() {
    let ws = Workspace::new("http://127.0.0.1:9", "");
    let create = |lifetime: &str| {
        ws.cli(&[
            "keys",
            "create",
            "--name",
            "n",
            "--scopes",
            "*",
            "--expires-in",
            lifetime,
        ])
    };
    for lifetime in ["-5d", "-1s"] {
        let out = create(lifetime);
        refused(&out, 1, &["--expires-in", "negative", "30d"]);
        assert!(!text(&out.stderr).contains("unexpected argument"));
    }
    refused(&create("0s"), 1, &["--expires-in", "longer than 0", "30d"]);
    assert!(!ws.keys_file().exists());

    let (id, _) = ws.create_key(&[]);
    let out = rotate(&ws, &id, "-1h");
    refused(&out, 1, &["--grace", "negative", "0s"]);
    assert!(!text(&out.stderr).contains("unexpected argument"));
}

#[test]
fn an_os_error_is_said_once() {
    // The keys file's folder is a regular file: every read and write fails with ENOTDIR.
    let ws = Workspace::with_store(
        "http://127.0.0.1:9",
        "[store]\nkind = \"file\"\npath = \"blocker/keys.json\"\n",
        "",
    );
    std::fs::write(ws.dir.path().join("blocker"), b"").unwrap();
    for args in [
        vec!["keys", "list"],
        vec!["keys", "show", "key_x"],
        vec!["keys", "create", "--name", "n", "--scopes", "*"],
    ] {
        let out = ws.cli(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        // The message (log lines before it may name the same failure, once each).
        let message = stderr.lines().find(|l| l.starts_with("error: ")).unwrap();
        assert!(message.contains("blocker/keys.json"), "{args:?}: {stderr}");
        assert_eq!(
            message.matches("(os error 20)").count(),
            1,
            "{args:?}: {stderr}"
        );
    }

    let out = std::process::Command::new(BIN)
        .args(["check-config", "-c", "/nonexistent/proxy.toml"])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("(os error 2)").count(), 1, "{stderr}");
}

#[test]
fn keys_list_filters_pages_and_formats() {
    let ws = Workspace::new("http://127.0.0.1:9", "");
    let (a, _) = ws.create_key(&[]);
    let (b, _) = ws.create_key(&["--env", "test"]);
    let (c, _) = ws.create_key(&[]);
    let (d, _) = ws.create_key(&[]);
    let (f, _) = ws.create_key(&[]);
    json(&ws.cli(&["keys", "suspend", &c]));
    json(&ws.cli(&["keys", "revoke", &f]));
    let e = json(&rotate(&ws, &d, "0s"))["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let ids = |args: &[&str]| -> Vec<&str> {
        let mut all = vec!["keys", "list"];
        all.extend(args);
        json(&ws.cli(&all))
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                let id = k["id"].as_str().unwrap();
                [&a, &b, &c, &d, &e, &f]
                    .into_iter()
                    .find(|known| known.as_str() == id)
                    .unwrap()
                    .as_str()
            })
            .collect()
    };
    // Not a terminal: the JSON array, as before.
    assert_eq!(
        ids(&[]),
        [
            a.as_str(),
            b.as_str(),
            c.as_str(),
            d.as_str(),
            f.as_str(),
            e.as_str()
        ]
    );
    assert_eq!(ids(&["--status", "expired"]), [d.as_str()]);
    assert_eq!(ids(&["--status", "suspended"]), [c.as_str()]);
    assert_eq!(ids(&["--status", "revoked"]), [f.as_str()]);
    assert_eq!(
        ids(&["--status", "active"]),
        [a.as_str(), b.as_str(), e.as_str()]
    );
    assert_eq!(ids(&["--env", "test"]), [b.as_str()]);
    assert_eq!(
        ids(&["--env", "live", "--status", "active"]),
        [a.as_str(), e.as_str()]
    );
    assert_eq!(ids(&["--limit", "2"]), [a.as_str(), b.as_str()]);
    assert_eq!(
        ids(&["--limit", "2", "--after", &b]),
        [c.as_str(), d.as_str()]
    );
    assert_eq!(ids(&["--after", &e]), Vec::<&str>::new());
    // Nothing was used, and everything was made just now.
    assert_eq!(ids(&["--unused-for", "1h"]), Vec::<&str>::new());
    assert_eq!(ids(&["--unused-for", "0s"]).len(), 6);
    refused(
        &ws.cli(&["keys", "list", "--after", "key_nope"]),
        1,
        &["--after", "key_nope"],
    );

    let out = ws.cli(&["keys", "list", "--format", "jsonl", "--status", "active"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["id"], a.as_str());

    let out = ws.cli(&["keys", "list", "--format", "table"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 7, "{table}");
    assert!(
        rows[0].starts_with("ID") && rows[0].contains("STATUS"),
        "{table}"
    );
    let row_d = rows.iter().find(|r| r.starts_with(d.as_str())).unwrap();
    assert!(row_d.contains("expired"), "{table}");
}

/// Single-key commands find their key in the file without reading all of it when the file is
/// as keygate writes it, and still work on a file rewritten in another layout (by hand, by a
/// tool): the same answers either way, and the file stays one valid document.
#[test]
fn single_key_commands_work_on_keygates_layout_and_on_any_other() {
    let ws = Workspace::new("http://127.0.0.1:9", "");
    for compact in [false, true] {
        let (a, _) = ws.create_key(&["--owner", "o1"]);
        let (b, _) = ws.create_key(&["--owner", "o2"]);
        // The second round rewrites the file compact: the slow path, whole document.
        if compact {
            let doc: Value =
                serde_json::from_slice(&std::fs::read(ws.keys_file()).unwrap()).unwrap();
            std::fs::write(ws.keys_file(), serde_json::to_vec(&doc).unwrap()).unwrap();
        }
        assert_eq!(json(&ws.cli(&["keys", "show", &a]))["owner"], "o1");
        assert_eq!(json(&ws.cli(&["keys", "show", &b]))["owner"], "o2");
        assert_eq!(json(&ws.cli(&["keys", "revoke", &a]))["status"], "revoked");
        let next = json(&rotate(&ws, &b, "1h"));
        assert_eq!(next["rotated_from"], b.as_str());
        assert_eq!(json(&ws.cli(&["keys", "show", &a]))["status"], "revoked");
        let shown = json(&ws.cli(&["keys", "show", &b]));
        assert_eq!(shown["rotated_to"], next["id"]);
        refused(&ws.cli(&["keys", "show", "key_nope"]), 1, &["key_nope"]);
        let doc: Value = serde_json::from_slice(&std::fs::read(ws.keys_file()).unwrap()).unwrap();
        let ids: Vec<&str> = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["record"]["id"].as_str().unwrap())
            .collect();
        let unique: std::collections::HashSet<&&str> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{ids:?}");
        assert!(ids.contains(&a.as_str()) && ids.contains(&b.as_str()));
    }
    // Written by keygate again, the file is back in its own layout (the same bytes as the
    // whole-document printer's, up to the order of fields).
    let bytes = std::fs::read(ws.keys_file()).unwrap();
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    let mut pretty = serde_json::to_vec_pretty(&doc).unwrap();
    pretty.push(b'\n');
    assert_eq!(text(&bytes).len(), text(&pretty).len());
}

/// On Redis too, a key that expired by time alone (no write to say so) frees its owner's cap
/// slot, and a rotated-out key shares its slot with its successor.
#[test]
fn on_redis_expired_keys_free_their_cap_slot() {
    let redis = common::redis::RedisServer::start();
    let ws = Workspace::redis(
        "http://127.0.0.1:9",
        &redis.url(),
        "[keys]\nmax_per_owner = 2\n",
    );
    let owner = ["--owner", "acme"];
    let (a, _) = ws.create_key(&["--owner", "acme", "--expires-in", "1s"]);
    let (b, _) = ws.create_key(&owner);
    let mut args = vec!["keys", "create", "--name", "n", "--scopes", "*"];
    args.extend(owner);
    refused(&ws.cli(&args), 3, &["max_per_owner"]);
    // Rotating B at the cap fits: B shares its slot with its successor.
    json(&rotate(&ws, &b, "1h"));
    // Past A's expiry (no write tells the store), its slot is free again.
    while json(&ws.cli(&["keys", "show", &a]))["status"] != "expired" {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    json(&ws.cli(&args));
    refused(&ws.cli(&args), 3, &["max_per_owner"]);
}

/// Waits (without asserting on time) until `keys show` reads the key as expired.
fn until_expired(ws: &Workspace, id: &str) {
    while json(&ws.cli(&["keys", "show", id]))["status"] != "expired" {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// An expired key holds no slot under `max_per_owner`, so `keys update` giving it a new
/// expiry (or none) takes one, as `keys create` does: refused at the cap (exit 3, the same
/// message), allowed once a slot is free. Other edits of it take no slot.
fn an_expired_keys_new_expiry_takes_a_cap_slot(ws: &Workspace) {
    let (expired, _) = ws.create_key(&["--owner", "acme", "--expires-in", "1s"]);
    let (live, _) = ws.create_key(&["--owner", "acme"]);
    until_expired(ws, &expired);
    let mut create = vec!["keys", "create", "--name", "n", "--scopes", "*"];
    create.extend(["--owner", "acme"]);
    // The expired key's slot was free: acme is now at its cap of 2.
    json(&ws.cli(&create));
    refused(&ws.cli(&create), 3, &["max_per_owner", "acme"]);
    for lift in [["--expires-in", "30d"], ["--expires-in", "never"]] {
        let mut args = vec!["keys", "update", &expired];
        args.extend(lift);
        refused(&ws.cli(&args), 3, &["max_per_owner", "acme"]);
    }
    let at = humantime::format_rfc3339_seconds(
        std::time::SystemTime::now() + std::time::Duration::from_secs(86_400),
    )
    .to_string();
    refused(
        &ws.cli(&["keys", "update", &expired, "--expires-at", &at]),
        3,
        &["max_per_owner"],
    );
    let still = json(&ws.cli(&["keys", "show", &expired]));
    assert_eq!(still["status"], "expired", "nothing written: {still}");
    // A rename leaves it expired: no slot needed.
    let renamed = json(&ws.cli(&["keys", "update", &expired, "--name", "renamed"]));
    assert_eq!(renamed["name"], "renamed");
    assert_eq!(renamed["status"], "expired");

    // A slot freed, the new expiry goes through, and the key holds the slot from then on.
    json(&ws.cli(&["keys", "revoke", &live]));
    let lifted = json(&ws.cli(&["keys", "update", &expired, "--expires-in", "30d"]));
    assert_eq!(lifted["status"], "active");
    refused(&ws.cli(&create), 3, &["max_per_owner"]);

    // The audit trail has each attempt, with how it ended.
    let out = ws.cli(&["audit", "--key", &expired]);
    let results: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["action"] == "update")
        .map(|e| e["result"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        results,
        [
            "owner_key_limit",
            "owner_key_limit",
            "owner_key_limit",
            "ok",
            "ok"
        ]
    );
}

#[test]
fn an_expired_keys_new_expiry_takes_a_cap_slot_on_the_file_store() {
    let ws = Workspace::new("http://127.0.0.1:9", "[keys]\nmax_per_owner = 2\n");
    an_expired_keys_new_expiry_takes_a_cap_slot(&ws);
}

#[test]
fn an_expired_keys_new_expiry_takes_a_cap_slot_on_redis() {
    let redis = common::redis::RedisServer::start();
    let ws = Workspace::redis(
        "http://127.0.0.1:9",
        &redis.url(),
        "[keys]\nmax_per_owner = 2\n",
    );
    an_expired_keys_new_expiry_takes_a_cap_slot(&ws);
}

#[test]
fn keys_update_changes_only_what_is_given_and_says_what_is_wrong() {
    let ws = Workspace::new("http://127.0.0.1:9", "");
    let (id, _) = ws.create_key(&["--expires-in", "30d"]);
    let before = json(&ws.cli(&["keys", "show", &id]));
    let after = json(&ws.cli(&["keys", "update", &id, "--scopes", "a:read,b:read"]));
    assert_eq!(after["scopes"], serde_json::json!(["a:read", "b:read"]));
    assert_eq!(after["expires_at"], before["expires_at"]);
    assert_eq!(after["name"], before["name"]);
    let never = json(&ws.cli(&["keys", "update", &id, "--expires-in", "never"]));
    assert!(never["expires_at"].is_null(), "{never}");
    refused(&ws.cli(&["keys", "update", &id]), 1, &["nothing to change"]);
    refused(
        &ws.cli(&["keys", "update", &id, "--expires-in", "-5d"]),
        1,
        &["--expires-in", "negative"],
    );
    refused(
        &ws.cli(&["keys", "update", &id, "--plan", "nope"]),
        1,
        &["--plan", "nope"],
    );
    refused(
        &ws.cli(&["keys", "update", "key_missing", "--name", "x"]),
        1,
        &["key_missing"],
    );
}

/// `keys update --allow-ip` and `--allow-origin` replace the key's lists, `any` and `default`
/// empty them, and what does not fit the key is refused by flag, leaving it as it was; the
/// audit trail names what changed.
#[test]
fn keys_update_replaces_a_key_s_ip_allowlist_and_browser_origins() {
    let ws = Workspace::new("http://127.0.0.1:9", "");
    let (public, _) = ws.create_key(&["--type", "public", "--allow-origin", "https://a.example"]);
    let (secret, _) = ws.create_key(&[]);
    let update = |id: &str, extra: &[&str]| {
        let mut args = vec!["keys", "update", id];
        args.extend_from_slice(extra);
        ws.cli(&args)
    };
    let moved = json(&update(
        &public,
        &[
            "--allow-origin",
            "https://b.example",
            "--allow-origin",
            "https://*.c.example",
        ],
    ));
    assert_eq!(
        moved["allowed_origins"],
        serde_json::json!(["https://b.example", "https://*.c.example"])
    );
    // An empty list is left out of a key's record.
    let none = |record: &Value, field: &str| {
        record
            .get(field)
            .is_none_or(|v| v == &serde_json::json!([]))
    };
    let back = json(&update(&public, &["--allow-origin", "default"]));
    assert!(none(&back, "allowed_origins"), "{back}");
    let narrowed = json(&update(
        &secret,
        &["--allow-ip", "10.0.0.0/8", "--allow-ip", "::1"],
    ));
    assert_eq!(
        narrowed["allowed_cidrs"],
        serde_json::json!(["10.0.0.0/8", "::1/128"])
    );
    let open = json(&update(&secret, &["--allow-ip", "any"]));
    assert!(none(&open, "allowed_cidrs"), "{open}");
    refused(
        &update(&secret, &["--allow-origin", "https://a.example"]),
        1,
        &["--allow-origin", "only public keys"],
    );
    refused(
        &update(&secret, &["--allow-ip", "nope"]),
        1,
        &["--allow-ip", "nope"],
    );
    refused(
        &update(&public, &["--allow-origin", "a.example/path"]),
        1,
        &["--allow-origin"],
    );
    let unchanged = json(&ws.cli(&["keys", "show", &secret]));
    assert!(none(&unchanged, "allowed_origins"), "{unchanged}");
    let out = ws.cli(&["audit", "--key", &public]);
    let updates: Vec<(Value, Value)> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["action"] == "update")
        .map(|e| (e["result"].clone(), e["changed"].clone()))
        .collect();
    let origins = serde_json::json!(["allowed_origins"]);
    assert_eq!(updates.len(), 3, "{updates:?}");
    assert_eq!(updates[0], ("ok".into(), origins.clone()), "{updates:?}");
    assert_eq!(updates[1], ("ok".into(), origins), "{updates:?}");
    assert_ne!(updates[2].0, "ok", "the refused one: {updates:?}");
}
