//! Rotation reminders (`[keys] max_age`, `[keys] warn_before`): due keys keep working, their
//! responses carry `Deprecation` and `Sunset`, the gauge counts them, `keys list
//! --rotation-due` lists them.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

const DAY: u64 = 86_400;

/// Sets a date of a key's record in the keys file (the CLI only makes keys dated now).
fn set_date(ws: &Workspace, id: &str, field: &str, at: SystemTime) {
    let mut file: Value = serde_json::from_slice(&std::fs::read(ws.keys_file()).unwrap()).unwrap();
    let entry = file["keys"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|k| k["record"]["id"] == id)
        .unwrap();
    entry["record"][field] = humantime::format_rfc3339(at).to_string().into();
    std::fs::write(ws.keys_file(), serde_json::to_vec_pretty(&file).unwrap()).unwrap();
}

/// Makes a key `days` old.
fn age(ws: &Workspace, id: &str, days: u64) -> SystemTime {
    let created = SystemTime::now() - Duration::from_secs(days * DAY);
    set_date(ws, id, "created_at", created);
    created
}

fn expiry(ws: &Workspace, id: &str) -> SystemTime {
    let shown: Value = serde_json::from_slice(&ws.cli(&["keys", "show", id]).stdout).unwrap();
    humantime::parse_rfc3339(shown["expires_at"].as_str().unwrap()).unwrap()
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn listed(ws: &Workspace, args: &[&str]) -> Vec<String> {
    let mut all = vec!["keys", "list"];
    all.extend_from_slice(args);
    let out = ws.cli(&all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_due_key_refused_by_its_limit_still_hears_when_to_rotate() {
    let upstream = Upstream::start().await;
    let ws = Workspace::new(
        &upstream.url(),
        "[keys]\nmax_age = \"90d\"\n[plans.tiny]\nper_minute = 1\n",
    );
    let (id, key) = ws.create_key(&["--plan", "tiny"]);
    let created = age(&ws, &id, 100);
    let kg = ws.serve();
    let replace_by = secs(created + Duration::from_secs(90 * DAY));
    // Over HTTP/1.1 (keygate's own engine), then HTTP/2 (hyper's): the first request is
    // served, every later one refused by the limit, each carrying the reminder.
    let mut replies = Vec::new();
    for h2 in [false, false, true] {
        replies.push(if h2 {
            let req = Request::get(kg.url("/v1/x"))
                .header("x-api-key", &key)
                .body(Full::new(Bytes::new()))
                .unwrap();
            request_h2(req).await
        } else {
            get(&kg.url("/v1/x"), &[("x-api-key", &key)]).await
        });
    }
    let statuses: Vec<StatusCode> = replies.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    for (i, reply) in replies.iter().enumerate() {
        let deprecation = reply
            .headers
            .get("deprecation")
            .map(|v| v.to_str().unwrap());
        let at: u64 = deprecation
            .and_then(|d| d.strip_prefix('@'))
            .unwrap_or_else(|| panic!("reply {i}: {:?}", reply.headers))
            .parse()
            .unwrap();
        assert_eq!(at / DAY, replace_by / DAY, "reply {i}");
        assert!(reply.headers.contains_key("sunset"), "reply {i}");
    }
}

#[tokio::test]
async fn due_keys_still_work_and_say_when_to_rotate() {
    let upstream = Upstream::start().await;
    let ws = Workspace::new(
        &upstream.url(),
        "[keys]\nmax_age = \"90d\"\nwarn_before = \"14d\"\n",
    );
    let (fresh_id, fresh) = ws.create_key(&[]);
    let (old_id, old) = ws.create_key(&[]);
    let (nearly_id, nearly) = ws.create_key(&[]);
    let (expiring_id, expiring) = ws.create_key(&["--expires-in", "7d"]);
    let (later_id, later) = ws.create_key(&["--expires-in", "60d"]);
    let (revoked_id, _) = ws.create_key(&[]);
    let (expired_id, _) = ws.create_key(&[]);
    let (rotated_id, rotated) = ws.create_key(&[]);
    let old_created = age(&ws, &old_id, 100);
    let nearly_created = age(&ws, &nearly_id, 80);
    age(&ws, &revoked_id, 100);
    assert!(ws.cli(&["keys", "revoke", &revoked_id]).status.success());
    age(&ws, &expired_id, 100);
    set_date(
        &ws,
        &expired_id,
        "expires_at",
        SystemTime::now() - Duration::from_secs(DAY),
    );
    // Rotated when due: the old key works through its grace, still saying when it stops,
    // but nobody has to rotate it again.
    let rotated_created = age(&ws, &rotated_id, 100);
    let out = ws.cli(&["keys", "rotate", &rotated_id, "--grace", "2d"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expiring_at = expiry(&ws, &expiring_id);
    let grace_ends = expiry(&ws, &rotated_id);

    // The CLI lists exactly the keys still to rotate: never a revoked, expired or rotated one
    // (nor the rotated key's fresh successor).
    let mut want = vec![old_id.clone(), nearly_id.clone(), expiring_id.clone()];
    want.sort();
    assert_eq!(listed(&ws, &["--rotation-due"]), want);
    assert_eq!(
        listed(&ws, &["--rotation-due", "--owner", "nobody"]),
        Vec::<String>::new()
    );
    assert_eq!(listed(&ws, &[]).len(), 9);

    let kg = ws.serve();
    // (key, due: (Deprecation date, Sunset date)).
    let day = |t: SystemTime| secs(t) / DAY;
    let old_by = old_created + Duration::from_secs(90 * DAY);
    let nearly_by = nearly_created + Duration::from_secs(90 * DAY);
    type Row<'a> = (&'a str, &'a str, Option<(SystemTime, SystemTime)>);
    let rows: Vec<Row> = vec![
        ("fresh", &fresh, None),
        ("60 days from expiry", &later, None),
        ("100 days old", &old, Some((old_by, old_by))),
        (
            "80 days old, due in 10",
            &nearly,
            Some((nearly_by, nearly_by)),
        ),
        (
            "expiring in 7 days",
            &expiring,
            Some((expiring_at, expiring_at)),
        ),
        (
            "rotated, in its grace",
            &rotated,
            Some((rotated_created + Duration::from_secs(90 * DAY), grace_ends)),
        ),
    ];
    // Each over HTTP/2 (hyper's engine) and HTTP/1.1 (keygate's own).
    let rows: Vec<(Row, bool)> = rows
        .into_iter()
        .flat_map(|row| [(row, true), (row, false)])
        .collect();
    for ((name, key, due), h2) in rows {
        let reply = if h2 {
            let req = Request::get(kg.url("/v1/x"))
                .header("x-api-key", key)
                .body(Full::new(Bytes::new()))
                .unwrap();
            request_h2(req).await
        } else {
            get(&kg.url("/v1/x"), &[("x-api-key", key)]).await
        };
        let name = format!("{name} over {}", if h2 { "HTTP/2" } else { "HTTP/1.1" });
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{name}: a due key still works"
        );
        let header = |n: &str| reply.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
        match due {
            None => {
                assert_eq!(header("sunset"), None, "{name}");
                assert_eq!(header("deprecation"), None, "{name}");
            }
            Some((replace_by, sunset)) => {
                let deprecation = header("deprecation").unwrap_or_else(|| panic!("{name}"));
                let at: u64 = deprecation.strip_prefix('@').unwrap().parse().unwrap();
                assert_eq!(at / DAY, day(replace_by), "{name}: {deprecation}");
                let sunset_header = header("sunset").unwrap();
                let parsed = httpdate::parse_http_date(&sunset_header).unwrap();
                assert_eq!(day(parsed), day(sunset), "{name}: {sunset_header}");
            }
        }
    }

    // The gauge counts the same three (the first scan runs at start): what operators still
    // have to rotate.
    let counted = eventually(Duration::from_secs(10), || async {
        kg.metric("keygate_keys_due_for_rotation").await == Some(3.0)
    })
    .await;
    assert!(
        counted.is_some(),
        "gauge: {:?}",
        kg.metric("keygate_keys_due_for_rotation").await
    );
    let _ = (fresh_id, later_id);
}

#[test]
fn without_a_policy_nothing_is_due_and_the_cli_says_what_to_set() {
    let ws = Workspace::new("http://127.0.0.1:9", "");
    ws.create_key(&["--expires-in", "1d"]);
    let out = ws.cli(&["keys", "list", "--rotation-due"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("max_age"),
        "{}",
        text(&out.stderr)
    );
}
