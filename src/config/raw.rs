//! The config file as written: every section and field, with defaults, and nothing else
//! (`deny_unknown_fields`, so a typo is an error rather than a silently ignored setting).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::keys::cache::CacheConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub(super) listen: RawListen,
    #[serde(default)]
    pub(super) server: super::serving::RawServer,
    pub(super) tls: Option<super::serving::RawTls>,
    pub(super) upstream: Option<RawUpstream>,
    #[serde(default)]
    pub(super) store: RawStore,
    #[serde(default)]
    pub(super) cache: RawCache,
    #[serde(default)]
    pub(super) keys: RawKeys,
    #[serde(default)]
    pub(super) auth: RawAuth,
    #[serde(default)]
    pub(super) paths: RawPaths,
    #[serde(default)]
    pub(super) guard: RawGuard,
    #[serde(default)]
    pub(super) network: RawNetwork,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    #[serde(default)]
    pub(super) plans: std::collections::BTreeMap<String, crate::limits::Limits>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    /// `[[route]]` rules, in order.
    #[serde(default)]
    pub(super) route: Vec<RawRoute>,
    pub(super) tokens: Option<RawTokens>,
    #[serde(default)]
    pub(super) cors: RawCors,
    /// `[environments.<tag>]`: environments beyond `live` and `test`, or their plans.
    #[serde(default)]
    pub(super) environments: std::collections::BTreeMap<String, RawEnvironment>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvironment {
    /// Where this environment's keys go (required beyond `live` and `test`).
    pub(super) upstream: Option<String>,
    /// The default plan of this environment's keys.
    pub(super) plan: Option<String>,
}

/// `[cors]`: browser origins for public keys (`crate::cors`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCors {
    pub(super) allow_origins: Vec<String>,
    pub(super) preflight: String,
    pub(super) allow_headers: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub(super) max_age: Duration,
}

impl Default for RawCors {
    fn default() -> Self {
        Self {
            allow_origins: Vec::new(),
            preflight: "any".into(),
            allow_headers: Vec::new(),
            max_age: crate::cors::CorsConfig::default().max_age,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokens {
    #[serde(default = "default_token_path")]
    pub(super) path: String,
    #[serde(default = "default_token_lifetime", with = "humantime_serde")]
    pub(super) lifetime: Duration,
    #[serde(default)]
    pub(super) secret_files: Vec<PathBuf>,
}

fn default_token_path() -> String {
    "/oauth/token".into()
}

fn default_token_lifetime() -> Duration {
    Duration::from_secs(3600)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) path: String,
    #[serde(default)]
    pub(super) methods: Vec<String>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    #[serde(default)]
    pub(super) scopes_all: Vec<String>,
    /// `None`: every environment.
    #[serde(default)]
    pub(super) environments: Option<Vec<String>>,
    /// This route's own limits, per key, on top of the key's plan.
    #[serde(default)]
    pub(super) limits: Option<crate::limits::Limits>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawListen {
    pub(super) public: String,
    pub(super) admin: String,
    /// A plain-HTTP listener beside a TLS `public` one: it only refuses or redirects.
    pub(super) plain: Option<String>,
    /// The management API (`/v1/…`); off unless set.
    pub(super) manage: Option<String>,
}

impl Default for RawListen {
    fn default() -> Self {
        Self {
            public: "0.0.0.0:8080".into(),
            admin: "127.0.0.1:9090".into(),
            plain: None,
            manage: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) url: String,
    /// Where sandbox (`test`) keys go. Without it they are refused.
    pub(super) sandbox_url: Option<String>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub(super) connect_timeout: Duration,
    #[serde(default = "default_upstream_timeout", with = "humantime_serde")]
    pub(super) timeout: Duration,
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub(super) body_timeout: Duration,
    #[serde(default = "default_tunnel_idle_timeout", with = "humantime_serde")]
    pub(super) tunnel_idle_timeout: Duration,
    #[serde(default = "yes")]
    pub(super) preserve_host: bool,
    /// PEM roots for an `https://` upstream, instead of the system's.
    pub(super) ca_file: Option<PathBuf>,
    /// Speak HTTP/2 to the upstream (prior knowledge for http://, required via ALPN for
    /// https://).
    #[serde(default)]
    pub(super) http2: bool,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_upstream_timeout() -> Duration {
    Duration::from_secs(30)
}
/// Envoy's stream idle timeout: long enough for streams that send a heartbeat now and then,
/// short enough that a dead upstream does not hold a client for the client's own patience.
fn default_body_timeout() -> Duration {
    Duration::from_secs(300)
}
/// The value HAProxy's documentation gives its `timeout tunnel` in its example.
fn default_tunnel_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawStore {
    pub(super) kind: String,
    // file
    pub(super) path: PathBuf,
    #[serde(with = "humantime_serde")]
    pub(super) reload_interval: Duration,
    /// Where the proxy writes last-used times (default: beside the keys file, if writable).
    pub(super) last_used_path: Option<PathBuf>,
    // redis
    pub(super) url: Option<String>,
    pub(super) nodes: Vec<String>,
    pub(super) sentinels: Vec<String>,
    pub(super) master_name: Option<String>,
    pub(super) username: Option<String>,
    /// Only from the environment (KEYGATE_STORE__PASSWORD): refused in the file.
    pub(super) password: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) namespace: String,
    #[serde(with = "humantime_serde")]
    pub(super) timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) epoch_poll: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) confirm_within: Duration,
    pub(super) ready_requires_current: bool,
    /// Redis only; `None` (unset) is `"budget"`.
    pub(super) quota_fallback: Option<String>,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            kind: "file".into(),
            path: "keys.json".into(),
            reload_interval: Duration::from_millis(250),
            last_used_path: None,
            url: None,
            nodes: Vec::new(),
            sentinels: Vec::new(),
            master_name: None,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            namespace: "keygate".into(),
            timeout: Duration::from_millis(250),
            epoch_poll: Duration::from_secs(1),
            confirm_within: Duration::from_secs(5),
            ready_requires_current: false,
            quota_fallback: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    pub(super) default_plan: Option<String>,
    pub(super) sandbox_plan: Option<String>,
    pub(super) reset: String,
    pub(super) local_share: f64,
    pub(super) suspend: Option<RawSuspend>,
}

/// `[limits.suspend]`: every field is required, so that turning it on is a decision.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSuspend {
    pub(super) after: u64,
    #[serde(with = "humantime_serde")]
    pub(super) within: Duration,
    #[serde(rename = "for", with = "humantime_serde")]
    pub(super) lasts: Duration,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            default_plan: None,
            sandbox_plan: None,
            reset: "epoch".into(),
            local_share: 1.0,
            suspend: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawCache {
    #[serde(with = "humantime_serde")]
    pub(super) ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) negative_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) max_stale: Duration,
    pub(super) capacity: u64,
}

impl Default for RawCache {
    fn default() -> Self {
        let d = CacheConfig::default();
        Self {
            ttl: d.ttl,
            negative_ttl: d.negative_ttl,
            max_stale: d.max_stale,
            capacity: d.capacity,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawKeys {
    pub(super) prefix: String,
    pub(super) max_per_owner: Option<u32>,
    #[serde(with = "humantime_serde")]
    pub(super) max_age: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub(super) warn_before: Option<Duration>,
}

impl Default for RawKeys {
    fn default() -> Self {
        Self {
            prefix: "kg".into(),
            max_per_owner: None,
            max_age: None,
            warn_before: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAuth {
    pub(super) credential_headers: Vec<String>,
    pub(super) max_key_length: usize,
    pub(super) public_paths: Vec<String>,
    pub(super) unmatched: Option<String>,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            credential_headers: vec![
                "authorization".into(),
                "x-api-key".into(),
                "project-access-token".into(),
            ],
            max_key_length: 256,
            public_paths: Vec::new(),
            unmatched: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawNetwork {
    pub(super) trusted_proxies: Vec<String>,
    pub(super) require_https: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawGuard {
    pub(super) max_invalid: u32,
    #[serde(with = "humantime_serde")]
    pub(super) window: Duration,
    #[serde(with = "humantime_serde")]
    pub(super) block_for: Duration,
    pub(super) block_known_keys: bool,
}

impl Default for RawGuard {
    fn default() -> Self {
        let d = crate::guard::GuardConfig::default();
        Self {
            max_invalid: d.max_invalid,
            window: d.window,
            block_for: d.block_for,
            block_known_keys: d.block_known_keys,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPaths {
    /// `reject` or `strip` (see `path::Parameters`).
    pub(super) parameters: String,
    pub(super) case_insensitive: bool,
}

impl Default for RawPaths {
    fn default() -> Self {
        Self {
            parameters: "reject".into(),
            case_insensitive: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    pub(super) format: String,
    pub(super) level: String,
    pub(super) access: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: "json".into(),
            level: "info".into(),
            access: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMetrics {
    pub(super) by_plan: bool,
    pub(super) by_owner: bool,
    pub(super) max_owners: usize,
}

impl Default for RawMetrics {
    fn default() -> Self {
        let d = crate::metrics::MetricsConfig::default();
        Self {
            by_plan: d.by_plan,
            by_owner: d.by_owner,
            max_owners: d.max_owners,
        }
    }
}
