//! Listeners and the process lifecycle: bind, accept (with a connection cap), hand each
//! connection to `session` (keygate's own HTTP/1.1) or `conn` (hyper: HTTP/2 clients, the admin
//! and plain ports), reload config and certificates (`reload`), give the heap back after
//! floods of connections (`memory`), accept on one event loop per worker when sharded
//! (`shard`), and shut down in order: fail readiness, drain, stop accepting, finish in-flight
//! requests, exit before the deadline.

mod conn;
mod memory;
mod reload;
mod session;
mod shard;
pub mod tls;

pub use memory::restart_without_tcache;
pub use shard::ShardError;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, LOCATION};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Readiness};
use crate::batch::{Batchable, Batched, Socket};
use crate::config::{Config, Tls};
use crate::keys::{self, cache::KeyCache};
use crate::metrics::{Decision, Metrics, Outcome};
use crate::proxy::{Connection, Proxy};
use crate::reject::Reject;
use conn::{Activity, Serving};
use tls::Certificates;

/// Admin connections are few (probes, one scraper); their own small cap keeps them reachable
/// when the public listener is saturated.
const ADMIN_MAX_CONNECTIONS: usize = 64;
/// The management API's own cap: a busy portal cannot take the proxy's connections.
const MANAGE_MAX_CONNECTIONS: usize = 256;
/// How long a stopping sidecar spends handing unspent quota leases back to Redis.
const LEASE_RETURN_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({which}): {source}")]
    Bind {
        which: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::vocab::StoreError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Upstream(#[from] crate::forward::ClientError),
    #[error(transparent)]
    Shard(#[from] ShardError),
}

/// A proxy with its listeners bound and its key store loaded, ready to [`Server::run`].
pub struct Server {
    public: TcpListener,
    /// `[server] sharded`: the other shards' threads, each with its own listener on the public
    /// address (the main thread is shard 0).
    shards: Vec<shard::Shard>,
    plain: Option<TcpListener>,
    admin: TcpListener,
    manage: Option<TcpListener>,
    certificates: Option<Arc<Certificates>>,
    proxy: Arc<Proxy>,
    cache: Arc<KeyCache>,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    config_file: Option<PathBuf>,
}

impl Server {
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        let metrics = Arc::new(Metrics::with(&config.metrics));
        let certificates = config.tls.as_ref().map(Certificates::load).transpose()?;
        let store = keys::open(&config.store, metrics.clone())?;
        if let crate::config::StoreConfig::File { .. } = config.store {
            // In memory, so always able to answer; a Redis store's feed reports its own.
            metrics.store_up.set(1);
        }
        tracing::info!(store = %store.describe(), "key store opened");
        let cache = KeyCache::new(store, config.cache.clone(), metrics.clone());
        let bind = |which, addr, reuse_port| {
            listen(addr, reuse_port).map_err(|source| ServerError::Bind {
                which,
                addr,
                source,
            })
        };
        let sharded = config.server.shards() > 1;
        let public = bind("listen.public", config.listen.public, sharded)?;
        let mut shards = Vec::new();
        if sharded {
            // The same port for every shard, also when the config asked for port 0.
            let addr = public.local_addr().map_err(|source| ServerError::Bind {
                which: "listen.public",
                addr: config.listen.public,
                source,
            })?;
            for index in 1..config.server.shards() {
                shards.push(shard::Shard::spawn(index, addr).await?);
            }
        }
        let plain = match config.listen.plain {
            Some(addr) => Some(bind("listen.plain", addr, false)?),
            None => None,
        };
        let admin = bind("listen.admin", config.listen.admin, false)?;
        let manage = match config.listen.manage {
            Some(addr) => Some(bind("listen.manage", addr, false)?),
            None => None,
        };
        let readiness = Readiness::default();
        if let crate::config::StoreConfig::Redis(redis) = &config.store {
            readiness.require_current_cache(redis.ready_requires_current);
        }
        let proxy = Proxy::new(Arc::new(config), cache.clone(), metrics.clone())?;
        Ok(Self {
            public,
            shards,
            plain,
            admin,
            manage,
            certificates,
            proxy: Arc::new(proxy),
            cache,
            metrics,
            readiness,
            config_file: None,
        })
    }

    /// Reload the config from `path` on SIGHUP and when the file changes.
    pub fn reload_from(mut self, path: PathBuf) -> Self {
        self.config_file = Some(path);
        self
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound listener has an address")
    }

    pub fn manage_addr(&self) -> Option<SocketAddr> {
        self.manage.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` is cancelled, then drains (see the module doc).
    pub async fn run(self, shutdown: CancellationToken) {
        let config = self.proxy.config();
        let (public_addr, admin_addr, plain_addr, manage_addr) = (
            self.public_addr(),
            self.admin_addr(),
            self.plain_addr(),
            self.manage_addr(),
        );
        let background = CancellationToken::new();
        self.cache.start(background.clone());
        tokio::spawn(crate::ratelog::run(background.clone()));
        let proxy = self.proxy.clone();
        tokio::spawn(crate::keys::rotation::watch(
            self.cache.store().clone(),
            move || proxy.config().keys.rotation(),
            self.metrics.keys_due_for_rotation.clone(),
            background.clone(),
        ));
        memory::fix_thresholds();
        memory::trim_after_floods(self.metrics.clone(), background.clone());
        tokio::spawn(sweep_parking(self.proxy.clone(), background.clone()));
        tokio::spawn(
            reload::Reloader {
                config_file: self.config_file.clone(),
                proxy: self.proxy.clone(),
                certificates: self.certificates.clone(),
                metrics: self.metrics.clone(),
            }
            .run(config.server.watch_interval, background.clone()),
        );

        // Accepting stops when `stop_accepting` fires; connections are asked to close when
        // `closing` does; `connections` tracks them until they have.
        let stop_accepting = CancellationToken::new();
        let closing = CancellationToken::new();
        let connections = TaskTracker::new();
        let serving = Arc::new(Serving {
            builder: Arc::new(conn::builder(&config.server)),
            header_timeout: config.server.header_read_timeout,
            idle_timeout: config.server.idle_timeout,
            closing: closing.clone(),
            http1: session::Timing {
                header: config.server.header_read_timeout,
                idle: config.server.idle_timeout,
                max_header_bytes: config.server.max_header_bytes,
                batch_writes: config.server.batch_writes,
            },
        });
        if config.server.batch_writes {
            // Probes io_uring or AIO now (not at the first request) and sets the gauges.
            crate::batch::choose(config.server.batch_backend);
            crate::batch::report_to(self.metrics.clone());
        }
        let client_cap = Arc::new(Semaphore::new(config.server.max_connections));
        let acceptor = match (&config.tls, &self.certificates) {
            (Some(tls), Some(certs)) => Some(tls::acceptor(tls, certs.clone())),
            _ => None,
        };
        let endpoint = Endpoint {
            serving: serving.clone(),
            connections: connections.clone(),
            metrics: self.metrics.clone(),
            stop: stop_accepting.clone(),
            accepted: self.metrics.accepted_by(0),
        };

        let proxy = self.proxy.clone();
        let tls_config = config.tls.clone();
        let serve_public =
            move |stream: TcpStream, peer: SocketAddr, serving: Arc<Serving>, metrics| {
                let proxy = proxy.clone();
                let acceptor = acceptor.clone();
                let tls_config = tls_config.clone();
                async move {
                    // Each branch boxed: a task is as large as its largest branch, so with the
                    // plain one inline every TLS connection's task kept room (3.9 KB, measured)
                    // for a plain session it never runs, and the other way round.
                    match (acceptor, tls_config) {
                        (Some(acceptor), Some(tls)) => {
                            Box::pin(serve_tls(
                                stream, peer, &serving, metrics, acceptor, &tls, proxy,
                            ))
                            .await;
                        }
                        _ => {
                            let conn = Connection::new(peer, false);
                            let socket = Socket::new(stream);
                            Box::pin(serve_proxy(&serving, socket, proxy, conn, false)).await;
                        }
                    }
                }
            };
        // Every shard's loop turns until the main thread is through (see `shard`).
        let shards_done = CancellationToken::new();
        let shards: Vec<_> = self
            .shards
            .into_iter()
            .map(|shard| {
                let endpoint = endpoint.on_shard(shard.index());
                let cap = client_cap.clone();
                let serve = serve_public.clone();
                let done = shards_done.clone();
                shard.run(move |listener| async move {
                    endpoint.accept(listener, cap, true, serve).await;
                    done.cancelled().await;
                })
            })
            .collect();
        let public = endpoint
            .clone()
            .accept(self.public, client_cap.clone(), true, serve_public);
        let plain = self.plain.map(|listener| {
            let tls = config.tls.clone().expect("listen.plain requires [tls]");
            endpoint.clone().accept(
                listener,
                client_cap.clone(),
                true,
                move |stream, _peer, serving, metrics| {
                    let tls = tls.clone();
                    async move { serve_plain(&serving, stream, &tls, metrics).await }
                },
            )
        });
        let readiness = self.readiness.clone();
        let store = self.cache.store().clone();
        let admin = endpoint.clone().accept(
            self.admin,
            Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS)),
            false,
            move |stream, _peer, serving, metrics| {
                let readiness = readiness.clone();
                let store = store.clone();
                async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let store = store.clone();
                        let response = (!admin::wants_last_used(&req))
                            .then(|| admin::route(&req, &readiness, &metrics));
                        async move {
                            Ok::<_, Infallible>(match response {
                                Some(response) => response,
                                None => admin::last_used(&*store).await,
                            })
                        }
                    });
                    conn::serve(&serving, stream, Activity::new(), service).await;
                }
            },
        );
        let manage = match self.manage {
            Some(listener) => {
                let api = crate::api::Api::new(self.proxy.clone(), self.cache.clone())
                    .map_err(|e| tracing::error!(error = %e, "management API not started"))
                    .ok()
                    .map(Arc::new);
                let acceptor = match (&config.tls, &self.certificates) {
                    (Some(tls), Some(certs)) => Some(tls::acceptor(tls, certs.clone())),
                    _ => None,
                };
                api.map(|api| {
                    endpoint.clone().accept(
                        listener,
                        Arc::new(Semaphore::new(MANAGE_MAX_CONNECTIONS)),
                        false,
                        move |stream, peer, serving, _metrics| {
                            let api = api.clone();
                            let acceptor = acceptor.clone();
                            async move { serve_manage(&serving, stream, peer, api, acceptor).await }
                        },
                    )
                })
            }
            None => None,
        };
        let listeners = tokio::spawn(async move {
            tokio::join!(
                public,
                admin,
                async {
                    if let Some(plain) = plain {
                        plain.await;
                    }
                },
                async {
                    if let Some(manage) = manage {
                        manage.await;
                    }
                }
            );
        });
        self.readiness.set(true);
        // Logged once ready: tests and scripts wait for this line.
        tracing::info!(
            public = %public_addr,
            admin = %admin_addr,
            plain = plain_addr.map(tracing::field::display),
            manage = manage_addr.map(tracing::field::display),
            tls = config.tls.is_some(),
            shards = shards.len() + 1,
            "keygate listening"
        );

        shutdown.cancelled().await;
        // Load balancers poll readiness: fail it first, keep serving while they notice.
        self.readiness.set(false);
        let drain = config.server.drain_period;
        tracing::info!(drain = ?drain, "shutting down: readiness failed, draining");
        tokio::time::sleep(drain).await;
        stop_accepting.cancel();
        let _ = listeners.await;
        closing.cancel();
        let tunnels = self.metrics.tunnels_open();
        if tunnels > 0 {
            // Each at its next frame boundary each way (`forward::tunnel::join`).
            tracing::info!(tunnels, "WebSocket tunnels told: going away (1001)");
        }
        connections.close();
        let deadline = self.proxy.config().server.shutdown_timeout;
        if tokio::time::timeout(deadline, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = connections.len(),
                "shutdown deadline passed with connections still open"
            );
        }
        let handed_back = self
            .proxy
            .limiter()
            .surrender_leases(LEASE_RETURN_BUDGET)
            .await;
        if handed_back > 0 {
            tracing::info!(keys = handed_back, "unspent quota leases handed back");
        }
        background.cancel();
        self.cache.flush_usage().await;
        shards_done.cancel();
        for shard in shards {
            shard.join().await;
        }
        tracing::info!("keygate stopped");
    }
}

/// A listening socket with a deep accept queue: clients beyond `max_connections` wait there,
/// and the kernel caps it at `net.core.somaxconn`. `reuse_port`: one of a shard group, whose
/// sockets the kernel spreads new connections over (only sockets of the same user can join).
fn listen(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // A restarted keygate can bind while the old one's connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(4096)
}

/// What every accept loop shares.
#[derive(Clone)]
struct Endpoint {
    serving: Arc<Serving>,
    connections: TaskTracker,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    /// `keygate_connections_accepted_total` of the shard this loop runs on.
    accepted: prometheus::IntCounter,
}

impl Endpoint {
    /// The same, for the accept loop of shard `index`.
    fn on_shard(&self, index: usize) -> Self {
        Self {
            accepted: self.metrics.accepted_by(index),
            ..self.clone()
        }
    }
}

impl Endpoint {
    /// Accepts until stopped; each connection runs `handle` in a tracked task while holding
    /// a permit of `cap`. At the cap, accepting pauses: further clients wait in the kernel's
    /// listen backlog instead of costing memory here.
    async fn accept<F, Fut>(
        self,
        listener: TcpListener,
        cap: Arc<Semaphore>,
        counted: bool,
        handle: F,
    ) where
        F: Fn(TcpStream, SocketAddr, Arc<Serving>, Arc<Metrics>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        loop {
            let permit = tokio::select! {
                _ = self.stop.cancelled() => break,
                permit = cap.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let (stream, peer) = tokio::select! {
                _ = self.stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning on the error.
                        if crate::ratelog::ACCEPT.allow() {
                            tracing::warn!(error = %e, "accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            if counted {
                self.metrics.open_connections.inc();
                self.accepted.inc();
            }
            let open = Open {
                metrics: counted.then(|| self.metrics.clone()),
                _permit: permit,
            };
            let task = handle(stream, peer, self.serving.clone(), self.metrics.clone());
            // Not `async move { task.await; … }`: such a block holds the captured future and
            // the one it awaits side by side, twice the memory for every open connection.
            self.connections.spawn(Guarded { task, _open: open });
        }
    }
}

/// What an accepted connection holds until its task ends: a slot of the connection cap, and
/// its count in `keygate_open_connections` (public and plain listeners).
struct Open {
    metrics: Option<Arc<Metrics>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(metrics) = &self.metrics {
            metrics.open_connections.dec();
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection's task with what it holds, let go when the task ends (fields drop in
    /// order: the connection first, then its slot).
    struct Guarded<F> {
        #[pin]
        task: F,
        _open: Open,
    }
}

impl<F: Future<Output = ()>> Future for Guarded<F> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        self.project().task.poll(cx)
    }
}

/// A client connection's transport: plain TCP, or TLS over it.
trait ClientIo: AsyncRead + AsyncWrite + Batchable + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Batchable + Unpin + Send + 'static> ClientIo for T {}

/// A client connection: keygate's own HTTP/1.1 unless the client speaks HTTP/2 (ALPN `h2`,
/// or the HTTP/2 preface, which `session` notices and hands back) or the upstream does.
async fn serve_proxy<IO: ClientIo + session::Idle>(
    serving: &Serving,
    io: IO,
    proxy: Arc<Proxy>,
    conn: Connection,
    h2: bool,
) {
    // hyper's connection futures are boxed: inline, their HTTP/2 state would make every
    // HTTP/1.1 connection's task several KiB larger.
    if h2 || proxy.current().forwarder.is_http2() {
        if h2 {
            // Its streams may become tunnels (RFC 8441).
            session::watch_client(&io);
        }
        Box::pin(serve_hyper(serving, io, proxy, conn)).await;
        return;
    }
    let served = session::serve(io, &proxy, &conn, &serving.http1, &serving.closing).await;
    if let session::Served::Handoff(io) = served {
        Box::pin(serve_hyper(serving, io, proxy, conn)).await;
    }
}

async fn serve_hyper<IO: ClientIo>(serving: &Serving, io: IO, proxy: Arc<Proxy>, conn: Connection) {
    let conn = Arc::new(conn);
    let service = service_fn(move |req: Request<Incoming>| {
        let (proxy, conn) = (proxy.clone(), conn.clone());
        // Boxed: hyper moves each HTTP/2 stream's future into the stream's task, and
        // `handle`'s future is ~3 KB, copied whole at every move. Boxed, only the pointer
        // moves: 0.53 µs less CPU per request at 10 streams (bench/RESULTS.md, 2026-12-06 21:33).
        Box::pin(async move { Ok::<_, Infallible>(proxy.handle(req, &conn).await) })
    });
    // hyper flushes once per turn of the connection: that flush joins the turn's batch. (Over
    // TLS this one passes everything through: the records join it from under TLS.)
    let io = Batched::new(io, serving.http1.batch_writes);
    conn::serve(serving, io, Activity::new(), service).await;
}

/// The TLS port: a client that starts with anything but a TLS record (plain HTTP, most
/// likely) gets the plain listener's answer instead of a handshake error it cannot read.
async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    serving: &Serving,
    metrics: Arc<Metrics>,
    acceptor: tokio_rustls::TlsAcceptor,
    tls: &Tls,
    proxy: Arc<Proxy>,
) {
    const TLS_HANDSHAKE_RECORD: u8 = 0x16;
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(serving.header_timeout, stream.peek(&mut first)).await;
    match peeked {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD => {}
        Ok(Ok(1)) => {
            metrics.tls_handshake_failures.inc();
            serve_plain(serving, stream, tls, metrics).await;
            return;
        }
        // Closed, reset or silent: nothing to answer.
        _ => {
            metrics.tls_handshake_failures.inc();
            return;
        }
    }
    // TLS writes its records at every write and flushes at the end of each response (and of
    // each handshake flight): that flush joins the turn's batch, as a plain connection's does.
    let io = Batched::new(Socket::new(stream), serving.http1.batch_writes);
    // Boxed as it leaves the handshake: every async fn on the way down (this one,
    // `serve_proxy`, `session::serve`, the session) keeps a slot of its own for a transport it
    // holds across an await, so inline the TLS state (1.2 KB) sat in the connection's future
    // five times.
    let stream = match tokio::time::timeout(serving.header_timeout, acceptor.accept(io)).await {
        Ok(Ok(stream)) => Box::new(stream),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            metrics.tls_handshake_failures.inc();
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            metrics.tls_handshake_failures.inc();
            return;
        }
    };
    let session = stream.get_ref().1;
    let handshake = tls::Handshake::of(session);
    metrics.tls_handshake(handshake.version, handshake.group, handshake.resumed);
    let h2 = session.alpn_protocol() == Some(b"h2");
    serve_proxy(serving, stream, proxy, Connection::new(peer, true), h2).await;
}

/// A management API connection, over TLS when `[tls]` is configured.
async fn serve_manage(
    serving: &Serving,
    stream: TcpStream,
    peer: SocketAddr,
    api: Arc<crate::api::Api>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
) {
    let conn = Arc::new(Connection::new(peer, acceptor.is_some()));
    let service = service_fn(move |req: Request<Incoming>| {
        let (api, conn) = (api.clone(), conn.clone());
        async move { Ok::<_, Infallible>(api.handle(req, &conn).await) }
    });
    match acceptor {
        None => conn::serve(serving, stream, Activity::new(), service).await,
        Some(acceptor) => {
            match tokio::time::timeout(serving.header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => conn::serve(serving, stream, Activity::new(), service).await,
                _ => tracing::debug!(%peer, "management API: TLS handshake failed"),
            }
        }
    }
}

/// Plain HTTP where only HTTPS is served: every request is refused (403 `https_required`) or
/// redirected to `tls.plain_redirect`; nothing is forwarded.
async fn serve_plain(serving: &Serving, stream: TcpStream, tls: &Tls, metrics: Arc<Metrics>) {
    let redirect = tls.plain_redirect.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let started = Instant::now();
        let response = plain_response(&req, redirect.as_ref());
        let decision = if redirect.is_some() {
            Decision::HttpsRedirect
        } else {
            Decision::Refused(Reject::HttpsRequired.code())
        };
        let outcome = Outcome {
            status: response.status().as_u16(),
            decision,
        };
        metrics.request(outcome, started.elapsed());
        async move { Ok::<_, Infallible>(response) }
    });
    conn::serve(serving, stream, Activity::new(), service).await;
}

fn plain_response<B>(req: &Request<B>, redirect: Option<&http::Uri>) -> Response<Full<Bytes>> {
    let Some(base) = redirect else {
        return Reject::HttpsRequired.into_response();
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("{}{path}", base.to_string().trim_end_matches('/'));
    let mut response = Response::new(Full::new(Bytes::new()));
    // 308 keeps the method and body: a POST is retried as a POST over HTTPS.
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, value);
    }
    response
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is called,
/// not when the future is first polled: a signal that arrives before the task awaiting it has
/// run (right after "keygate listening") must not kill the process the default way.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
        async move {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Closes parked upstream connections when they are due even if no client comes to take or
/// park one (see `forward::upstream`); a reload's new forwarder brings its own parking, and
/// the replaced one's goes with it.
async fn sweep_parking(proxy: Arc<Proxy>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(crate::forward::upstream::SWEEP_EVERY) => {
                let swept = proxy.current().forwarder.parking().sweep();
                memory::closed_parked(swept.closed);
                memory::shed(swept.freed);
            }
        }
    }
}
