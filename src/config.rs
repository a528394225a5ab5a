//! Configuration: `proxy.toml` plus `KEYGATE_<SECTION>__<KEY>` environment overrides, parsed
//! once into validated types.
//!
//! The raw structs mirror the file (`deny_unknown_fields`, so a typo is an error rather than a
//! silently ignored setting); `TryFrom<RawConfig> for Config` checks everything that serde
//! cannot and names the field and the fix in its error. Nothing downstream re-validates.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use http::header::HeaderName;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::credential::CredentialHeader;
use crate::keys::Environment;
use crate::keys::cache::CacheConfig;
use crate::keys::redis::{RedisConfig, RedisMode, redact};
use crate::routes::{PathPattern, Route, RouteTable, Unmatched, check_scope};

/// Environment variables that configure the CLI itself rather than a config value.
const NOT_OVERRIDES: &[&str] = &["KEYGATE_CONFIG", "KEYGATE_LOG"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw: exactly what the file may say.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    server: RawServer,
    upstream: Option<RawUpstream>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    cache: RawCache,
    #[serde(default)]
    keys: RawKeys,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    network: RawNetwork,
    #[serde(default)]
    log: RawLog,
    /// `[[route]]` rules, in order.
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: String,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    scopes_all: Vec<String>,
    #[serde(default = "both_environments")]
    environments: Vec<String>,
}

fn both_environments() -> Vec<String> {
    vec!["live".into(), "test".into()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawListen {
    public: String,
    admin: String,
}

impl Default for RawListen {
    fn default() -> Self {
        Self {
            public: "0.0.0.0:8080".into(),
            admin: "127.0.0.1:9090".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    workers: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    url: String,
    /// Where sandbox (`test`) keys go. Without it they are refused.
    sandbox_url: Option<String>,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(default = "default_upstream_timeout", with = "humantime_serde")]
    timeout: Duration,
    #[serde(default = "yes")]
    preserve_host: bool,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_upstream_timeout() -> Duration {
    Duration::from_secs(30)
}
fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    kind: String,
    // file
    path: PathBuf,
    #[serde(with = "humantime_serde")]
    reload_interval: Duration,
    // redis
    url: Option<String>,
    nodes: Vec<String>,
    sentinels: Vec<String>,
    master_name: Option<String>,
    username: Option<String>,
    /// Only from the environment (KEYGATE_STORE__PASSWORD): refused in the file.
    password: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    namespace: String,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
    #[serde(with = "humantime_serde")]
    epoch_poll: Duration,
}

impl Default for RawStore {
    fn default() -> Self {
        Self {
            kind: "file".into(),
            path: "keys.json".into(),
            reload_interval: Duration::from_millis(250),
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
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCache {
    #[serde(with = "humantime_serde")]
    ttl: Duration,
    #[serde(with = "humantime_serde")]
    negative_ttl: Duration,
    #[serde(with = "humantime_serde")]
    max_stale: Duration,
    capacity: u64,
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
struct RawKeys {
    prefix: String,
    max_per_owner: Option<u32>,
}

impl Default for RawKeys {
    fn default() -> Self {
        Self {
            prefix: "kg".into(),
            max_per_owner: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    credential_headers: Vec<String>,
    max_key_length: usize,
    public_paths: Vec<String>,
    unmatched: Option<String>,
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
struct RawNetwork {
    trusted_proxies: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    format: String,
    level: String,
    access: bool,
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

// ---------------------------------------------------------------------------------------------
// Validated: what the rest of keygate reads.

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub listen: Listen,
    pub server: Server,
    pub upstream: Upstream,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub keys: KeysConfig,
    pub auth: AuthConfig,
    pub network: Network,
    pub log: LogConfig,
    pub routes: RouteTable,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listen {
    pub public: SocketAddr,
    pub admin: SocketAddr,
}

#[derive(Debug, Clone, Serialize)]
pub struct Server {
    /// Request-handling threads; `None`: one per CPU. 1 runs everything on one thread
    /// (the sidecar setting: no cross-thread hand-offs at all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Upstream {
    #[serde(serialize_with = "display")]
    pub url: Uri,
    #[serde(
        serialize_with = "display_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub sandbox_url: Option<Uri>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for the upstream to send its response headers.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub preserve_host: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoreConfig {
    File {
        path: PathBuf,
        #[serde(with = "humantime_serde")]
        reload_interval: Duration,
    },
    Redis(RedisConfig),
}

#[derive(Debug, Clone, Serialize)]
pub struct KeysConfig {
    pub prefix: String,
    /// Live (not revoked) keys one owner may hold; `None` for no cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_per_owner: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuthConfig {
    pub credential_headers: Vec<CredentialHeader>,
    pub max_key_length: usize,
    pub public_paths: Vec<PathPattern>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Network {
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub access: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

fn display<T: std::fmt::Display, S: serde::Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn display_opt<T: std::fmt::Display, S: serde::Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

// ---------------------------------------------------------------------------------------------
// Loading.

impl Config {
    /// Reads `path`, applies `KEYGATE_*` overrides from the process environment, validates.
    /// Relative paths inside the file (the keys file) are resolved against the file's folder,
    /// so `keygate -c /etc/keygate/proxy.toml` works from any working directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_toml(&text, path, std::env::vars())?;
        match &mut config.store {
            StoreConfig::File { path: keys, .. } if keys.is_relative() => {
                let base = path.parent().unwrap_or(Path::new("."));
                *keys = base.join(&*keys);
            }
            _ => {}
        }
        Ok(config)
    }

    /// Parses TOML text with the given environment overrides (injectable for tests).
    pub fn from_toml(
        text: &str,
        origin: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_owned(),
            message: e.to_string(),
        })?;
        refuse_file_secrets(&table, origin)?;
        let mut vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("KEYGATE_") && !NOT_OVERRIDES.contains(&k.as_str()))
            .collect();
        vars.sort();
        for (var, value) in vars {
            apply_override(&mut table, &var, &value)?;
        }
        let raw: RawConfig =
            RawConfig::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Parse {
                path: origin.to_owned(),
                message: e.to_string(),
            })?;
        Config::try_from(raw)
    }

    /// The effective configuration as TOML, for `check-config`. There are no secrets in it
    /// yet; when there are, they are masked here.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Secrets belong in the environment or a file of their own, where they can be mounted from
/// a secret manager and kept out of config repositories: a password written in the config file
/// is an error, not a warning.
fn refuse_file_secrets(table: &toml::Table, origin: &Path) -> Result<(), ConfigError> {
    let store = table.get("store").and_then(toml::Value::as_table);
    let secret_in_url = |v: &toml::Value| {
        v.as_str().is_some_and(|u| {
            u.split("://").nth(1).is_some_and(|rest| {
                rest.split('/').next().is_some_and(|auth| {
                    auth.contains('@') && auth.split('@').next().is_some_and(|ui| ui.contains(':'))
                })
            })
        })
    };
    let Some(store) = store else { return Ok(()) };
    let in_urls = store.get("url").is_some_and(secret_in_url)
        || ["nodes", "sentinels"].iter().any(|k| {
            store
                .get(*k)
                .and_then(toml::Value::as_array)
                .is_some_and(|a| a.iter().any(secret_in_url))
        });
    if store.contains_key("password") || in_urls {
        return Err(ConfigError::Parse {
            path: origin.to_owned(),
            message: "store: the Redis password must not be written in the config file; set \
                      KEYGATE_STORE__PASSWORD or store.password_file"
                .into(),
        });
    }
    Ok(())
}

/// `KEYGATE_UPSTREAM__URL=http://x` sets `upstream.url`. The value is read as a TOML value
/// (numbers, booleans, `["a","b"]`) unless the file already holds a string there or it is not
/// valid TOML, in which case it is taken verbatim as a string.
fn apply_override(table: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let env_err = |message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let path: Vec<String> = var["KEYGATE_".len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.len() < 2 || path.iter().any(String::is_empty) {
        return Err(env_err(
            "expected KEYGATE_<SECTION>__<KEY>, e.g. KEYGATE_UPSTREAM__URL".into(),
        ));
    }
    let (leaf, sections) = path.split_last().expect("checked len >= 2");
    let mut node = table;
    for section in sections {
        let entry = node
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        node = entry
            .as_table_mut()
            .ok_or_else(|| env_err(format!("[{section}] is not a table in the config file")))?;
    }
    let existing_is_string = matches!(node.get(leaf), Some(toml::Value::String(_)));
    let parsed = if existing_is_string {
        None
    } else {
        toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
    };
    node.insert(
        leaf.clone(),
        parsed.unwrap_or_else(|| toml::Value::String(value.to_owned())),
    );
    Ok(())
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let listen = Listen {
            public: parse_addr("listen.public", &raw.listen.public)?,
            admin: parse_addr("listen.admin", &raw.listen.admin)?,
        };
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

        let unmatched = raw.auth.unmatched.clone();
        let auth = validate_auth(raw.auth)?;
        let routes = validate_routes(raw.route, unmatched)?;

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

        if raw.server.workers.is_some_and(|w| w == 0 || w > 1024) {
            return Err(invalid(
                "server.workers",
                "must be between 1 and 1024; leave it out for one per CPU",
            ));
        }

        Ok(Config {
            listen,
            server: Server {
                workers: raw.server.workers,
            },
            upstream: Upstream {
                url,
                sandbox_url,
                connect_timeout: up.connect_timeout,
                timeout: up.timeout,
                preserve_host: up.preserve_host,
            },
            store,
            cache,
            keys: KeysConfig {
                prefix,
                max_per_owner: raw.keys.max_per_owner,
            },
            auth,
            network: Network { trusted_proxies },
            log: LogConfig {
                format,
                level: raw.log.level,
                access: raw.log.access,
            },
            routes,
        })
    }
}

fn validate_auth(raw: RawAuth) -> Result<AuthConfig, ConfigError> {
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
        .map(|p| PathPattern::parse(p))
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
    if url.scheme_str() != Some("http") || url.authority().is_none() {
        return Err(invalid(
            field,
            format!("{s:?}: expected http://HOST:PORT (https upstreams are not supported yet)"),
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
            Ok(StoreConfig::File {
                path: raw.path,
                reload_interval: raw.reload_interval,
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
            Ok(StoreConfig::Redis(RedisConfig {
                mode,
                username: raw.username,
                password,
                ca_file: raw.ca_file,
                namespace: raw.namespace,
                timeout: raw.timeout,
                epoch_poll: raw.epoch_poll,
            }))
        }
        other => Err(invalid(
            "store.kind",
            format!("unknown store {other:?}; use \"file\" or \"redis\""),
        )),
    }
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
        let path = PathPattern::parse(&r.path).map_err(bad)?;
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
        let environments = r
            .environments
            .iter()
            .map(|e| match e.as_str() {
                "live" => Ok(Environment::Live),
                "test" => Ok(Environment::Test),
                other => Err(bad(format!(
                    "environment {other:?}: use \"live\" or \"test\""
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        routes.push(Route {
            path,
            methods,
            scopes: r.scopes,
            scopes_all: r.scopes_all,
            environments,
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

/// A CIDR, or a bare address meaning a single host.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not a CIDR such as 10.0.0.0/24 or 2001:db8::/32"))
}

/// Header names keygate owns; a client's copies are always removed.
pub const IDENTITY_HEADER_PREFIX: &str = "x-keygate-";

pub fn is_identity_header(name: &HeaderName) -> bool {
    name.as_str().starts_with(IDENTITY_HEADER_PREFIX)
}

#[cfg(test)]
mod tests {
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
            (MINIMAL, &[("KEYGATE_LOG__FORMAT", "xml")], "log.format"),
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
}
