//! keygate: a reverse-proxy sidecar that enforces API keys.
//!
//! # Layout
//!
//! The request path, in the order a request meets it (`proxy::admit` reads in the same
//! order):
//!
//! - [`server`]: listeners, the connection cap, drain and graceful shutdown; [`server::tls`]
//!   TLS termination with certificate reload. Its private modules: `server::session`, keygate's
//!   HTTP/1.1 client session (read a head, admit, forward or refuse, keep-alive, the header and
//!   idle clocks); `server::conn`, hyper's connections (HTTP/2 clients, and HTTP/1.1 ones when
//!   the upstream speaks HTTP/2) and their watchdog (header, idle and stall clocks, a polite
//!   close that must finish); config reload; `server::memory`, the heap handed back after a
//!   flood of connections; `server::shard`, an event loop and listening socket per worker
//!   (`[server] sharded`).
//! - [`wire`]: keygate's own HTTP/1.1 on the wire: client request heads indexed in the read
//!   buffer and the framing rules that refuse smuggling ([`wire::request`]), bodies by length,
//!   chunks or close ([`wire::body`]), the client's response heads and JSON refusals
//!   ([`wire::response`]).
//! - [`http2`]: keygate's own HTTP/2 on the wire, being built to serve HTTP/2 clients in
//!   place of hyper's server: frames ([`http2::frame`]), request and response header blocks
//!   ([`http2::request`], [`http2::response`]) and a connection's state without I/O
//!   ([`http2::connection`]). Nothing serves with it yet.
//! - [`header_rules`]: the header rulebook: every header name classified once, and what the
//!   upstream and the client may see of each; both engines render its decisions.
//! - [`head`]: the request head as the stages read it, whichever engine parsed it.
//! - [`proxy`]: `admit()`, the ordered stages below, and `finish()` (metrics and the access
//!   log), for both engines; `handle()`, hyper's request path around them.
//!   1. transport rules (HTTPS only, sizes, method);
//!   2. [`path`]: the request path normalized once (escapes, dot segments, `;` parameters), or
//!      refused; the rules match it and the upstream receives it;
//!   3. public paths and the route table, [`routes`] (patterns, scope matching);
//!   4. [`credential`]: which header carries the key; the key format and its checksum;
//!   5. [`guard`]: the credential-stuffing guard, before a key costs a lookup; an access
//!      token instead of a key is opened by [`token`] (format, checksum, sealed box, expiry)
//!      and stands for its key from here on;
//!   6. [`keys`]: the lookup through [`keys::cache`] (each key held in the request path's
//!      compact form, [`keys::cached_key`]) in front of [`keys::KeyStore`]: [`keys::file`], the
//!      embedded file store, or [`keys::redis`], shared by every sidecar;
//!   7. [`authz`]: pure authorization of a known key (status, expiry, the headers it may
//!      arrive in, IP allowlist, environment, public-key methods, route scopes,
//!      workspace/project binding); then whether it is due for rotation;
//!   8. [`limits`]: plans, GCRA for short windows, calendar quotas (`quota`, counted in the
//!      process; `lease` + `shared`, shared through Redis with `keys::redis` holding the
//!      counters), temporary suspension (`suspend`), rate-limit headers; a route's own
//!      limits (`[[route]] limits`) counted per key and route the same way.
//! - [`cors`]: browser origins for public keys, the preflights keygate answers itself, the
//!   `Access-Control-*` headers both engines render on every response to a browser.
//! - [`reject`]: every refusal, and its status, headers + JSON body; the one place a refusal
//!   becomes a response.
//! - [`forward`]: the admitted request on its way upstream: [`forward::upstream_head`] the
//!   upstream's HTTP/1.1 request head, written from keygate's own head or an HTTP/2 stream's
//!   header map; [`forward::upstream`] keygate's own upstream connections (dialing, reuse
//!   checks, parking), used by HTTP/1.1 client sessions and, through [`forward::links`], by
//!   each HTTP/2 stream in its own task ([`forward::response_head`] reads the upstream's
//!   response head for it); the rulebook rendered on hyper's header maps and the shared pool
//!   for an HTTP/2 upstream; [`forward::failure`] why an upstream request failed, as the
//!   metrics name it; [`forward::silence`] the clock that cuts off a response whose upstream
//!   goes silent mid-body; [`forward::tunnel`] a WebSocket tunnel (after a `101`, or after an
//!   HTTP/2 client's extended CONNECT, which [`forward::links`] sends upstream as an HTTP/1.1
//!   handshake) and the clock that closes it once nothing moves; [`forward::websocket`] where
//!   its frames end, so that keygate can close it between two of them, saying why (stopping,
//!   or its key lapsed: [`keys::cache::KeyCache::lapsed`]).
//! - [`batch`]: the writes of one event-loop turn, both directions (request heads to
//!   upstreams; responses to HTTP/1.1, HTTP/2 and TLS clients), sent in one io_uring
//!   submission, or one Linux AIO `io_submit` where io_uring is refused; its
//!   [`batch::Socket`] is every plain TCP connection that can join a batch, and
//!   [`batch::Batched`] joins the flushes of hyper's connections and of TLS to it.
//! - [`metrics`]: the Prometheus registry, and [`metrics::Outcome`], what became of each
//!   request; [`ratelog`]: errors that repeat (a dead upstream, a dead key store) logged once
//!   per period with a count, not once each.
//!
//! Around it:
//!
//! - [`config`]: `proxy.toml` + `KEYGATE_*` overrides, validated once.
//! - [`tcp`]: TCP keepalive and `TCP_USER_TIMEOUT` for every connection keygate opens
//!   (upstream, Redis) and for a client's once it becomes a WebSocket tunnel, so a path that
//!   dies without a reset is noticed in seconds.
//! - [`crypto`]: the one rustls crypto provider (aws-lc-rs, with the hybrid post-quantum key
//!   exchange) that the TLS port, the upstream client and the Redis client are built with,
//!   and the primitives of access tokens.
//! - [`vocab`]: the words every layer shares (`KeyHash`, `KeyType`, `Environment` (live, test
//!   and `[environments.<tag>]`, one byte each), `Status`,
//!   `CredentialHeader`, `HeaderSet`, `StoreError`); it imports nothing, so the layers above never import each other in a
//!   circle (`tests/layout.rs` fails on a cycle among top-level modules).
//! - [`keys::manage`] create/update/revoke/rotate for the CLI and the API, [`keys::audit`] the
//!   audit trail every such action leaves, and [`keys::usage`]; [`keys::rotation`]: when a
//!   key is due for rotation (`[keys] max_age`, `warn_before`), the `Deprecation`/`Sunset`
//!   headers its responses carry, the store scan behind `keygate_keys_due_for_rotation`.
//! - [`token`] also issues access tokens: `POST /oauth/token` (RFC 6749 §4.4), answered by
//!   [`proxy`] itself on hyper's engine (keygate's own HTTP/1.1 engine hands it such a
//!   connection).
//! - [`api`]: the management API on `[listen] manage` (`/v1/keys`, `/v1/keys/verify`,
//!   `/v1/audit`, `/v1/health`, `/v1/openapi.json`), its callers checked by `proxy::admit` and the
//!   management scopes of [`api::auth`]; [`api::idempotency`] for `Idempotency-Key`.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` and `/last-used` on the admin listener.
//! - [`cli`]: the `keygate` commands (`cli::health`: `keygate health`, the container health
//!   check; `cli::demo`: `keygate demo`); [`echo`]: the demo's built-in upstream, also
//!   `keygate echo`.
//! - `testing` (unit tests only): keys in memory and a [`proxy::Proxy`] built from a real
//!   `proxy.toml`, for the unit tests of the sessions and stages.
//!
//! Outside `src/`: `build.rs` embeds the git commit; `deploy/` holds the image, the seccomp
//! profile, docker-compose, Kubernetes, Prometheus and Grafana files (deploy/README.md).

pub mod admin;
pub mod api;
pub mod authz;
pub mod batch;
pub mod cli;
pub mod config;
pub mod cors;
pub mod credential;
pub mod crypto;
pub mod echo;
pub mod forward;
pub mod guard;
pub mod head;
pub mod header_rules;
pub mod http2;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod ratelog;
pub mod reject;
pub mod routes;
pub mod server;
pub mod tcp;
#[cfg(test)]
mod testing;
pub mod token;
pub mod vocab;
pub mod wire;

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
