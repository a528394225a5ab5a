use super::*;

const MINIMAL: &str =
    "[upstream]\nurl = \"http://127.0.0.1:3000\"\n[auth]\nunmatched = \"allow\"\n";

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml(
        text,
        Path::new("proxy.toml"),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[test]
fn minimal_config_gets_defaults() {
    let c = load(MINIMAL, &[]).unwrap();
    assert_eq!(c.listen.public, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(c.keys.prefix, "kg");
    assert_eq!(c.auth.credential_headers.len(), 3);
    assert!(matches!(c.store, StoreConfig::File { .. }));
}

#[test]
fn env_overrides_win_and_are_typed() {
    let c = load(
        MINIMAL,
        &[
            ("KEYGATE_UPSTREAM__URL", "http://10.1.1.1:81"),
            ("KEYGATE_AUTH__MAX_KEY_LENGTH", "100"),
            ("KEYGATE_AUTH__PUBLIC_PATHS", "[\"/health\", \"/docs/**\"]"),
            ("KEYGATE_KEYS__PREFIX", "acme"),
            ("KEYGATE_CONFIG", "ignored.toml"),
        ],
    )
    .unwrap();
    assert_eq!(c.upstream.url.to_string(), "http://10.1.1.1:81/");
    assert_eq!(c.auth.max_key_length, 100);
    assert_eq!(c.auth.public_paths.len(), 2);
    assert_eq!(c.keys.prefix, "acme");
}

/// `[server] batch_backend`: the three choices, from the file or the environment; anything
/// else is refused with the choices named.
#[test]
fn the_batch_backend_is_one_of_three() {
    use crate::batch::Choice;
    assert_eq!(
        load(MINIMAL, &[]).unwrap().server.batch_backend,
        Choice::Auto
    );
    for (value, want) in [
        ("auto", Choice::Auto),
        ("io_uring", Choice::IoUring),
        ("aio", Choice::Aio),
    ] {
        let text = format!("{MINIMAL}[server]\nbatch_backend = \"{value}\"\n");
        assert_eq!(load(&text, &[]).unwrap().server.batch_backend, want);
        let env = load(MINIMAL, &[("KEYGATE_SERVER__BATCH_BACKEND", value)]).unwrap();
        assert_eq!(env.server.batch_backend, want);
    }
    let err = load(MINIMAL, &[("KEYGATE_SERVER__BATCH_BACKEND", "epoll")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("server.batch_backend") && err.contains("\"aio\""),
        "{err}"
    );
}

/// `[server] sharded`: off unless set; on, one shard per worker and a main runtime of one
/// thread (the other shards bring their own); off, one shard whatever the workers.
#[test]
fn sharding_gives_each_worker_its_own_loop_and_the_main_runtime_one_thread() {
    let off = load(&format!("{MINIMAL}[server]\nworkers = 4\n"), &[]).unwrap();
    assert!(!off.server.sharded);
    assert_eq!(off.server.shards(), 1);
    assert_eq!(off.server.main_workers(), Some(4));

    let on = load(
        &format!("{MINIMAL}[server]\nworkers = 4\n"),
        &[("KEYGATE_SERVER__SHARDED", "true")],
    )
    .unwrap();
    assert_eq!(on.server.shards(), 4);
    assert_eq!(on.server.main_workers(), Some(1));

    let per_cpu = load(&format!("{MINIMAL}[server]\nsharded = true\n"), &[]).unwrap();
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(per_cpu.server.shards(), cpus);
    assert_eq!(per_cpu.server.main_workers(), Some(1));

    let err = load(&format!("{MINIMAL}[server]\nsharded = \"yes\"\n"), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("sharded"), "{err}");
}

/// `[store] quota_fallback`: "budget" unless set, "refuse" on request, only with Redis, and
/// anything else refused with the choices named.
#[test]
fn the_quota_fallback_is_budget_or_refuse_with_redis_only() {
    use crate::limits::QuotaFallback;
    let redis = format!("{MINIMAL}[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n");
    let fallback = |env: &[(&str, &str)]| match load(&redis, env).map(|c| c.store) {
        Ok(StoreConfig::Redis(r)) => Ok(r.quota_fallback),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e.to_string()),
    };
    assert_eq!(fallback(&[]), Ok(QuotaFallback::Budget));
    for (value, want) in [
        ("budget", QuotaFallback::Budget),
        ("refuse", QuotaFallback::Refuse),
    ] {
        assert_eq!(
            fallback(&[("KEYGATE_STORE__QUOTA_FALLBACK", value)]),
            Ok(want)
        );
    }
    let err = fallback(&[("KEYGATE_STORE__QUOTA_FALLBACK", "deny")]).unwrap_err();
    assert!(
        err.contains("store.quota_fallback") && err.contains("\"refuse\""),
        "{err}"
    );
    let err = load(MINIMAL, &[("KEYGATE_STORE__QUOTA_FALLBACK", "refuse")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("store.quota_fallback") && err.contains("redis store only"),
        "{err}"
    );
}

#[test]
fn errors_name_the_field() {
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("[upstream]\nurl = \"ftp://x\"\n", &[], "upstream.url"),
        ("", &[], "upstream"),
        (
            "[listen]\npublic = \"nope\"\n[upstream]\nurl = \"http://a:1\"\n",
            &[],
            "listen.public",
        ),
        (
            MINIMAL,
            &[("KEYGATE_KEYS__PREFIX", "Bad_Prefix")],
            "keys.prefix",
        ),
        (MINIMAL, &[("KEYGATE_STORE__KIND", "etcd")], "store.kind"),
        (MINIMAL, &[("KEYGATE_KEYS__MAX_AGE", "0s")], "keys.max_age"),
        (
            MINIMAL,
            &[("KEYGATE_KEYS__WARN_BEFORE", "0d")],
            "keys.warn_before",
        ),
        (
            MINIMAL,
            &[("KEYGATE_KEYS__MAX_AGE", "soon")],
            "keys.max_age",
        ),
        (
            MINIMAL,
            &[("KEYGATE_AUTH__CREDENTIAL_HEADERS", "[\"cookie\"]")],
            "auth.credential_headers",
        ),
        (
            MINIMAL,
            &[("KEYGATE_AUTH__PUBLIC_PATHS", "[\"health\"]")],
            "auth.public_paths",
        ),
        (
            MINIMAL,
            &[("KEYGATE_NETWORK__TRUSTED_PROXIES", "[\"10.0.0.0/33\"]")],
            "network.trusted_proxies",
        ),
        (
            MINIMAL,
            &[("KEYGATE_LISTEN__MANAGE", "nope")],
            "listen.manage",
        ),
        (
            MINIMAL,
            &[("KEYGATE_LISTEN__MANAGE", "127.0.0.1:9090")],
            "listen.manage",
        ),
        (MINIMAL, &[("KEYGATE_LOG__FORMAT", "xml")], "log.format"),
        (
            MINIMAL,
            &[("KEYGATE_SERVER__BATCH_BACKEND", "uring")],
            "server.batch_backend",
        ),
        (
            MINIMAL,
            &[("KEYGATE_UPSTREAM__TIMEOUT", "0s")],
            "upstream.timeout",
        ),
        (MINIMAL, &[("KEYGATE_NOSECTION", "1")], "KEYGATE_NOSECTION"),
        (
            "[upstream]\nurl = \"http://a:1\"\ncolour = 1\n",
            &[],
            "colour",
        ),
        (MINIMAL, &[("KEYGATE_LISTEN__PUBLC", "1.2.3.4:5")], "publc"),
    ];
    for (text, env, needle) in cases {
        let err = load(text, env).expect_err(needle).to_string();
        assert!(err.contains(needle), "{needle:?} not in {err:?}");
    }
}

#[test]
fn effective_config_renders() {
    let c = load(MINIMAL, &[]).unwrap();
    let text = c.to_toml();
    assert!(text.contains("url = \"http://127.0.0.1:3000/\""), "{text}");
    assert!(text.contains("kind = \"file\""), "{text}");
}
