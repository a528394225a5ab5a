//! Config and certificate reload, on SIGHUP and when the files change on disk (polled: it
//! works the same for an edited file, a rename-into-place and a Kubernetes ConfigMap or
//! Secret volume, whose symlink swap inotify would miss).
//!
//! What a reload may change without a restart: the upstream, auth rules, routes, plans and
//! limits, trusted proxies, the key prefix and the access log switch. Listeners, `[server]`,
//! the store, the cache, `[metrics]` and the log format need a restart: a reload that changes
//! them applies the rest, keeps the running values and says so. A config that does not load or
//! validate changes nothing; the error is logged and counted
//! (`keygate_reloads_total{result="failed"}`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::tls::Certificates;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::Proxy;

pub struct Reloader {
    pub config_file: Option<PathBuf>,
    pub proxy: Arc<Proxy>,
    pub certificates: Option<Arc<Certificates>>,
    pub metrics: Arc<Metrics>,
}

type Stamp = Option<(Option<SystemTime>, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

impl Reloader {
    pub async fn run(self, interval: Duration, stop: CancellationToken) {
        #[cfg(unix)]
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by file change only");
                None
            }
        };
        let mut config_stamp = self.config_file.as_deref().and_then(stamp);
        let mut tick = (!interval.is_zero()).then(|| tokio::time::interval(interval));
        loop {
            #[cfg(unix)]
            let hangup_received = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup_received = std::future::pending::<Option<()>>();
            let ticked = async {
                match tick.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = hangup_received => {
                    tracing::info!("SIGHUP: reloading config and certificates");
                    config_stamp = self.config_file.as_deref().and_then(stamp);
                    self.reload_config();
                    self.reload_certificates();
                }
                _ = ticked => {
                    let now = self.config_file.as_deref().and_then(stamp);
                    if now != config_stamp {
                        config_stamp = now;
                        tracing::info!("config file changed: reloading");
                        self.reload_config();
                    }
                    let config = self.proxy.config();
                    if let (Some(certs), Some(tls)) = (&self.certificates, &config.tls)
                        && certs.changed_on_disk(tls)
                    {
                        tracing::info!("certificate files changed: reloading");
                        self.reload_certificates();
                    }
                }
            }
        }
    }

    fn reload_config(&self) {
        let Some(path) = &self.config_file else {
            return;
        };
        let loaded = match Config::load(path) {
            Ok(config) => config,
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; the running config stays");
                self.metrics.reloaded("config", false);
                return;
            }
        };
        let running = self.proxy.config();
        let (next, kept) = apply_reloadable(&running, loaded);
        if !kept.is_empty() {
            tracing::warn!(
                sections = %kept.join(", "),
                "these settings change only on restart; the running values stay"
            );
        }
        match self.proxy.reload(Arc::new(next)) {
            Ok(()) => {
                tracing::info!("config reloaded");
                self.metrics.reloaded("config", true);
            }
            Err(e) => {
                tracing::error!(error = %e, "config reload failed; the running config stays");
                self.metrics.reloaded("config", false);
            }
        }
    }

    fn reload_certificates(&self) {
        let config = self.proxy.config();
        let (Some(certs), Some(tls)) = (&self.certificates, &config.tls) else {
            return;
        };
        match certs.reload(tls) {
            Ok(()) => {
                tracing::info!("TLS certificate reloaded");
                self.metrics.reloaded("tls", true);
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate reload failed; the current certificate stays");
                certs.mark_seen(tls);
                self.metrics.reloaded("tls", false);
            }
        }
    }
}

/// `loaded` with every restart-only section put back to its running value, and the names of
/// the sections where that changed something.
fn apply_reloadable(running: &Config, mut loaded: Config) -> (Config, Vec<&'static str>) {
    let mut kept = Vec::new();
    let mut keep = |name: &'static str, running: &dyn ErasedSection, loaded: &dyn ErasedSection| {
        if running.json() != loaded.json() {
            kept.push(name);
        }
    };
    keep("listen", &running.listen, &loaded.listen);
    keep("server", &running.server, &loaded.server);
    keep("tls", &running.tls, &loaded.tls);
    keep("store", &running.store, &loaded.store);
    keep("cache", &running.cache, &loaded.cache);
    keep("log.format", &running.log.format, &loaded.log.format);
    keep("log.level", &running.log.level, &loaded.log.level);
    keep("metrics", &running.metrics, &loaded.metrics);
    loaded.listen = running.listen.clone();
    loaded.server = running.server.clone();
    loaded.tls = running.tls.clone();
    loaded.store = running.store.clone();
    loaded.cache = running.cache.clone();
    loaded.log.format = running.log.format;
    loaded.log.level = running.log.level.clone();
    loaded.metrics = running.metrics.clone();
    (loaded, kept)
}

/// Sections compare by their serialized form: every config type is `Serialize` already (for
/// `check-config`), and that form is exactly what the user wrote, after validation.
trait ErasedSection {
    fn json(&self) -> serde_json::Value;
}

impl<T: Serialize> ErasedSection for T {
    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:3000\"\n[auth]\nunmatched = \"allow\"\n{extra}"
        );
        Config::from_toml(&text, Path::new("test.toml"), std::iter::empty()).unwrap()
    }

    #[test]
    fn reloadable_sections_apply_and_the_rest_stays() {
        let running = config("[listen]\npublic = \"127.0.0.1:8080\"\n");
        let loaded = config(
            "[listen]\npublic = \"127.0.0.1:9999\"\n[keys]\nprefix = \"zz\"\n\
             [server]\nmax_connections = 5\n",
        );
        let (next, kept) = apply_reloadable(&running, loaded);
        assert_eq!(kept, vec!["listen", "server"]);
        assert_eq!(next.listen.public, running.listen.public);
        assert_eq!(next.server.max_connections, running.server.max_connections);
        assert_eq!(next.keys.prefix, "zz", "reloadable sections apply");

        let same = config("[listen]\npublic = \"127.0.0.1:8080\"\n");
        let (_, kept) = apply_reloadable(&running, same);
        assert!(kept.is_empty(), "{kept:?}");
    }
}
