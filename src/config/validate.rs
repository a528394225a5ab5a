//! From raw to validated: every check serde cannot make, each error naming the field and the
//! fix.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use http::Uri;

use super::raw::{RawAuth, RawCache, RawConfig, RawGuard, RawPaths, RawRoute, RawStore};
use super::*;
use crate::credential::CredentialHeader;
use crate::keys::cache::CacheConfig;
use crate::keys::redis::{RedisConfig, RedisMode, redact};
use crate::limits::QuotaFallback;
use crate::path::Parameters;
use crate::routes::{PathPattern, Route, RouteLimits, RouteTable, Unmatched, check_scope};
use crate::vocab::Environment;

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let listen = Listen {
            public: parse_addr("listen.public", &raw.listen.public)?,
            admin: parse_addr("listen.admin", &raw.listen.admin)?,
            plain: raw
                .listen
                .plain
                .as_deref()
                .map(|p| parse_addr("listen.plain", p))
                .transpose()?,
            manage: raw
                .listen
                .manage
                .as_deref()
                .map(|p| parse_addr("listen.manage", p))
                .transpose()?,
        };
        let tls = serving::validate_tls(raw.tls)?;
        if listen.plain.is_some() && tls.is_none() {
            return Err(invalid(
                "listen.plain",
                "only makes sense with [tls] on listen.public; remove it or add [tls] cert and key",
            ));
        }
        if let Some(manage) = listen.manage
            && manage.port() != 0
            && (manage == listen.public || manage == listen.admin)
        {
            return Err(invalid(
                "listen.manage",
                "must differ from listen.public and listen.admin: the management API has a port of its own",
            ));
        }
        if listen.public == listen.admin && listen.public.port() != 0 {
            return Err(invalid(
                "listen.admin",
                "must differ from listen.public: health and metrics never share the client port",
            ));
        }

        let up = raw.upstream.ok_or_else(|| {
            invalid(
                "upstream",
                "missing [upstream] section; add url = \"http://127.0.0.1:3000\"",
            )
        })?;
        let url = parse_upstream("upstream.url", &up.url)?;
        let sandbox_url = up
            .sandbox_url
            .as_deref()
            .map(|u| parse_upstream("upstream.sandbox_url", u))
            .transpose()?;
        for (field, d) in [
            ("upstream.connect_timeout", up.connect_timeout),
            ("upstream.timeout", up.timeout),
            ("upstream.body_timeout", up.body_timeout),
            ("upstream.tunnel_idle_timeout", up.tunnel_idle_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "must be greater than 0, e.g. \"5s\""));
            }
        }

        let store = validate_store(raw.store)?;
        let mut cache = validate_cache(raw.cache)?;
        if let StoreConfig::Redis(redis) = &store {
            cache.store_timeout = redis.timeout;
        }

        let prefix = raw.keys.prefix;
        if prefix.is_empty()
            || prefix.len() > 16
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(invalid(
                "keys.prefix",
                format!("{prefix:?}: use 1-16 lowercase letters or digits, e.g. \"kg\""),
            ));
        }

        if raw.keys.max_per_owner == Some(0) {
            return Err(invalid(
                "keys.max_per_owner",
                "must be at least 1; leave it out for no cap",
            ));
        }

        for (field, value, example) in [
            ("keys.max_age", raw.keys.max_age, "\"90d\""),
            ("keys.warn_before", raw.keys.warn_before, "\"14d\""),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                return Err(invalid(
                    field,
                    format!("must be longer than 0, e.g. {example}; leave it out to turn it off"),
                ));
            }
        }

        let tokens = raw.tokens.map(validate_tokens).transpose()?;
        let cors = validate_cors(raw.cors)?;
        let mut limits = validate_limits(raw.plans, raw.limits)?;
        let (extra_upstreams, environment_plans) =
            validate_environments(raw.environments, &limits)?;
        limits.environment_plans = environment_plans;
        let environments: Vec<Environment> = [Environment::LIVE, Environment::TEST]
            .into_iter()
            .chain(extra_upstreams.iter().map(|(e, _)| *e))
            .collect();
        let paths = validate_paths(&raw.paths)?;
        let guard = validate_guard(&raw.guard)?;
        let unmatched = raw.auth.unmatched.clone();
        let auth = validate_auth(raw.auth, &paths)?;
        let routes = validate_routes(raw.route, unmatched, &paths, &environments)?;

        let trusted_proxies = raw
            .network
            .trusted_proxies
            .iter()
            .map(|s| parse_net(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("network.trusted_proxies", e))?;

        let format = match raw.log.format.as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("{other:?}: use \"json\" or \"text\""),
                ));
            }
        };
        tracing_subscriber::EnvFilter::try_new(&raw.log.level).map_err(|e| {
            invalid(
                "log.level",
                format!(
                    "{:?}: {e}; e.g. \"info\" or \"keygate=debug\"",
                    raw.log.level
                ),
            )
        })?;

        let server = Server::try_from(raw.server)?;

        if raw.metrics.by_owner && !(1..=10_000).contains(&raw.metrics.max_owners) {
            return Err(invalid(
                "metrics.max_owners",
                "must be between 1 and 10000: each owner is a series in every scrape",
            ));
        }
        let metrics = crate::metrics::MetricsConfig {
            by_plan: raw.metrics.by_plan,
            by_owner: raw.metrics.by_owner,
            max_owners: raw.metrics.max_owners,
        };

        Ok(Config {
            listen,
            server,
            tls,
            upstream: Upstream {
                url,
                sandbox_url,
                environments: extra_upstreams,
                connect_timeout: up.connect_timeout,
                timeout: up.timeout,
                body_timeout: up.body_timeout,
                tunnel_idle_timeout: up.tunnel_idle_timeout,
                preserve_host: up.preserve_host,
                ca_file: up.ca_file,
                http2: up.http2,
            },
            store,
            cache,
            limits,
            keys: KeysConfig {
                prefix,
                max_per_owner: raw.keys.max_per_owner,
                max_age: raw.keys.max_age,
                warn_before: raw.keys.warn_before,
            },
            auth,
            tokens,
            environments,
            cors,
            paths,
            guard,
            network: Network {
                trusted_proxies,
                require_https: raw.network.require_https,
            },
            log: LogConfig {
                format,
                level: raw.log.level,
                access: raw.log.access,
            },
            routes,
            metrics,
        })
    }
}

fn validate_guard(raw: &RawGuard) -> Result<GuardConfig, ConfigError> {
    if raw.max_invalid > 0 && (raw.window.is_zero() || raw.block_for.is_zero()) {
        return Err(invalid(
            "guard",
            "window and block_for must be greater than 0 (or set max_invalid = 0 to turn the guard off)",
        ));
    }
    Ok(GuardConfig {
        max_invalid: raw.max_invalid,
        window: raw.window,
        block_for: raw.block_for,
        block_known_keys: raw.block_known_keys,
    })
}

fn validate_paths(raw: &RawPaths) -> Result<PathRules, ConfigError> {
    let parameters = match raw.parameters.as_str() {
        "reject" => Parameters::Reject,
        "strip" => Parameters::Strip,
        other => {
            return Err(invalid(
                "paths.parameters",
                format!(
                    "{other:?}: use \"reject\" (400 invalid_path) or \"strip\" (removed before the rules and the upstream see the path)"
                ),
            ));
        }
    };
    Ok(PathRules {
        parameters,
        case_insensitive: raw.case_insensitive,
    })
}

fn validate_cors(raw: super::raw::RawCors) -> Result<crate::cors::CorsConfig, ConfigError> {
    use crate::cors::{OriginPattern, PreflightPolicy};
    let allow_origins = raw
        .allow_origins
        .iter()
        .map(|o| OriginPattern::parse(o))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("cors.allow_origins", e))?;
    let preflight = match raw.preflight.as_str() {
        "any" => PreflightPolicy::Any,
        "listed" => PreflightPolicy::Listed,
        other => {
            return Err(invalid(
                "cors.preflight",
                format!(
                    "{other:?}: use \"any\" (answer every well-formed origin; the key decides \
                     on the actual request) or \"listed\" (only cors.allow_origins)"
                ),
            ));
        }
    };
    if preflight == PreflightPolicy::Listed && allow_origins.is_empty() {
        return Err(invalid(
            "cors.preflight",
            "\"listed\" with an empty cors.allow_origins would refuse every preflight; list \
             the origins, or use \"any\"",
        ));
    }
    let mut allow_headers = Vec::new();
    for name in &raw.allow_headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid(
                "cors.allow_headers",
                format!("{name:?} is not a header name; e.g. \"x-request-id\""),
            ));
        }
        allow_headers.push(name.to_ascii_lowercase());
    }
    if raw.max_age > Duration::from_secs(86_400) {
        return Err(invalid(
            "cors.max_age",
            "at most 24h (browsers cap it lower anyway), e.g. \"10m\" (the default)",
        ));
    }
    Ok(crate::cors::CorsConfig {
        allow_origins,
        preflight,
        allow_headers,
        max_age: raw.max_age,
    })
}

fn validate_tokens(raw: super::raw::RawTokens) -> Result<crate::token::TokensConfig, ConfigError> {
    if !raw.path.starts_with('/') || raw.path.contains(['?', '#', '%', '*', '{']) {
        return Err(invalid(
            "tokens.path",
            format!(
                "{:?}: use a plain absolute path such as \"/oauth/token\"",
                raw.path
            ),
        ));
    }
    if raw.lifetime < Duration::from_secs(1) || raw.lifetime > Duration::from_secs(86_400) {
        return Err(invalid(
            "tokens.lifetime",
            "must be between 1s and 24h, e.g. \"1h\" (the default)",
        ));
    }
    if raw.secret_files.is_empty() {
        return Err(invalid(
            "tokens.secret_files",
            "list at least one file holding 32+ random bytes (`openssl rand -base64 48`); the \
             first seals new tokens, every one opens them",
        ));
    }
    Ok(crate::token::TokensConfig {
        path: raw.path,
        lifetime: raw.lifetime,
        secret_files: raw.secret_files,
        secrets: Default::default(),
    })
}

fn validate_auth(raw: RawAuth, paths: &PathRules) -> Result<AuthConfig, ConfigError> {
    if raw.credential_headers.is_empty() {
        return Err(invalid(
            "auth.credential_headers",
            "list at least one of \"authorization\", \"x-api-key\", \"project-access-token\"",
        ));
    }
    let mut seen = HashSet::new();
    let mut credential_headers = Vec::new();
    for name in &raw.credential_headers {
        let header = CredentialHeader::from_name(name).ok_or_else(|| {
            invalid(
                "auth.credential_headers",
                format!(
                    "{name:?} is not supported; use \"authorization\", \"x-api-key\" or \"project-access-token\""
                ),
            )
        })?;
        if !seen.insert(header) {
            return Err(invalid(
                "auth.credential_headers",
                format!("{name:?} is listed twice"),
            ));
        }
        credential_headers.push(header);
    }
    if !(40..=4096).contains(&raw.max_key_length) {
        return Err(invalid(
            "auth.max_key_length",
            "must be between 40 and 4096 bytes (keys are about 45 bytes)",
        ));
    }
    let public_paths = raw
        .public_paths
        .iter()
        .map(|p| PathPattern::parse(p, paths.case_insensitive))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("auth.public_paths", e))?;
    Ok(AuthConfig {
        credential_headers,
        max_key_length: raw.max_key_length,
        public_paths,
    })
}

fn parse_upstream(field: &'static str, s: &str) -> Result<Uri, ConfigError> {
    let url: Uri = s.parse().map_err(|e| {
        invalid(
            field,
            format!("{s:?} is not a URL ({e}); expected e.g. http://127.0.0.1:3000"),
        )
    })?;
    if !matches!(url.scheme_str(), Some("http" | "https")) || url.authority().is_none() {
        return Err(invalid(
            field,
            format!("{s:?}: expected http://HOST:PORT or https://HOST[:PORT]"),
        ));
    }
    if url.query().is_some() {
        return Err(invalid(field, "must not contain a query string"));
    }
    Ok(url)
}

fn validate_store(raw: RawStore) -> Result<StoreConfig, ConfigError> {
    match raw.kind.as_str() {
        "file" => {
            if raw.path.as_os_str().is_empty() {
                return Err(invalid(
                    "store.path",
                    "must name the keys file, e.g. keys.json",
                ));
            }
            if raw.reload_interval.is_zero() || raw.reload_interval > Duration::from_secs(1) {
                return Err(invalid(
                    "store.reload_interval",
                    "must be between 1ms and 1s so CLI changes reach the proxy within 1 s",
                ));
            }
            if raw.quota_fallback.is_some() {
                return Err(invalid(
                    "store.quota_fallback",
                    "applies to the redis store only: the file store counts quotas exactly in \
                     this process and never falls back; remove it",
                ));
            }
            if raw
                .last_used_path
                .as_ref()
                .is_some_and(|p| p.as_os_str().is_empty() || p == &raw.path)
            {
                return Err(invalid(
                    "store.last_used_path",
                    "must name a writable file other than the keys file, e.g. /var/lib/keygate/last-used.json",
                ));
            }
            Ok(StoreConfig::File {
                path: raw.path,
                reload_interval: raw.reload_interval,
                last_used_path: raw.last_used_path,
            })
        }
        "redis" => {
            let url_ok = |field, u: &str| {
                if u.starts_with("redis://") || u.starts_with("rediss://") {
                    Ok(())
                } else {
                    Err(invalid(
                        field,
                        format!(
                            "{:?}: expected redis://HOST:PORT or rediss://HOST:PORT",
                            redact(u)
                        ),
                    ))
                }
            };
            let mode = match (raw.url, raw.nodes.is_empty(), raw.sentinels.is_empty()) {
                (Some(url), true, true) => {
                    url_ok("store.url", &url)?;
                    RedisMode::Standalone { url }
                }
                (None, false, true) => {
                    for n in &raw.nodes {
                        url_ok("store.nodes", n)?;
                    }
                    RedisMode::Cluster { nodes: raw.nodes }
                }
                (None, true, false) => {
                    for n in &raw.sentinels {
                        url_ok("store.sentinels", n)?;
                    }
                    let master_name = raw.master_name.ok_or_else(|| {
                        invalid(
                            "store.master_name",
                            "Sentinel needs the monitored master's name, e.g. \"mymaster\"",
                        )
                    })?;
                    RedisMode::Sentinel {
                        master_name,
                        sentinels: raw.sentinels,
                    }
                }
                (None, true, true) => {
                    return Err(invalid(
                        "store.url",
                        "a redis store needs url (standalone), nodes (Cluster seeds) or sentinels + master_name",
                    ));
                }
                _ => {
                    return Err(invalid(
                        "store",
                        "set only one of url (standalone), nodes (Cluster) and sentinels (Sentinel)",
                    ));
                }
            };
            let password = match (raw.password, raw.password_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "store.password_file",
                        "set the password or the password file, not both",
                    ));
                }
                (Some(p), None) => Some(p),
                (None, Some(path)) => Some(
                    std::fs::read_to_string(&path)
                        .map_err(|e| {
                            invalid("store.password_file", format!("{}: {e}", path.display()))
                        })?
                        .trim_end_matches(['\r', '\n'])
                        .to_owned(),
                ),
                (None, None) => None,
            };
            if raw.namespace.is_empty() || raw.namespace.contains(['{', '}']) {
                return Err(invalid(
                    "store.namespace",
                    "must be non-empty and without braces",
                ));
            }
            for (field, d) in [
                ("store.timeout", raw.timeout),
                ("store.epoch_poll", raw.epoch_poll),
            ] {
                if d.is_zero() || d > Duration::from_secs(10) {
                    return Err(invalid(field, "must be between 1ms and 10s"));
                }
            }
            if raw.confirm_within < raw.epoch_poll || raw.confirm_within > Duration::from_secs(3600)
            {
                return Err(invalid(
                    "store.confirm_within",
                    "must be at least store.epoch_poll and at most 1h, e.g. \"5s\"",
                ));
            }
            let quota_fallback = match raw.quota_fallback.as_deref() {
                None | Some("budget") => QuotaFallback::Budget,
                Some("refuse") => QuotaFallback::Refuse,
                Some(other) => {
                    return Err(invalid(
                        "store.quota_fallback",
                        format!(
                            "{other:?}: use \"budget\" (while Redis does not answer, admit a \
                             bounded share of what is left alone) or \"refuse\" (503 \
                             quota_store_unavailable once the lease is spent: never over a limit)"
                        ),
                    ));
                }
            };
            Ok(StoreConfig::Redis(RedisConfig {
                mode,
                username: raw.username,
                password,
                ca_file: raw.ca_file,
                namespace: raw.namespace,
                timeout: raw.timeout,
                epoch_poll: raw.epoch_poll,
                confirm_within: raw.confirm_within,
                ready_requires_current: raw.ready_requires_current,
                quota_fallback,
            }))
        }
        other => Err(invalid(
            "store.kind",
            format!("unknown store {other:?}; use \"file\" or \"redis\""),
        )),
    }
}

fn validate_limits(
    plans: std::collections::BTreeMap<String, crate::limits::Limits>,
    raw: super::raw::RawLimits,
) -> Result<crate::limits::LimitsConfig, ConfigError> {
    use crate::limits::{LimitsConfig, ResetStyle};
    for (name, limits) in &plans {
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(invalid(
                "plans",
                format!("plan name {name:?}: use letters, digits, _ or -"),
            ));
        }
        if limits.is_empty() {
            return Err(invalid("plans", format!("[plans.{name}] sets no limit")));
        }
        limits
            .check()
            .map_err(|e| invalid("plans", format!("[plans.{name}]: {e}")))?;
    }
    for (field, plan) in [
        ("limits.default_plan", &raw.default_plan),
        ("limits.sandbox_plan", &raw.sandbox_plan),
    ] {
        if let Some(p) = plan
            && !plans.contains_key(p)
        {
            return Err(invalid(field, format!("no [plans.{p}] is defined")));
        }
    }
    let reset = match raw.reset.as_str() {
        "epoch" => ResetStyle::Epoch,
        "delta" => ResetStyle::Delta,
        other => {
            return Err(invalid(
                "limits.reset",
                format!("{other:?}: use \"epoch\" (Unix time) or \"delta\" (seconds from now)"),
            ));
        }
    };
    if !(raw.local_share > 0.0 && raw.local_share <= 1.0) {
        return Err(invalid(
            "limits.local_share",
            "must be in (0, 1]: 1/N with N sidecars sharing a key's short-window limits",
        ));
    }
    let suspend = raw.suspend.map(validate_suspend).transpose()?;
    Ok(LimitsConfig {
        plans,
        default_plan: raw.default_plan,
        sandbox_plan: raw.sandbox_plan,
        environment_plans: Vec::new(),
        reset,
        local_share: raw.local_share,
        suspend,
    })
}

/// `[environments.<tag>]`: each tag's upstream (beyond `live` and `test`, which keep
/// `[upstream] url` and `sandbox_url`) and default plan.
#[allow(clippy::type_complexity)]
fn validate_environments(
    raw: std::collections::BTreeMap<String, super::raw::RawEnvironment>,
    limits: &crate::limits::LimitsConfig,
) -> Result<(Vec<(Environment, Uri)>, Vec<(Environment, String)>), ConfigError> {
    let (mut upstreams, mut plans) = (Vec::new(), Vec::new());
    for (tag, env) in raw {
        let bad = |m: String| invalid("environments", format!("[environments.{tag}]: {m}"));
        let parsed = Environment::parse(&tag).ok_or_else(|| {
            bad(
                "a tag is 1 to 15 lowercase letters and digits (it goes in keys: \
                 kg_sk_<tag>_…), e.g. \"staging\""
                    .into(),
            )
        })?;
        let builtin = parsed == Environment::LIVE || parsed == Environment::TEST;
        match (&env.upstream, builtin) {
            (Some(_), true) => {
                return Err(bad(
                    "live and test keep [upstream] url and sandbox_url; set those instead".into(),
                ));
            }
            (None, false) => {
                return Err(bad(
                    "upstream is required: where this environment's keys go, e.g. \
                     \"http://127.0.0.1:3001\""
                        .into(),
                ));
            }
            (Some(url), false) => {
                let url = parse_upstream("environments", url)
                    .map_err(|e| bad(format!("upstream: {e}")))?;
                upstreams.push((parsed, url));
            }
            (None, true) => {}
        }
        if let Some(plan) = env.plan {
            if !limits.plans.contains_key(&plan) {
                return Err(bad(format!("plan: no [plans.{plan}] is defined")));
            }
            if parsed == Environment::TEST && limits.sandbox_plan.is_some() {
                return Err(bad(
                    "plan: limits.sandbox_plan already names test's plan; keep one".into(),
                ));
            }
            plans.push((parsed, plan));
        }
    }
    Ok((upstreams, plans))
}

fn validate_suspend(
    raw: super::raw::RawSuspend,
) -> Result<crate::limits::SuspendConfig, ConfigError> {
    if raw.after == 0 {
        return Err(invalid(
            "limits.suspend.after",
            "must be at least 1: the rate-limit refusals tolerated within `within`",
        ));
    }
    if raw.within < Duration::from_secs(1) {
        return Err(invalid(
            "limits.suspend.within",
            "must be at least 1s, e.g. \"1m\"",
        ));
    }
    if raw.lasts < Duration::from_secs(1) {
        return Err(invalid(
            "limits.suspend.for",
            "must be at least 1s, e.g. \"10m\"; remove [limits.suspend] to turn suspension off",
        ));
    }
    Ok(crate::limits::SuspendConfig {
        after: raw.after,
        within: raw.within,
        lasts: raw.lasts,
    })
}

fn validate_cache(raw: RawCache) -> Result<CacheConfig, ConfigError> {
    if raw.ttl.is_zero() || raw.negative_ttl.is_zero() {
        return Err(invalid(
            "cache.ttl",
            "ttl and negative_ttl must be greater than 0",
        ));
    }
    if raw.max_stale < raw.ttl {
        return Err(invalid("cache.max_stale", "must be at least cache.ttl"));
    }
    if raw.capacity == 0 {
        return Err(invalid("cache.capacity", "must be at least 1"));
    }
    Ok(CacheConfig {
        ttl: raw.ttl,
        negative_ttl: raw.negative_ttl,
        max_stale: raw.max_stale,
        capacity: raw.capacity,
        store_timeout: CacheConfig::default().store_timeout,
    })
}

fn validate_routes(
    raw: Vec<RawRoute>,
    unmatched: Option<String>,
    paths: &PathRules,
    known: &[Environment],
) -> Result<RouteTable, ConfigError> {
    let unmatched = unmatched.ok_or_else(|| {
        invalid(
            "auth.unmatched",
            "missing: say what a key may do on paths no [[route]] matches: \"deny\", \"allow\" (any valid key) or \"scope:NAME\"",
        )
    })?;
    let unmatched = Unmatched::parse(&unmatched).map_err(|e| invalid("auth.unmatched", e))?;
    let mut routes = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let name = format!("route[{i}] ({})", r.path);
        let bad = |m: String| invalid("route", format!("{name}: {m}"));
        let path = PathPattern::parse(&r.path, paths.case_insensitive).map_err(bad)?;
        let methods = r
            .methods
            .iter()
            .map(|m| {
                let upper = m.to_ascii_uppercase();
                match upper.as_str() {
                    "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS"
                    | "CONNECT" | "TRACE" => {
                        Ok(http::Method::from_bytes(upper.as_bytes()).expect("known"))
                    }
                    _ => Err(bad(format!("unknown method {m:?}"))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        for scope in r.scopes.iter().chain(&r.scopes_all) {
            check_scope(scope, false).map_err(bad)?;
        }
        // Default: every environment.
        let environments = match r.environments {
            None => known.to_vec(),
            Some(listed) => listed
                .iter()
                .map(|e| {
                    Environment::parse(e)
                        .filter(|e| known.contains(e))
                        .ok_or_else(|| {
                            let names: Vec<&str> = known.iter().map(|e| e.as_str()).collect();
                            bad(format!(
                                "environment {e:?}: use one of {} (more with [environments.<tag>])",
                                names.join(", ")
                            ))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        let limits = match r.limits {
            Some(limits) if limits.is_empty() => {
                return Err(bad(
                    "limits: set at least one of per_second, per_minute, per_hour, per_day, \
                     per_month, or leave it out"
                        .into(),
                ));
            }
            Some(limits) => {
                limits.check().map_err(|e| bad(format!("limits: {e}")))?;
                let names: Vec<&str> = methods.iter().map(http::Method::as_str).collect();
                Some(RouteLimits {
                    id: format!("route {} {}", names.join(","), path.as_str()).into(),
                    limits,
                })
            }
            None => None,
        };
        routes.push(Route {
            path,
            methods,
            scopes: r.scopes,
            scopes_all: r.scopes_all,
            environments,
            limits,
        });
    }
    RouteTable::new(routes, unmatched).map_err(|m| invalid("route", m))
}

fn parse_addr(field: &'static str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        invalid(
            field,
            format!("{s:?} is not an IP:PORT address, e.g. \"127.0.0.1:8080\" or \"[::]:8080\""),
        )
    })
}
