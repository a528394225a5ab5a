//! Configuration: `proxy.toml` plus `KEYGATE_<SECTION>__<KEY>` environment overrides, parsed
//! once into validated types.
//!
//! The raw structs mirror the file (`deny_unknown_fields`, so a typo is an error rather than a
//! silently ignored setting); `TryFrom<RawConfig> for Config` checks everything that serde
//! cannot and names the field and the fix in its error. Nothing downstream re-validates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use http::header::HeaderName;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::credential::CredentialHeader;
use crate::guard::GuardConfig;
use crate::keys::cache::CacheConfig;
pub use crate::keys::{KeysConfig, StoreConfig};
use crate::path::PathRules;
use crate::routes::{PathPattern, RouteTable};

pub use serving::{Server, Tls, TlsVersion};

use env::{NOT_OVERRIDES, apply_override, refuse_file_secrets};
use raw::RawConfig;

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
// Validated: what the rest of keygate reads.

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub listen: Listen,
    pub server: Server,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    pub upstream: Upstream,
    pub store: StoreConfig,
    pub cache: CacheConfig,
    pub limits: crate::limits::LimitsConfig,
    pub keys: KeysConfig,
    pub auth: AuthConfig,
    /// `[tokens]`: access tokens (`POST /oauth/token`); `None`: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<crate::token::TokensConfig>,
    /// Every environment served: `live`, `test`, then `[environments.<tag>]`'s.
    pub environments: Vec<crate::vocab::Environment>,
    /// `[cors]`: browser origins for public keys ([`crate::cors`]).
    pub cors: crate::cors::CorsConfig,
    pub paths: PathRules,
    pub guard: GuardConfig,
    pub network: Network,
    pub log: LogConfig,
    pub routes: RouteTable,
    pub metrics: crate::metrics::MetricsConfig,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listen {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    /// With TLS on `public`: a plain-HTTP listener that refuses (403 `https_required`) or
    /// redirects, and never forwards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain: Option<SocketAddr>,
    /// The management API (`crate::api`), on a listener of its own; `None`: not served.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manage: Option<SocketAddr>,
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
    /// `[environments.<tag>] upstream`: where the keys of environments beyond live and test
    /// go.
    #[serde(
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "display_environments"
    )]
    pub environments: Vec<(crate::vocab::Environment, Uri)>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed for the upstream to send its response headers.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The longest the upstream may send nothing in the middle of a response body before
    /// the response is cut off (a silently dead upstream connection, or a hung upstream).
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// A WebSocket tunnel in which no byte has moved either way for this long is closed.
    #[serde(with = "humantime_serde")]
    pub tunnel_idle_timeout: Duration,
    pub preserve_host: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    pub http2: bool,
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
    /// Refuse (403 `https_required`) requests that did not arrive over TLS: on keygate's own
    /// TLS listener always true; behind a TLS terminator, `X-Forwarded-Proto: https` counts
    /// only from `trusted_proxies`.
    pub require_https: bool,
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

fn display_environments<S: serde::Serializer>(
    v: &[(crate::vocab::Environment, Uri)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(v.iter().map(|(e, u)| (e.as_str(), u.to_string())))
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
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let StoreConfig::File {
            path: keys,
            last_used_path,
            ..
        } = &mut config.store
        {
            resolve(keys);
            if let Some(p) = last_used_path {
                resolve(p);
            }
        }
        if let Some(tls) = &mut config.tls {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
        }
        if let Some(ca) = &mut config.upstream.ca_file {
            resolve(ca);
        }
        if let Some(tokens) = &mut config.tokens {
            tokens.secret_files.iter_mut().for_each(resolve);
            let secrets = crate::token::Secrets::read(&tokens.secret_files)
                .map_err(|e| invalid("tokens.secret_files", e))?;
            tokens.secrets = std::sync::Arc::new(secrets);
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

    /// The effective configuration as TOML, for `check-config`. Secrets (the Redis password)
    /// are masked by their types' serializers.
    /// The text is a config file itself, in the shape `RawConfig` reads (`check-config`'s
    /// output fed back to `check-config` passes and prints the same), not the shape of the
    /// validated types: see [`as_written`].
    pub fn to_toml(&self) -> String {
        let rendered = toml::Table::try_from(self)
            .map_err(|e| e.to_string())
            .and_then(|table| {
                let (mut table, mut text) = as_written(table);
                // Section by section, in the order of the shipped proxy.toml (a table alone
                // would print them alphabetically); anything new goes last.
                const ORDER: &[&str] = &[
                    "listen",
                    "server",
                    "tls",
                    "upstream",
                    "store",
                    "cache",
                    "keys",
                    "auth",
                    "tokens",
                    "cors",
                    "paths",
                    "guard",
                    "network",
                    "metrics",
                    "log",
                    "limits",
                    "plans",
                    "environments",
                    "route",
                ];
                // A top-level value that is not a table must come before every table (after
                // one, TOML reads it as that table's).
                let loose: toml::Table = table
                    .iter()
                    .filter(|(_, v)| !is_table(v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if !loose.is_empty() {
                    text.push_str(&toml::to_string_pretty(&loose).map_err(|e| e.to_string())?);
                    text.push('\n');
                    table.retain(|_, v| is_table(v));
                }
                let mut names: Vec<String> = ORDER.iter().map(|s| s.to_string()).collect();
                names.extend(
                    table
                        .keys()
                        .filter(|k| !ORDER.contains(&k.as_str()))
                        .cloned(),
                );
                for name in names {
                    let Some(value) = table.remove(&name) else {
                        continue;
                    };
                    let one = toml::Table::from_iter([(name, value)]);
                    text.push_str(&toml::to_string_pretty(&one).map_err(|e| e.to_string())?);
                    text.push('\n');
                }
                Ok(text)
            });
        rendered.unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// A table, or an array of tables (`[[route]]`): what TOML writes under a header.
fn is_table(value: &toml::Value) -> bool {
    match value {
        toml::Value::Table(_) => true,
        toml::Value::Array(items) => {
            !items.is_empty() && items.iter().all(|i| matches!(i, toml::Value::Table(_)))
        }
        _ => false,
    }
}

/// The validated config's serialized form moved back into the places the file takes them:
/// `[limits.plans.*]` → `[plans.*]`, `[routes]` → `[[route]]` + `[auth] unmatched`, the Redis
/// mode's fields back into `[store]`; `[cache] store_timeout` (derived from the Redis
/// timeout) and a masked password (never written in the file) dropped. Returns the table
/// and comment lines for what was left out.
fn as_written(mut table: toml::Table) -> (toml::Table, String) {
    use toml::Value;
    let mut notes = String::new();
    let section = |table: &mut toml::Table, name: &str| match table.remove(name) {
        Some(Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let mut cache = section(&mut table, "cache");
    cache.remove("store_timeout");
    table.insert("cache".into(), Value::Table(cache));

    let mut limits = section(&mut table, "limits");
    if let Some(plans) = limits.remove("plans") {
        table.insert("plans".into(), plans);
    }
    // `[environments.<tag>]` is written as upstream + plan per tag; the validated config
    // keeps the upstreams in `[upstream]`, the plans in `[limits]` and the list of every
    // environment (derived) at the top.
    table.remove("environments");
    let mut environments = toml::Table::new();
    let mut env = |tag: &str, field: &str, value: Value| {
        let entry = environments
            .entry(tag.to_owned())
            .or_insert_with(|| Value::Table(toml::Table::new()));
        if let Value::Table(t) = entry {
            t.insert(field.into(), value);
        }
    };
    if let Some(Value::Array(pairs)) = limits.remove("environment_plans") {
        for pair in pairs {
            if let Value::Array(pair) = pair
                && let [Value::String(tag), plan] = pair.as_slice()
            {
                env(tag, "plan", plan.clone());
            }
        }
    }
    let mut upstream = section(&mut table, "upstream");
    if let Some(Value::Table(urls)) = upstream.remove("environments") {
        for (tag, url) in urls {
            env(&tag, "upstream", url);
        }
    }
    table.insert("upstream".into(), Value::Table(upstream));
    if !environments.is_empty() {
        table.insert("environments".into(), Value::Table(environments));
    }
    table.insert("limits".into(), Value::Table(limits));

    let mut routes = section(&mut table, "routes");
    let mut auth = section(&mut table, "auth");
    if let Some(unmatched) = routes.remove("unmatched") {
        auth.insert("unmatched".into(), unmatched);
    }
    table.insert("auth".into(), Value::Table(auth));
    if let Some(Value::Array(rules)) = routes.remove("routes")
        && !rules.is_empty()
    {
        table.insert("route".into(), Value::Array(rules));
    }

    let mut store = section(&mut table, "store");
    if let Some(Value::Table(mode)) = store.remove("mode") {
        // `mode` names the variant; its fields (url | nodes | sentinels + master_name) sit
        // in `[store]` in the file.
        store.extend(mode.into_iter().filter(|(k, _)| k != "mode"));
    }
    if store.remove("password").is_some() {
        // Commented out: a password in the file is refused (it comes from the environment
        // or password_file), and the value is masked anyway.
        notes.push_str(
            "# [store] password = \"********\" (set from KEYGATE_STORE__PASSWORD or \
             password_file; never written here)\n",
        );
    }
    table.insert("store".into(), Value::Table(store));
    (table, notes)
}

/// A CIDR, or a bare address meaning a single host.
pub use crate::vocab::parse_net;

/// Header names keygate owns; a client's copies are always removed.
pub const IDENTITY_HEADER_PREFIX: &str = "x-keygate-";

pub fn is_identity_header(name: &HeaderName) -> bool {
    name.as_str().starts_with(IDENTITY_HEADER_PREFIX)
}

mod env;
mod raw;
mod serving;
mod validate;

#[cfg(test)]
mod tests;
