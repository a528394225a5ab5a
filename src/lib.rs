//! keygate: a reverse-proxy sidecar that enforces API keys.
//!
//! # Layout
//!
//! The request path, in the order a request meets it:
//!
//! - [`server`]: listeners, the connection cap, drain and graceful shutdown; [`server::tls`]
//!   TLS termination with certificate reload; in its private modules the HTTP/1.1 connection
//!   loop (`server::h1`: read a head, admit, forward or refuse, keep-alive, timeouts), hyper's
//!   connections for HTTP/2 clients (`server::conn`), config reload, and the heap handed
//!   back after a flood of connections (`server::memory`).
//! - [`h1`]: keygate's own HTTP/1.1 on the wire: request heads indexed in the read buffer and
//!   the framing rules that refuse smuggling ([`h1::head`]), the header names it acts on
//!   ([`h1::names`]), bodies by length, chunks or close ([`h1::body`]), the client's response
//!   heads and JSON refusals ([`h1::write`]).
//! - [`proxy`]: `admit()` (the ordered stages below) and `finish()` (metrics and the access
//!   log) for both engines; `handle()`, hyper's request path around them.
//! - [`head`]: the request head as the stages read it, whichever engine parsed it.
//! - [`path`]: the request path normalized once (escapes, dot segments, `;` parameters), or
//!   refused; the rules match it and the upstream receives it.
//! - [`credential`]: which header carries the key; the key format and its checksum.
//! - [`guard`]: the credential-stuffing guard: invalid keys counted per source, a source past
//!   its threshold refused before its keys cost a lookup.
//! - [`keys`]: key records and the [`keys::KeyStore`] trait; [`keys::cache`] is the
//!   in-process cache in front of every store, holding each key in the request path's compact
//!   form ([`keys::cached`]); [`keys::file`] the embedded file store,
//!   [`keys::redis`] the shared Redis store, [`keys::manage`] create/revoke/rotate,
//!   [`keys::packed`] the compact in-memory form the file store holds.
//! - [`authz`]: pure authorization of a known key (status, expiry, IP allowlist,
//!   environment, public-key methods, route scopes, workspace/project binding).
//! - [`routes`]: route rules, path patterns, scope matching.
//! - [`forward`]: what the upstream may see (hop-by-hop, credentials, `X-Forwarded-*`,
//!   identity headers) for hyper's requests, and [`forward::h1`] the same as the upstream's
//!   HTTP/1.1 request head; [`forward::upstream`] the upstream connections of HTTP/1.1 client
//!   connections (dialing, reuse checks, parking); the shared pool for HTTP/2;
//!   [`forward::failure`] why an upstream request failed, as the metrics name it.
//! - [`batch`]: the writes of one event-loop turn, both directions (request heads to
//!   upstreams, response heads to HTTP/1.1 clients), sent in one io_uring submission; its
//!   [`batch::Socket`] is every plain TCP connection that can join a batch.
//! - [`limits`]: plans, GCRA for short windows, calendar quotas (`quota`, counted in the
//!   process; `lease` + `shared`, shared through Redis with `keys::redis` holding the
//!   counters), temporary suspension (`suspend`), rate-limit headers, `keys usage` (`usage`).
//! - [`reject`]: every refusal, and its status, headers + JSON body.
//!
//! Around it:
//!
//! - [`config`]: `proxy.toml` + `KEYGATE_*` overrides, validated once.
//! - [`vocab`]: the words every layer shares (`KeyHash`, `KeyType`, `Environment`, `Status`,
//!   `StoreError`); it imports nothing, so the layers above never import each other in a
//!   circle (`tests/layout.rs` fails on a cycle among top-level modules).
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` and `/last-used` on the admin listener;
//!   [`metrics`]: the Prometheus registry (and `[metrics]`, the usage labels); [`ratelog`]:
//!   errors that repeat (a dead upstream, a dead key store) logged once per period with a
//!   count, not once each.
//! - [`cli`]: the `keygate` commands (`cli::health`: `keygate health`, the container health
//!   check; `cli::demo`: `keygate demo`); [`echo`]: the demo's built-in upstream, also
//!   `keygate echo`.
//!
//! Outside `src/`: `build.rs` embeds the git commit; `deploy/` holds the image, the seccomp
//! profile, docker-compose, Kubernetes, Prometheus and Grafana files (deploy/README.md).

pub mod admin;
pub mod authz;
pub mod batch;
pub mod cli;
pub mod config;
pub mod credential;
pub mod echo;
pub mod forward;
pub mod guard;
pub mod h1;
pub mod head;
pub mod header_rules;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod ratelog;
pub mod reject;
pub mod routes;
pub mod server;
pub mod vocab;

use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use server::{Server, ServerError};

/// The git commit this binary was built from (`build.rs`; `unknown` without git or
/// `GIT_COMMIT`), shown by `keygate --version` and `keygate_build_info`.
pub const COMMIT: &str = env!("BUILD_GIT_COMMIT");

/// `0.1.0 (commit 1a2b3c4d5e6f)`: what `keygate --version` prints after the name.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("BUILD_GIT_COMMIT"),
    ")"
);

/// Binds the configured listeners and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServerError> {
    Server::bind(config).await?.run(shutdown).await;
    Ok(())
}
