//! The serving sections: `[server]` (threads, timeouts, resource caps, shutdown) and `[tls]`
//! (certificate, key, what a plain-HTTP client gets). Raw and validated forms live together
//! here because every field maps one to one; the checks name the field and the fix.

use std::path::PathBuf;
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawServer {
    workers: Option<usize>,
    sharded: bool,
    #[serde(with = "humantime_serde")]
    header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    idle_timeout: Duration,
    max_connections: usize,
    max_header_bytes: usize,
    max_body_bytes: Option<u64>,
    http2_max_concurrent_streams: u32,
    #[serde(with = "humantime_serde")]
    drain_period: Duration,
    #[serde(with = "humantime_serde")]
    shutdown_timeout: Duration,
    #[serde(with = "humantime_serde")]
    watch_interval: Duration,
    batch_writes: bool,
    batch_backend: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            workers: None,
            sharded: false,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_connections: 10_000,
            max_header_bytes: 32 * 1024,
            max_body_bytes: None,
            http2_max_concurrent_streams: 128,
            drain_period: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(20),
            watch_interval: Duration::from_secs(2),
            batch_writes: true,
            batch_backend: "auto".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Server {
    /// Request-handling threads; `None`: one per CPU. 1 runs everything on one thread
    /// (the sidecar setting: no cross-thread hand-offs at all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Each worker runs its own event loop and accepts its own clients on the public
    /// listener (`SO_REUSEPORT`; the kernel spreads new connections over the workers), instead
    /// of all workers sharing one work-stealing runtime. A connection stays on the worker that
    /// accepted it, HTTP/2 streams included (so HTTP/2 clients balance worse). See
    /// [`Server::shards`] and `server::shard`.
    pub sharded: bool,
    /// Slow-loris guard: a client gets this long to send a request's headers, counted from
    /// its first byte (and from the connection's start for the first request).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no bytes either way for this long is
    /// closed. Keep it above the idle timeout of whatever pools connections to keygate (a
    /// load balancer that reuses a connection keygate just closed answers 502).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Open client connections at most; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Request line and headers, in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Request body, in bytes; larger gets 413. `None`: unlimited (streamed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    pub http2_max_concurrent_streams: u32,
    /// After SIGTERM: `/readyz` fails at once, requests are still served for this long (so
    /// load balancers notice), then the listeners close.
    #[serde(with = "humantime_serde")]
    pub drain_period: Duration,
    /// After the drain: in-flight requests get this long to finish before keygate exits.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How often the config file and TLS files are checked for changes; 0 turns the watch
    /// off (SIGHUP still reloads).
    #[serde(with = "humantime_serde")]
    pub watch_interval: Duration,
    /// The writes of one event-loop turn (request heads to the upstream, response heads to
    /// HTTP/1.1 clients) go to the kernel in one io_uring submission, where the kernel allows
    /// it ([`crate::batch`]); false: one `send` each.
    pub batch_writes: bool,
    /// Which kernel interface submits those batches: `auto` (io_uring, else Linux AIO where
    /// io_uring is refused), `io_uring` or `aio`. Read at start; a reload does not change it.
    pub batch_backend: crate::batch::Choice,
}

impl Server {
    /// How many event loops accept on the public listener: one per worker when
    /// [`Server::sharded`], else one (the main runtime, however many workers it has).
    pub fn shards(&self) -> usize {
        if !self.sharded {
            return 1;
        }
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    /// Worker threads of the main runtime, `None` for one per CPU. Sharded, the main thread
    /// is the first shard and runs on a runtime of its own thread alone.
    pub fn main_workers(&self) -> Option<usize> {
        if self.sharded { Some(1) } else { self.workers }
    }
}

impl TryFrom<RawServer> for Server {
    type Error = ConfigError;

    fn try_from(raw: RawServer) -> Result<Self, ConfigError> {
        if raw.workers.is_some_and(|w| w == 0 || w > 1024) {
            return Err(invalid(
                "server.workers",
                "must be between 1 and 1024; leave it out for one per CPU",
            ));
        }
        for (field, d) in [
            ("server.header_read_timeout", raw.header_read_timeout),
            ("server.idle_timeout", raw.idle_timeout),
            ("server.shutdown_timeout", raw.shutdown_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "must be greater than 0, e.g. \"10s\""));
            }
        }
        if raw.max_connections == 0 {
            return Err(invalid(
                "server.max_connections",
                "must be at least 1, e.g. 10000",
            ));
        }
        if !(1024..=1024 * 1024).contains(&raw.max_header_bytes) {
            return Err(invalid(
                "server.max_header_bytes",
                "must be between 1024 and 1048576 bytes, e.g. 32768",
            ));
        }
        if raw.max_body_bytes == Some(0) {
            return Err(invalid(
                "server.max_body_bytes",
                "must be at least 1; leave it out for no limit",
            ));
        }
        if raw.http2_max_concurrent_streams == 0 {
            return Err(invalid(
                "server.http2_max_concurrent_streams",
                "must be at least 1, e.g. 128",
            ));
        }
        let batch_backend = match raw.batch_backend.as_str() {
            "auto" => crate::batch::Choice::Auto,
            "io_uring" => crate::batch::Choice::IoUring,
            "aio" => crate::batch::Choice::Aio,
            _ => {
                return Err(invalid(
                    "server.batch_backend",
                    "must be \"auto\" (io_uring, else AIO), \"io_uring\" or \"aio\"",
                ));
            }
        };
        Ok(Server {
            workers: raw.workers,
            sharded: raw.sharded,
            header_read_timeout: raw.header_read_timeout,
            idle_timeout: raw.idle_timeout,
            max_connections: raw.max_connections,
            max_header_bytes: raw.max_header_bytes,
            max_body_bytes: raw.max_body_bytes,
            http2_max_concurrent_streams: raw.http2_max_concurrent_streams,
            drain_period: raw.drain_period,
            shutdown_timeout: raw.shutdown_timeout,
            watch_interval: raw.watch_interval,
            batch_writes: raw.batch_writes,
            batch_backend,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    min_version: Option<String>,
    #[serde(default)]
    plain_redirect: Option<String>,
}

/// TLS on the public listener.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tls {
    /// PEM: the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    pub min_version: TlsVersion,
    /// Where the plain listener (`listen.plain`) redirects; without it that listener answers
    /// 403 `https_required`. The request's path and query are appended.
    #[serde(
        serialize_with = "super::display_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub plain_redirect: Option<Uri>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// `[tls]` is optional as a whole, but half of it is an error.
pub(super) fn validate_tls(raw: Option<RawTls>) -> Result<Option<Tls>, ConfigError> {
    let Some(raw) = raw else { return Ok(None) };
    let (cert, key) = match (raw.cert, raw.key) {
        (Some(c), Some(k)) => (c, k),
        (None, _) => {
            return Err(invalid(
                "tls.cert",
                "missing; set cert = \"/path/to/fullchain.pem\" (or remove [tls] to serve plain HTTP)",
            ));
        }
        (_, None) => {
            return Err(invalid(
                "tls.key",
                "missing; set key = \"/path/to/privkey.pem\"",
            ));
        }
    };
    let min_version = match raw.min_version.as_deref() {
        None | Some("1.2") => TlsVersion::Tls12,
        Some("1.3") => TlsVersion::Tls13,
        Some(other) => {
            return Err(invalid(
                "tls.min_version",
                format!("{other:?}: use \"1.2\" or \"1.3\" (older versions are not offered)"),
            ));
        }
    };
    let plain_redirect = match raw.plain_redirect {
        None => None,
        Some(s) => {
            let uri: Uri = s.parse().map_err(|_| {
                invalid(
                    "tls.plain_redirect",
                    format!("{s:?} is not a URL; e.g. \"https://api.example.com\""),
                )
            })?;
            if uri.scheme_str() != Some("https")
                || uri.authority().is_none()
                || uri.path_and_query().is_some_and(|p| p.as_str() != "/")
            {
                return Err(invalid(
                    "tls.plain_redirect",
                    format!("{s:?}: use https://HOST[:PORT] with no path"),
                ));
            }
            Some(uri)
        }
    };
    Ok(Some(Tls {
        cert,
        key,
        min_version,
        plain_redirect,
    }))
}
