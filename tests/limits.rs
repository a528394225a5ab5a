//! Black-box tests of plans and rate limits: the header set on 200 and 429 in both reset
//! styles, per-key overrides, and refusals that count against nothing.

mod common;

use common::*;
use http::StatusCode;

const PLANS: &str = r#"
[plans.tiny]
per_minute = 3
per_hour = 100

[plans.pro]
per_second = 100
per_day = 10000

[limits]
default_plan = "tiny"
"#;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn headers_on_200_and_429_with_epoch_reset() {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), PLANS);
    let (_, key) = ws.create_key(&[]);
    let kg = ws.serve();
    let url = kg.url("/v1/x");
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let reply = get(&url, &[("x-api-key", &key)]).await;
        assert_eq!(reply.status, StatusCode::OK);
        let h = &reply.headers;
        assert_eq!(h["x-ratelimit-limit"], "3");
        remaining.push(
            h["x-ratelimit-remaining"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap(),
        );
        let reset: u64 = h["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
        assert!(
            reset >= now_secs() && reset <= now_secs() + 61,
            "epoch reset {reset}"
        );
        assert_eq!(h["ratelimit-policy"], "\"per_minute\";q=3;w=60");
        assert!(
            h["ratelimit"]
                .to_str()
                .unwrap()
                .starts_with("\"per_minute\";r=")
        );
    }
    assert_eq!(remaining, vec![2, 1, 0]);

    let refused = get(&url, &[("x-api-key", &key)]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.error_code(), "rate_limit_exceeded");
    assert!(
        text(&refused.body).contains("per minute"),
        "{}",
        text(&refused.body)
    );
    let h = &refused.headers;
    assert_eq!(h["x-ratelimit-remaining"], "0");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    let t: u64 = h["ratelimit"]
        .to_str()
        .unwrap()
        .rsplit("t=")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        retry >= 1 && retry >= t,
        "Retry-After {retry} before the reset {t}"
    );
    assert!(h["ratelimit"].to_str().unwrap().contains(";r=0;"));
}

#[tokio::test]
async fn delta_reset_and_per_key_overrides() {
    let up = Upstream::start().await;
    let ws = Workspace::new(&up.url(), &format!("{PLANS}reset = \"delta\"\n"));
    let (_, key) = ws.create_key(&["--plan", "pro", "--limit", "per_second=2"]);
    let kg = ws.serve();
    let url = kg.url("/v1/x");
    let first = get(&url, &[("x-api-key", &key)]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        first.headers["x-ratelimit-limit"], "2",
        "the key's own per_second"
    );
    let reset: u64 = first.headers["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reset <= 1, "delta seconds, got {reset}");
    get(&url, &[("x-api-key", &key)]).await;
    let refused = get(&url, &[("x-api-key", &key)]).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers["retry-after"], "1");

    // Unknown plans and bad overrides are refused at creation, not discovered in traffic.
    let out = ws.cli(&[
        "keys", "create", "--name", "x", "--scopes", "*", "--plan", "gold",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("gold"));
    let out = ws.cli(&[
        "keys",
        "create",
        "--name",
        "x",
        "--scopes",
        "*",
        "--limit",
        "per_year=1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("per_year"));
}

#[tokio::test]
async fn refused_requests_do_not_consume_quota() {
    let up = Upstream::start().await;
    let ws = Workspace::new(
        &up.url(),
        "[plans.p]\nper_hour = 2\n[limits]\ndefault_plan = \"p\"\n",
    );
    let (_, key) = ws.create_key(&["--allow-ip", "10.0.0.0/8"]);
    let (_, good) = ws.create_key(&[]);
    let kg = ws.serve();
    let url = kg.url("/");
    // 403s (outside the allowlist) never reach the limiter: no headers, no count.
    for _ in 0..5 {
        let reply = get(&url, &[("x-api-key", &key)]).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert!(!reply.headers.contains_key("x-ratelimit-remaining"));
    }
    assert_eq!(
        get(&url, &[("x-api-key", &good)]).await.headers["x-ratelimit-remaining"],
        "1"
    );
    assert_eq!(
        get(&url, &[("x-api-key", &good)]).await.headers["x-ratelimit-remaining"],
        "0"
    );
    for _ in 0..3 {
        assert_eq!(
            get(&url, &[("x-api-key", &good)]).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    // Keys without a plan (no default) carry no rate-limit headers at all.
    let plain = Workspace::new(&up.url(), "");
    let (_, free) = plain.create_key(&[]);
    let kg2 = plain.serve();
    let reply = get(&kg2.url("/"), &[("x-api-key", &free)]).await;
    assert!(!reply.headers.contains_key("x-ratelimit-limit"));
}

#[test]
fn check_config_validates_plans() {
    let ws = Workspace::new("http://127.0.0.1:9", "");
    for (extra, needle) in [
        ("[plans.free]\n", "sets no limit"),
        ("[plans.free]\nper_hour = 0\n", "[plans.free]"),
        ("[plans.free]\nper_fortnight = 1\n", "per_fortnight"),
        ("[plans.free]\nburst = 5\nper_hour = 1\n", "burst needs"),
        ("[limits]\ndefault_plan = \"gold\"\n", "limits.default_plan"),
        ("[limits]\nreset = \"soon\"\n", "limits.reset"),
        ("[limits]\nlocal_share = 0\n", "limits.local_share"),
        (
            "[limits.suspend]\nafter = 0\nwithin = \"1m\"\nfor = \"1m\"\n",
            "limits.suspend.after",
        ),
        (
            "[limits.suspend]\nafter = 5\nwithin = \"0s\"\nfor = \"1m\"\n",
            "limits.suspend.within",
        ),
        (
            "[limits.suspend]\nafter = 5\nwithin = \"1m\"\nfor = \"10ms\"\n",
            "limits.suspend.for",
        ),
        ("[limits.suspend]\nafter = 5\nwithin = \"1m\"\n", "for"),
        (
            "[limits.suspend]\nafter = 5\nwithin = \"1m\"\nfor = \"1m\"\nfour = 1\n",
            "four",
        ),
    ] {
        std::fs::write(
            ws.config(),
            format!(
                "[upstream]\nurl = \"http://127.0.0.1:9\"\n[auth]\nunmatched = \"allow\"\n{extra}"
            ),
        )
        .unwrap();
        let out = ws.cli(&["check-config"]);
        assert_eq!(out.status.code(), Some(1), "{extra}");
        assert!(
            text(&out.stderr).contains(needle),
            "{needle}: {}",
            text(&out.stderr)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Shared quotas, suspension and `keys usage` against a real redis-server.

mod shared {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use super::common::fault::{Fault, FaultProxy};
    use super::common::redis::{RedisCluster, RedisServer};
    use super::common::*;
    use super::now_secs;
    use http::StatusCode;

    /// The value of a metric line (with its labels, if any) on a proxy's `/metrics`.
    async fn metric(kg: &Keygate, series: &str) -> f64 {
        let text = text(&get(&kg.admin_url("/metrics"), &[]).await.body);
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Requests the sidecars admitted without the store (`keygate_quota_decided_alone_total`).
    async fn decided_alone(sidecars: &[Keygate]) -> f64 {
        let mut alone = 0.0;
        for kg in sidecars {
            alone += metric(
                kg,
                "keygate_quota_decided_alone_total{outcome=\"admitted\"}",
            )
            .await;
        }
        alone
    }

    /// An hourly quota test must not straddle the top of the hour: wait it out if close.
    async fn clear_of_the_hour_boundary() {
        let into = now_secs() % 3600;
        if into > 3600 - 45 {
            tokio::time::sleep(Duration::from_secs(3600 - into + 1)).await;
        }
    }

    fn hourly(limit: u64) -> String {
        format!("[plans.metered]\nper_hour = {limit}\n[limits]\ndefault_plan = \"metered\"\n")
    }

    /// The key's hourly counter in Redis: requests handed out (granted, or admitted alone
    /// and reported), less those handed back.
    fn hourly_used(redis: &RedisServer, id: &str) -> impl Fn() -> u64 {
        let hash = redis
            .cli(&["GET", &format!("{{keygate}}:id:{id}")])
            .trim()
            .to_owned();
        move || {
            redis
                .cli(&["HGET", &format!("{{keygate}}:quota:{hash}:hour"), "used"])
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        }
    }

    /// `c`, cut off from Redis by `proxy` until now, reaches it again.
    async fn bring_back(c: &Keygate, proxy: &FaultProxy) {
        assert_eq!(
            metric(c, "keygate_quota_fallback").await,
            1.0,
            "c was still cut off"
        );
        proxy.set_all(Fault::Pass);
        eventually(Duration::from_secs(15), || async {
            metric(c, "keygate_quota_fallback").await == 0.0
        })
        .await
        .expect("c never reached Redis again");
    }

    /// Waits until each of `sidecars` sizes its budgets by `n` live sidecars.
    async fn all_count(sidecars: &[&Keygate], n: f64) {
        for kg in sidecars {
            eventually(Duration::from_secs(10), || async {
                metric(kg, "keygate_quota_live_sidecars").await == n
            })
            .await
            .expect("every sidecar counts them all");
        }
    }

    /// Sends `n` requests with `key` to each of `sidecars`, each admitted; returns how many.
    async fn admit_each(sidecars: &[&Keygate], key: &str, n: u64) -> u64 {
        for kg in sidecars {
            for _ in 0..n {
                let reply = get(&kg.url("/"), &[("x-api-key", key)]).await;
                assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply.body));
            }
        }
        n * sidecars.len() as u64
    }

    /// Sends requests with `key` until one is refused (429); returns how many were admitted.
    async fn admitted_until_refused(kg: &Keygate, key: &str, at_most: u64) -> u64 {
        let mut admitted = 0;
        loop {
            let reply = get(&kg.url("/"), &[("x-api-key", key)]).await;
            match reply.status {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => return admitted,
                other => panic!("unexpected {other}: {}", text(&reply.body)),
            }
            assert!(admitted <= at_most, "never refused after {at_most}");
        }
    }

    #[tokio::test]
    async fn three_sidecars_share_one_hourly_quota() {
        clear_of_the_hour_boundary().await;
        let redis = RedisServer::start();
        let up = Upstream::start().await;
        let ws = Workspace::redis(&up.url(), &redis.url(), &hourly(1000));
        let (_, key) = ws.create_key(&[]);
        let sidecars: Arc<Vec<Keygate>> = Arc::new((0..3).map(|_| ws.serve()).collect());
        let before = redis.calls("evalsha") + redis.calls("eval");

        let (admitted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let key = Arc::new(key);
        let mut workers = Vec::new();
        for w in 0..30usize {
            let (sidecars, key) = (sidecars.clone(), key.clone());
            let (admitted, refused) = (admitted.clone(), refused.clone());
            workers.push(tokio::spawn(async move {
                for i in 0..60usize {
                    let kg = &sidecars[(w + i) % 3];
                    let reply = get(&kg.url("/"), &[("x-api-key", key.as_str())]).await;
                    match reply.status {
                        StatusCode::OK => admitted.fetch_add(1, Ordering::Relaxed),
                        StatusCode::TOO_MANY_REQUESTS => refused.fetch_add(1, Ordering::Relaxed),
                        other => panic!("unexpected {other}: {}", text(&reply.body)),
                    };
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
        let (admitted, refused) = (
            admitted.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
        );
        let scripts = redis.calls("evalsha") + redis.calls("eval") - before;
        let mut refills = 0.0;
        for kg in sidecars.iter() {
            refills += metric(kg, "keygate_quota_lease_refills_total{outcome=\"ok\"}").await;
            assert_eq!(metric(kg, "keygate_quota_fallback").await, 0.0);
        }
        eprintln!(
            "3 sidecars, per_hour = 1000, 1800 requests: {admitted} admitted, {refused} refused; \
             {refills} lease grants, {scripts} Redis scripts in all (grants + 1/s sync per sidecar)"
        );
        assert_eq!(admitted + refused, 1800);
        assert!(admitted <= 1000, "over-admitted: {admitted}");
        assert!(admitted >= 980, "under-admitted: {admitted}");
    }

    /// Three sidecars spend one hourly quota of 3000 while Redis freezes (SIGSTOP) for
    /// `pause` once about a third of it is used. Grants whose replies are lost to the pause,
    /// and reports retried across it, must neither lose quota nor count it twice.
    ///
    /// The window ends exactly at its limit. A grant that answers later than `[store]
    /// timeout` just after the pause (this machine, loaded by the rest of the suite) cuts
    /// its sidecar off again for a moment; it then admits alone, reported or not, and the
    /// hold after the outage covers that too. Until 2026-12-07 it did not cover a sidecar
    /// that had reported, and this test saw 3,001 a few times in several hundred runs (then
    /// allowed for requests decided alone 750 ms after the pause, and still failing twice in
    /// four CI runs with none). `[store] timeout` is 750 ms so that a loaded machine cuts
    /// sidecars off less often; every pause still outlasts it.
    ///
    /// `quota_fallback`: with `"refuse"`, requests whose lease is spent during the pause get
    /// 503 `quota_store_unavailable` (and there must be some); none is admitted alone.
    async fn quota_across_a_redis_pause(pause: Duration, quota_fallback: &str) {
        const LIMIT: u64 = 3_000;
        const STORE_TIMEOUT: Duration = Duration::from_millis(750);
        clear_of_the_hour_boundary().await;
        let redis = RedisServer::start();
        let up = Upstream::start().await;
        let store = format!(
            "[store]\nkind = \"redis\"\nurl = \"{}\"\nepoch_poll = \"1s\"\ntimeout = \"750ms\"\n\
             quota_fallback = \"{quota_fallback}\"\n",
            redis.url()
        );
        let refusing = quota_fallback == "refuse";
        let ws = Workspace::with_store(&up.url(), &store, &hourly(LIMIT));
        let (id, key) = ws.create_key(&[]);
        let sidecars: Arc<Vec<Keygate>> = Arc::new((0..3).map(|_| ws.serve()).collect());
        let key = Arc::new(key);
        // The key cached everywhere (its lookup is not what the pause tests).
        for kg in sidecars.iter() {
            let reply = get(&kg.url("/"), &[("x-api-key", key.as_str())]).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply.body));
        }
        let admitted = Arc::new(AtomicU64::new(3));
        let unavailable = Arc::new(AtomicU64::new(0));
        let resumed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..12usize {
            let (sidecars, key) = (sidecars.clone(), key.clone());
            let (admitted, resumed) = (admitted.clone(), resumed.clone());
            let unavailable = unavailable.clone();
            workers.push(tokio::spawn(async move {
                let kg = &sidecars[w % 3];
                // Until refused for a while once Redis is back: everything handed out is spent.
                let mut refused_since: Option<std::time::Instant> = None;
                loop {
                    let reply = get(&kg.url("/"), &[("x-api-key", key.as_str())]).await;
                    match reply.status {
                        StatusCode::OK => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            refused_since = None;
                        }
                        StatusCode::TOO_MANY_REQUESTS => {
                            if !resumed.load(Ordering::Relaxed) {
                                refused_since = None;
                            } else if refused_since
                                .get_or_insert_with(std::time::Instant::now)
                                .elapsed()
                                > Duration::from_millis(1_500)
                            {
                                return;
                            }
                        }
                        StatusCode::SERVICE_UNAVAILABLE if refusing => {
                            assert!(
                                text(&reply.body).contains("quota_store_unavailable"),
                                "{}",
                                text(&reply.body)
                            );
                            unavailable.fetch_add(1, Ordering::Relaxed);
                            refused_since = None;
                        }
                        other => panic!("unexpected {other}: {}", text(&reply.body)),
                    }
                    // About 1,000 requests a second in all: the pause falls mid-traffic.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }));
        }
        eventually(Duration::from_secs(20), || async {
            admitted.load(Ordering::Relaxed) >= LIMIT / 3
        })
        .await
        .expect("traffic never reached a third of the quota");
        redis.pause();
        let at_pause = admitted.load(Ordering::Relaxed);
        tokio::time::sleep(pause).await;
        let during = admitted.load(Ordering::Relaxed) - at_pause;
        redis.resume();
        resumed.store(true, Ordering::Relaxed);
        // Once every grant begun during the pause has had its timeout, a request decided alone
        // is one whose grant, begun after the pause, answered late.
        tokio::time::sleep(STORE_TIMEOUT).await;
        let mut alone_after_pause = -decided_alone(&sidecars).await;
        for w in workers {
            tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .expect("traffic never ran out of quota")
                .unwrap();
        }
        let admitted = admitted.load(Ordering::Relaxed);
        let hash = redis
            .cli(&["GET", &format!("{{keygate}}:id:{id}")])
            .trim()
            .to_owned();
        let used = redis.cli(&["HGET", &format!("{{keygate}}:quota:{hash}:hour"), "used"]);
        let mut lost_replies = 0.0;
        for kg in sidecars.iter() {
            lost_replies +=
                metric(kg, "keygate_quota_lease_refills_total{outcome=\"error\"}").await;
        }
        let alone = decided_alone(&sidecars).await;
        alone_after_pause += alone;
        let unavailable = unavailable.load(Ordering::Relaxed);
        eprintln!(
            "per_hour = {LIMIT}, quota_fallback = {quota_fallback}, 3 sidecars, Redis paused \
             {pause:?} after {at_pause}: {admitted} admitted ({during} during the pause, {alone} \
             alone, {alone_after_pause} of them after the pause), {unavailable} refused with 503, \
             Redis counts {} used; {lost_replies} grant round trips failed",
            used.trim()
        );
        if admitted > LIMIT {
            // What the next run's failure needs: where Redis ended, every grant and sync.
            tokio::time::sleep(Duration::from_secs(3)).await;
            eprintln!("Redis, 3 s later: {:?}", hourly_fields(&redis, &id));
            for (i, kg) in sidecars.iter().enumerate() {
                for line in kg.logs.lock().unwrap().iter() {
                    if line.contains("quota") {
                        eprintln!("sidecar {i}: {line}");
                    }
                }
            }
        }
        assert!(
            admitted <= LIMIT,
            "over-admitted: {admitted}, {alone_after_pause} decided alone after the pause"
        );
        assert!(
            admitted >= LIMIT * 98 / 100,
            "under-admitted: {admitted} of {LIMIT}"
        );
        if refusing {
            assert!(unavailable > 0, "the pause refused nothing");
            assert_eq!(alone, 0.0, "admitted alone while refusing");
        }
    }

    #[tokio::test]
    async fn a_one_second_redis_pause_costs_no_quota() {
        quota_across_a_redis_pause(Duration::from_secs(1), "budget").await;
    }

    #[tokio::test]
    async fn a_three_second_redis_pause_costs_no_quota() {
        quota_across_a_redis_pause(Duration::from_secs(3), "budget").await;
    }

    /// With `quota_fallback = "refuse"`: the pause costs refusals, never quota.
    #[tokio::test]
    async fn a_three_second_redis_pause_with_refusals_costs_no_quota() {
        quota_across_a_redis_pause(Duration::from_secs(3), "refuse").await;
    }

    #[tokio::test]
    async fn a_five_second_redis_pause_costs_no_quota() {
        quota_across_a_redis_pause(Duration::from_secs(5), "budget").await;
    }

    /// Redis pauses; two sidecars spend their fallback budgets on their own, then see no
    /// more traffic and stay cut off for a while after Redis is back; the third gets traffic
    /// only once Redis is back. What the two admitted is unknown to Redis until they report,
    /// so the third must not be granted it meanwhile (the hold), and the two must report it
    /// without waiting for traffic of their own.
    #[tokio::test]
    async fn the_first_sidecar_back_cannot_spend_what_the_others_admitted_alone() {
        const LIMIT: u64 = 600;
        clear_of_the_hour_boundary().await;
        let redis = RedisServer::start();
        let proxy = FaultProxy::start(redis.port);
        let up = Upstream::start().await;
        let ws = Workspace::redis(&up.url(), &redis.url(), &hourly(LIMIT));
        let (id, key) = ws.create_key(&[]);
        let through_proxy = [("KEYGATE_STORE__URL", proxy.url())];
        let through_proxy: Vec<(&str, &str)> = through_proxy
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let mut a = ws.serve();
        let [mut b, mut c] = [(); 2].map(|_| ws.serve_with_env(&through_proxy));
        // Each budget is sized by the sidecars it counts.
        all_count(&[&a, &b, &c], 3.0).await;
        let headers = [("x-api-key", key.as_str())];
        let admitted = admit_each(&[&a, &b, &c], &key, 30).await;
        const HELD: &str = "keygate_quota_held_refusals_total";
        assert_eq!(
            metric(&a, HELD).await,
            0.0,
            "nothing held before the outage"
        );
        redis.pause();
        let mut alone = 0;
        for kg in [&b, &c] {
            // Until refused: the lease is spent, then the whole fallback budget.
            alone += admitted_until_refused(kg, &key, LIMIT).await;
        }
        proxy.set_new(Fault::Stall);
        proxy.set_existing(Fault::Stall);
        // `a`'s own sync fails too meanwhile: it comes back knowing there was an outage.
        tokio::time::sleep(Duration::from_secs(2)).await;
        redis.resume();
        let spend = async |kg: &Keygate, time| {
            let until = std::time::Instant::now() + time;
            let mut ok = 0;
            while std::time::Instant::now() < until {
                let reply = get(&kg.url("/"), &headers).await;
                match reply.status {
                    StatusCode::OK => ok += 1,
                    StatusCode::TOO_MANY_REQUESTS => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => panic!("unexpected {other}: {}", text(&reply.body)),
                }
            }
            ok
        };
        // Within the hold (five syncs from `a`'s first report), `b` and `c` still cut off:
        // `a` is refused for moments, and says why.
        let mut after = spend(&a, Duration::from_millis(1_500)).await;
        let held = metric(&a, HELD).await;
        assert!(held > 0.0, "no refusal counted as held");
        proxy.set_new(Fault::Pass);
        proxy.set_existing(Fault::Pass);
        // `b` and `c` report at their next sync, with no traffic of their own; then `a` may
        // have the rest.
        after += spend(&a, Duration::from_secs(6)).await;
        let total = admitted + alone + after;
        let used = hourly_used(&redis, &id);
        let handed_out = used();
        // Stopping hands back what sits unspent in leases: then Redis counts exactly what
        // was admitted, the admissions made alone included.
        for kg in [&a, &b, &c] {
            kg.signal("TERM");
        }
        for kg in [&mut a, &mut b, &mut c] {
            assert!(kg.child.wait().unwrap().success());
        }
        eprintln!(
            "per_hour = {LIMIT}: {admitted} before the pause, {alone} alone during it by two \
             sidecars, {after} by the third after it; {total} in all; Redis counted \
             {handed_out} handed out, {} once the sidecars stopped",
            used()
        );
        assert!(total <= LIMIT, "over-admitted: {total} of {LIMIT}");
        assert!(handed_out <= LIMIT, "handed out {handed_out} of {LIMIT}");
        assert_eq!(
            used(),
            total,
            "Redis heard of every admission, and nothing else"
        );
    }

    /// The README's bound for a sidecar cut off past the hold: Redis pauses, one sidecar
    /// (`c`) spends its fallback budget alone and stays cut off after Redis is back, for
    /// longer than the hold; the other two report, wait out the hold and spend the rest. The
    /// window then ends over its limit by what `c` admitted alone, at most its budget
    /// (`left / (2 × sidecars)` at its last grant), and nothing admitted is unknown to Redis
    /// once `c` is back.
    #[tokio::test]
    async fn a_sidecar_cut_off_past_the_hold_overshoots_by_at_most_its_own_budget() {
        const LIMIT: u64 = 600;
        clear_of_the_hour_boundary().await;
        let redis = RedisServer::start();
        let proxy = FaultProxy::start(redis.port);
        let up = Upstream::start().await;
        let ws = Workspace::redis(&up.url(), &redis.url(), &hourly(LIMIT));
        let (id, key) = ws.create_key(&[]);
        let through_proxy = proxy.url();
        let [mut a, mut b] = [(); 2].map(|_| ws.serve());
        let mut c = ws.serve_with_env(&[("KEYGATE_STORE__URL", &through_proxy)]);
        // Each budget is sized by the sidecars it counts.
        all_count(&[&a, &b, &c], 3.0).await;
        let headers = [("x-api-key", key.as_str())];
        let before = admit_each(&[&a, &b, &c], &key, 30).await;
        redis.pause();
        // `c` spends what is left of its lease, then its whole fallback budget.
        let alone = admitted_until_refused(&c, &key, LIMIT).await;
        assert_eq!(metric(&c, "keygate_quota_fallback").await, 1.0);
        proxy.set_all(Fault::Stall);
        // `a`'s and `b`'s syncs fail meanwhile: they come back knowing there was an outage.
        tokio::time::sleep(Duration::from_secs(2)).await;
        redis.resume();
        // For longer than the hold (five syncs, 5 s, from the first report), with `c` cut off
        // throughout, then until refused for a while: the rest of the quota is spent.
        let spend_out = async |kg: &Keygate, at_least| {
            let start = std::time::Instant::now();
            let mut refused_since: Option<std::time::Instant> = None;
            let mut ok = 0;
            loop {
                let reply = get(&kg.url("/"), &headers).await;
                match reply.status {
                    StatusCode::OK => {
                        ok += 1;
                        refused_since = None;
                    }
                    StatusCode::TOO_MANY_REQUESTS => {
                        let since = *refused_since.get_or_insert_with(std::time::Instant::now);
                        if start.elapsed() > at_least
                            && since.elapsed() > Duration::from_millis(1_500)
                        {
                            return ok;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => panic!("unexpected {other}: {}", text(&reply.body)),
                }
                assert!(ok <= LIMIT, "never refused");
            }
        };
        let (by_a, by_b) = tokio::join!(
            spend_out(&a, Duration::from_secs(9)),
            spend_out(&b, Duration::from_secs(9))
        );
        bring_back(&c, &proxy).await;
        // A grant `c` asked for as Redis paused may have run late: it reaches `c` now.
        let by_c = spend_out(&c, Duration::ZERO).await;
        let total = before + alone + by_a + by_b + by_c;
        let used = hourly_used(&redis, &id);
        // `c` has reported what it admitted alone.
        let reported = eventually(Duration::from_secs(15), || async { used() == total }).await;
        for kg in [&a, &b, &c] {
            kg.signal("TERM");
        }
        for kg in [&mut a, &mut b, &mut c] {
            assert!(kg.child.wait().unwrap().success());
        }
        let budget = (LIMIT - before) / 6;
        eprintln!(
            "per_hour = {LIMIT}: {before} before the pause, {alone} by the cut-off sidecar \
             (lease + fallback), {} by the other two after the hold, {by_c} by it once back; \
             {total} in all; Redis counts {}; the cut-off sidecar's budget was at most {budget}",
            by_a + by_b,
            used()
        );
        assert!(
            reported.is_some(),
            "c never reported: Redis counts {}",
            used()
        );
        assert_eq!(
            used(),
            total,
            "Redis heard of every admission, and nothing else"
        );
        assert!(
            total >= LIMIT,
            "the other two were kept from the rest past the hold: {total} of {LIMIT}"
        );
        assert!(
            total - LIMIT <= budget,
            "over by {} with a budget of at most {budget}",
            total - LIMIT
        );
    }

    /// What one run of [`one_sidecar_cut_off_alone`] saw.
    struct CutOffAlone {
        limit: u64,
        /// Admitted by every sidecar, in all.
        total: u64,
        /// Admitted by the cut-off sidecar without a grant (its own count, from `/metrics`).
        alone: u64,
        /// Refused by the cut-off sidecar for want of the store, by the same count.
        refused_alone: u64,
        /// What the cut-off sidecar answered once it could admit no more, while cut off.
        last_refusal: Reply,
        /// Redis's count once the cut-off sidecar is back and has reported.
        used: u64,
        /// The most the cut-off sidecar could admit alone by the reply it went by, as Redis
        /// recorded it when the link went silent (`c:<id>` of the quota's hash).
        budget_recorded: u64,
        /// `POST /v1/keys/verify` with `count` on the cut-off sidecar, once it admitted no
        /// more.
        verify_counted: Reply,
    }

    /// The key's hourly quota hash in Redis, field by field.
    fn hourly_fields(redis: &RedisServer, id: &str) -> std::collections::HashMap<String, u64> {
        let hash = redis
            .cli(&["GET", &format!("{{keygate}}:id:{id}")])
            .trim()
            .to_owned();
        let all = redis.cli(&["HGETALL", &format!("{{keygate}}:quota:{hash}:hour")]);
        let lines: Vec<&str> = all.lines().map(str::trim).collect();
        lines
            .chunks(2)
            .filter_map(|kv| Some((kv[0].to_owned(), kv.get(1)?.parse().ok()?)))
            .collect()
    }

    /// A sidecar cut off from Redis while the others are not: a partition, or, to the
    /// sidecar, the same thing, grants that answer later than `[store] timeout` for it
    /// alone. Three sidecars spend an hourly quota; `c`'s link to Redis goes silent (the
    /// fault proxy stops reading); `c` admits until it is refused, then `a` and `b` spend
    /// the rest; then `c`'s link comes back and it spends what it is still granted.
    async fn one_sidecar_cut_off_alone(quota_fallback: &str) -> CutOffAlone {
        const LIMIT: u64 = 600;
        clear_of_the_hour_boundary().await;
        let redis = RedisServer::start();
        let proxy = FaultProxy::start(redis.port);
        let up = Upstream::start().await;
        let store = format!(
            "[store]\nkind = \"redis\"\nurl = \"{}\"\nepoch_poll = \"1s\"\n\
             quota_fallback = \"{quota_fallback}\"\n",
            redis.url()
        );
        let ws = Workspace::with_store(&up.url(), &store, &hourly(LIMIT));
        let (id, key) = ws.create_key(&[]);
        let (_, verifier) = ws.create_key(&["--scopes", "keygate:keys:verify"]);
        let through_proxy = proxy.url();
        let [mut a, mut b] = [(); 2].map(|_| ws.serve());
        let mut c = ws.serve_with_env(&[
            ("KEYGATE_STORE__URL", &through_proxy),
            ("KEYGATE_LISTEN__MANAGE", "127.0.0.1:0"),
        ]);
        all_count(&[&a, &b, &c], 3.0).await;
        let headers = [("x-api-key", key.as_str())];
        let before = admit_each(&[&a, &b, &c], &key, 30).await;
        let verify = |count: bool| {
            let body = serde_json::json!({ "key": key, "count": count }).to_string();
            let bearer = format!("Bearer {verifier}");
            let url = c.manage_url("/v1/keys/verify");
            async move {
                send(
                    http::Method::POST,
                    &url,
                    &[
                        ("authorization", bearer.as_str()),
                        ("content-type", "application/json"),
                    ],
                    body.into(),
                )
                .await
            }
        };
        // The management key cached on `c` too, before its link goes silent.
        assert_eq!(verify(false).await.status, StatusCode::OK);
        proxy.set_all(Fault::Stall);
        let at_cut_off = hourly_fields(&redis, &id);
        let mut by_c_cut_off = 0;
        let last_refusal = loop {
            let reply = get(&c.url("/"), &headers).await;
            if reply.status != StatusCode::OK {
                break reply;
            }
            by_c_cut_off += 1;
            assert!(by_c_cut_off <= LIMIT, "never refused");
        };
        assert_eq!(metric(&c, "keygate_quota_fallback").await, 1.0);
        // `a` and `b` reach Redis throughout: they are granted the rest.
        let (by_a, by_b) = tokio::join!(
            admitted_until_refused(&a, &key, LIMIT),
            admitted_until_refused(&b, &key, LIMIT)
        );
        let alone = metric(
            &c,
            "keygate_quota_decided_alone_total{outcome=\"admitted\"}",
        )
        .await;
        let refused_alone =
            metric(&c, "keygate_quota_decided_alone_total{outcome=\"refused\"}").await;
        let verify_counted = verify(true).await;
        bring_back(&c, &proxy).await;
        // A grant `c` asked for as its link went silent may run now: it reaches `c`.
        let by_c = admitted_until_refused(&c, &key, LIMIT).await;
        let total = before + by_c_cut_off + by_a + by_b + by_c;
        let used = hourly_used(&redis, &id);
        eventually(Duration::from_secs(15), || async { used() == total }).await;
        // `c` is the sidecar whose fell-back total is what it admitted alone (in refuse mode,
        // every sidecar's is 0: then any recorded budget will do, and all are 0).
        let fields = hourly_fields(&redis, &id);
        let budget_recorded = fields
            .iter()
            .filter(|(field, _)| field.starts_with("f:"))
            .find(|&(_, &fell_back)| fell_back == alone as u64)
            .and_then(|(field, _)| at_cut_off.get(&format!("c:{}", &field[2..])))
            .copied()
            .unwrap_or(0);
        for kg in [&a, &b, &c] {
            kg.signal("TERM");
        }
        for kg in [&mut a, &mut b, &mut c] {
            assert!(kg.child.wait().unwrap().success());
        }
        eprintln!(
            "per_hour = {LIMIT}, quota_fallback = {quota_fallback}: {before} before, \
             {by_c_cut_off} by the cut-off sidecar ({alone} alone, {refused_alone} refused for \
             want of Redis; its budget as Redis recorded it: {budget_recorded}), {} by the \
             other two, {by_c} by it once back; {total} in all; Redis counts {}",
            by_a + by_b,
            used()
        );
        CutOffAlone {
            limit: LIMIT,
            total,
            alone: alone as u64,
            refused_alone: refused_alone as u64,
            last_refusal,
            used: used(),
            budget_recorded,
            verify_counted,
        }
    }

    /// README's bound for `quota_fallback = "budget"`: the window ends over its limit by at
    /// most what the cut-off sidecar admitted alone, and that is at most its budget, half
    /// its share of what its last grant said was left, as Redis recorded it with that grant
    /// (at most `limit / 6` with three sidecars). Redis hears of every one once the sidecar
    /// is back.
    #[tokio::test]
    async fn a_sidecar_cut_off_alone_overshoots_by_at_most_its_budget() {
        let run = one_sidecar_cut_off_alone("budget").await;
        assert_eq!(run.last_refusal.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(run.alone > 0, "the cut-off sidecar never admitted alone");
        assert_eq!(run.refused_alone, 0);
        assert!(
            run.alone <= run.budget_recorded && run.budget_recorded <= run.limit / 6,
            "{} alone, against a budget of {} recorded by Redis",
            run.alone,
            run.budget_recorded
        );
        // Everything else was granted: the excess is what was admitted alone, no more.
        assert!(
            run.total <= run.limit + run.alone,
            "{} admitted against {}, {} of them alone",
            run.total,
            run.limit,
            run.alone
        );
        assert_eq!(run.used, run.total, "Redis heard of every admission");
        // The management API's verdict is the proxy's: over the limit, budget spent.
        assert_eq!(run.verify_counted.status, StatusCode::OK);
        let verdict: serde_json::Value = serde_json::from_slice(&run.verify_counted.body).unwrap();
        assert_eq!(verdict["code"], "rate_limit_exceeded", "{verdict}");
    }

    /// `quota_fallback = "refuse"`: the cut-off sidecar admits what its lease holds, then
    /// answers 503 `quota_store_unavailable` with a `Retry-After`; the window never ends
    /// over its limit, and once the link is back the quota is spent to the last request.
    #[tokio::test]
    async fn a_sidecar_cut_off_alone_that_refuses_never_overshoots() {
        let run = one_sidecar_cut_off_alone("refuse").await;
        let refusal = &run.last_refusal;
        assert_eq!(refusal.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refusal.headers["retry-after"], "1");
        let body: serde_json::Value = serde_json::from_slice(&refusal.body).unwrap();
        assert_eq!(body["error"]["code"], "quota_store_unavailable");
        assert_eq!(body["error"]["type"], "api_error");
        assert_eq!(run.alone, 0);
        assert!(run.refused_alone >= 1);
        assert_eq!(run.total, run.limit, "exactly the limit");
        assert_eq!(run.used, run.total);
        // `POST /v1/keys/verify` with `count` cannot decide either: it fails as the proxy
        // does, rather than answering "not valid".
        let verify = &run.verify_counted;
        assert_eq!(verify.status, StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_slice(&verify.body).unwrap();
        assert_eq!(body["error"]["code"], "quota_store_unavailable");
    }

    /// The README's bound for a sidecar with no grant yet in the window: it admits up to
    /// `limit × local_share` on its own, the window can end over its limit by that share,
    /// and it reports every one of them once Redis answers.
    #[tokio::test]
    async fn a_sidecar_with_no_grant_in_the_window_admits_its_local_share_and_reports_it() {
        const LIMIT: u64 = 400;
        const SHARE: u64 = 100; // LIMIT × 0.25
        clear_of_the_hour_boundary().await;
        let redis = RedisServer::start();
        let proxy = FaultProxy::start(redis.port);
        let up = Upstream::start().await;
        let extra = format!(
            "{}local_share = 0.25\n\n[[route]]\npath = \"/admin/**\"\nscopes = [\"admin\"]\n",
            hourly(LIMIT)
        );
        let ws = Workspace::redis(&up.url(), &redis.url(), &extra);
        let (id, key) = ws.create_key(&["--scopes", "items:read"]);
        let headers = [("x-api-key", key.as_str())];
        let mut a = ws.serve();
        let mut d = ws.serve_with_env(&[("KEYGATE_STORE__URL", &proxy.url())]);
        d.first_poll().await;
        // `d` knows the key (refused by its route, before any limit), but has no lease.
        let reply = get(&d.url("/admin/x"), &headers).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", text(&reply.body));
        proxy.set_all(Fault::Stall);
        let alone = admitted_until_refused(&d, &key, LIMIT).await;
        assert_eq!(metric(&d, "keygate_quota_fallback").await, 1.0);
        // `a` hears nothing of them meanwhile and spends the whole limit.
        let by_a = admitted_until_refused(&a, &key, LIMIT).await;
        proxy.set_all(Fault::Pass);
        let used = hourly_used(&redis, &id);
        let total = alone + by_a;
        let reported = eventually(Duration::from_secs(15), || async { used() == total }).await;
        for kg in [&a, &d] {
            kg.signal("TERM");
        }
        for kg in [&mut a, &mut d] {
            assert!(kg.child.wait().unwrap().success());
        }
        eprintln!(
            "per_hour = {LIMIT}, local_share = 0.25: {alone} admitted alone with no grant, \
             {by_a} by the sidecar Redis answered; Redis counts {}",
            used()
        );
        assert_eq!(alone, SHARE, "exactly its local share");
        assert_eq!(by_a, LIMIT, "the other sidecar could not know of them");
        assert!(
            reported.is_some(),
            "d never reported: Redis counts {}",
            used()
        );
        assert_eq!(used(), total, "Redis heard of every admission");
    }

    #[tokio::test]
    async fn redis_dying_mid_window_falls_back_to_the_local_share_and_recovers() {
        clear_of_the_hour_boundary().await;
        // Persisted, so the keys (and the counters) are still there after the restart.
        let mut redis =
            RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
        let up = Upstream::start().await;
        let ws = Workspace::redis(&up.url(), &redis.url(), &hourly(1000));
        let (id, key) = ws.create_key(&[]);
        let kg = ws.serve();
        kg.first_poll().await;
        let hash = redis
            .cli(&["GET", &format!("{{keygate}}:id:{id}")])
            .trim()
            .to_owned();
        let counter = format!("{{keygate}}:quota:{hash}:hour");
        for _ in 0..20 {
            assert_eq!(
                get(&kg.url("/"), &[("x-api-key", &key)]).await.status,
                StatusCode::OK
            );
        }
        assert_eq!(metric(&kg, "keygate_quota_fallback").await, 0.0);

        redis.kill();
        for _ in 0..50 {
            let reply = get(&kg.url("/"), &[("x-api-key", &key)]).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", text(&reply.body));
            assert_eq!(reply.headers["x-ratelimit-limit"], "1000");
        }
        eventually(Duration::from_secs(5), || async {
            metric(&kg, "keygate_quota_fallback").await == 1.0
        })
        .await
        .expect("keygate_quota_fallback never went to 1");

        redis.restart();
        eventually(Duration::from_secs(10), || async {
            metric(&kg, "keygate_quota_fallback").await == 0.0
        })
        .await
        .expect("keygate_quota_fallback never returned to 0");
        // Shared again: the next requests take grants from Redis, and the admissions made
        // while it was down were added to its counter.
        for _ in 0..10 {
            assert_eq!(
                get(&kg.url("/"), &[("x-api-key", &key)]).await.status,
                StatusCode::OK
            );
        }
        let used: u64 = redis
            .cli(&["HGET", &counter, "used"])
            .trim()
            .parse()
            .unwrap();
        eprintln!("after recovery Redis counts {used} handed out for 80 admitted");
        assert!(used >= 80, "fallback admissions not reported: {used}");
        assert!(!kg.all_logs().contains("panicked"));
    }

    #[tokio::test]
    async fn a_stopping_sidecar_hands_its_unspent_lease_back() {
        clear_of_the_hour_boundary().await;
        let redis = RedisServer::start();
        let up = Upstream::start().await;
        let ws = Workspace::redis(&up.url(), &redis.url(), &hourly(1000));
        let (id, key) = ws.create_key(&[]);
        let mut kg = ws.serve_with_env(&[("KEYGATE_SERVER__DRAIN_PERIOD", "0s")]);
        let hash = redis
            .cli(&["GET", &format!("{{keygate}}:id:{id}")])
            .trim()
            .to_owned();
        let counter = format!("{{keygate}}:quota:{hash}:hour");
        let used = || -> u64 {
            redis
                .cli(&["HGET", &counter, "used"])
                .trim()
                .parse()
                .unwrap()
        };
        for _ in 0..5 {
            assert_eq!(
                get(&kg.url("/"), &[("x-api-key", &key)]).await.status,
                StatusCode::OK
            );
        }
        let leased = used();
        assert!(
            leased > 5,
            "the sidecar holds a lease beyond what it spent: {leased}"
        );

        kg.signal("TERM");
        assert!(kg.child.wait().unwrap().success());
        assert_eq!(used(), 5, "handed back {leased} - 5 unspent");
        assert!(kg.all_logs().contains("unspent quota leases handed back"));
    }

    #[tokio::test]
    async fn a_key_hammering_its_limit_is_suspended_everywhere_and_lifts() {
        let redis = RedisServer::start();
        let up = Upstream::start().await;
        let extra = "[plans.tight]\nper_minute = 2\n[limits]\ndefault_plan = \"tight\"\n\
                     [limits.suspend]\nafter = 3\nwithin = \"1m\"\nfor = \"2s\"\n";
        let ws = Workspace::redis(&up.url(), &redis.url(), extra);
        let (_, key) = ws.create_key(&[]);
        let (a, b) = (ws.serve(), ws.serve());
        let hit = |kg: &Keygate| {
            let (url, key) = (kg.url("/"), key.clone());
            async move { get(&url, &[("x-api-key", key.as_str())]).await }
        };
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(hit(&a).await.status.as_u16());
        }
        assert_eq!(statuses, [200, 200, 429, 429, 429, 403]);
        let suspended = hit(&a).await;
        assert_eq!(suspended.status, StatusCode::FORBIDDEN);
        assert_eq!(suspended.error_code(), "key_suspended");
        let retry: u64 = suspended.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=2).contains(&retry), "Retry-After {retry}");

        // The other sidecar refuses it too, once its sync tick (1 s here) reads the
        // suspension. It is probed slowly so that it cannot reach the threshold itself before
        // then (two admitted, at most two refused); its own suspension counter proves it.
        let mut seen = None;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if hit(&b).await.status == StatusCode::FORBIDDEN {
                seen = Some(());
                break;
            }
        }
        seen.expect("the suspension never reached the other sidecar");
        assert_eq!(metric(&b, "keygate_key_suspensions_total").await, 0.0);
        assert_eq!(metric(&a, "keygate_key_suspensions_total").await, 1.0);

        // It lifts by itself, on both.
        let mut lifted = None;
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let status = hit(&b).await.status;
            if status != StatusCode::FORBIDDEN {
                lifted = Some(status);
                break;
            }
        }
        let lifted = lifted.expect("the suspension never lifted on the other sidecar");
        assert!(
            [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS].contains(&lifted),
            "{lifted}"
        );
        assert_eq!(
            hit(&a).await.status,
            StatusCode::TOO_MANY_REQUESTS,
            "lifted, and still over its per-minute limit"
        );
    }

    #[tokio::test]
    async fn shared_quotas_work_on_a_redis_cluster() {
        clear_of_the_hour_boundary().await;
        let cluster = RedisCluster::start();
        let up = Upstream::start().await;
        let store = cluster.store_toml();
        let ws = Workspace::with_store(&up.url(), &store, &hourly(5));
        let (id, key) = ws.create_key(&[]);
        let (a, b) = (ws.serve(), ws.serve());
        let mut statuses = Vec::new();
        for i in 0..8 {
            let kg = if i % 2 == 0 { &a } else { &b };
            statuses.push(
                get(&kg.url("/"), &[("x-api-key", &key)])
                    .await
                    .status
                    .as_u16(),
            );
        }
        // Which sidecar spends the last lease depends on timing; the total does not.
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            5,
            "{statuses:?}"
        );
        assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
        let out = ws.cli(&["keys", "usage", &id, "--json"]);
        let usage: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(usage["windows"][0]["used"], 5, "{usage}");
    }

    #[tokio::test]
    async fn keys_usage_shows_the_shared_counters() {
        clear_of_the_hour_boundary().await;
        let redis = RedisServer::start();
        let up = Upstream::start().await;
        let plan = "[plans.metered]\nper_hour = 1000\nper_day = 5000\n\
                    [limits]\ndefault_plan = \"metered\"\n";
        let ws = Workspace::redis(&up.url(), &redis.url(), plan);
        let (id, key) = ws.create_key(&[]);
        let kg = ws.serve();
        for _ in 0..5 {
            assert_eq!(
                get(&kg.url("/"), &[("x-api-key", &key)]).await.status,
                StatusCode::OK
            );
        }
        let out = ws.cli(&["keys", "usage", &id, "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let usage: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        eprintln!("{usage:#}");
        assert_eq!(usage["counters"], "redis");
        let hour = &usage["windows"][0];
        assert_eq!(hour["window"], "per_hour");
        assert_eq!(hour["limit"], 1000);
        let used = hour["used"].as_u64().unwrap();
        assert!((5..=1000).contains(&used), "{usage}");
        assert!(hour["resets_in_secs"].as_u64().unwrap() <= 3600);
        assert_eq!(usage["windows"][1]["window"], "per_day");

        let out = ws.cli(&["keys", "usage", &id]);
        let shown = text(&out.stdout);
        eprintln!("{shown}");
        assert!(
            shown.contains("per_hour") && shown.contains(&used.to_string()),
            "{shown}"
        );
        assert!(shown.contains("last used:"));
    }
}

#[test]
fn keys_usage_with_the_file_store_shows_limits_not_made_up_counts() {
    let ws = Workspace::new(
        "http://127.0.0.1:9",
        "[plans.p]\nper_month = 100\n[limits]\ndefault_plan = \"p\"\n",
    );
    let (id, _) = ws.create_key(&[]);
    let out = ws.cli(&["keys", "usage", &id, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let usage: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(usage["counters"], "process");
    assert_eq!(usage["windows"][0]["window"], "per_month");
    assert_eq!(usage["windows"][0]["limit"], 100);
    assert!(usage["windows"][0]["used"].is_null(), "{usage}");
    assert!(usage["last_used_at"].is_null());
    let out = ws.cli(&["keys", "usage", "key_nope"]);
    assert_eq!(out.status.code(), Some(1));
}
