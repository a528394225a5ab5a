//! keygate: a reverse-proxy sidecar that enforces API keys.
//!
//! # Layout
//!
//! The request path, in the order a request meets it:
//!
//! - [`server`]: listeners, the connection cap, drain and graceful shutdown; [`server::tls`]
//!   TLS termination with certificate reload; connection timing (header and idle timeouts)
//!   and config reload in its private modules.
//! - [`proxy`]: `handle()` (logging, the one place a refusal becomes a response) around
//!   `admit()` (the ordered stages below).
//! - [`credential`]: which header carries the key; the key format and its checksum.
//! - [`keys`]: key records and the [`keys::KeyStore`] trait; [`keys::cache`] is the
//!   in-process cache in front of every store, holding each key in the request path's compact
//!   form ([`keys::cached`]); [`keys::file`] the embedded file store,
//!   [`keys::redis`] the shared Redis store, [`keys::manage`] create/revoke/rotate,
//!   [`keys::packed`] the compact in-memory form the file store holds.
//! - [`authz`]: pure authorization of a known key (status, expiry, IP allowlist,
//!   environment, public-key methods, route scopes, workspace/project binding).
//! - [`routes`]: route rules, path patterns, path normalization, scope matching.
//! - [`forward`]: the upstream client (plain or TLS, HTTP/1.1 or HTTP/2) and header hygiene
//!   (hop-by-hop, credentials, `X-Forwarded-*`, identity headers); [`forward::paired`]
//!   gives each HTTP/1.1 client connection an upstream connection of its own, driven in its
//!   task; [`forward::upgrade`] splices WebSocket / `Upgrade` connections after admission.
//! - [`limits`]: plans, GCRA for short windows, calendar quotas (`quota`, counted in the
//!   process; `lease` + `shared`, shared through Redis with `keys::redis` holding the
//!   counters), temporary suspension (`suspend`), rate-limit headers, `keys usage` (`usage`).
//! - [`reject`]: every refusal, and its status + JSON body.
//!
//! Around it:
//!
//! - [`config`]: `proxy.toml` + `KEYGATE_*` overrides, validated once.
//! - [`admin`]: `/healthz`, `/readyz` and `/metrics` on the admin listener; [`metrics`]:
//!   the Prometheus registry.
//! - [`cli`]: the `keygate` commands; [`demo`]: `keygate demo`; [`echo`]: the demo's
//!   built-in upstream.

pub mod admin;
pub mod authz;
pub mod cli;
pub mod config;
pub mod credential;
pub mod demo;
pub mod echo;
pub mod forward;
pub mod h1;
pub mod head;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod reject;
pub mod routes;
pub mod server;

use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use server::{Server, ServerError};

/// Binds the configured listeners and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServerError> {
    Server::bind(config).await?.run(shutdown).await;
    Ok(())
}
