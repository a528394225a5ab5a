//! Listeners and connection lifecycle: bind, accept, serve HTTP/1.1 and HTTP/2 on each
//! connection, and shut down gracefully (stop accepting, let in-flight requests finish, close
//! idle keep-alive connections, give up after a deadline).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Readiness};
use crate::config::Config;
use crate::keys::{self, cache::KeyCache};
use crate::metrics::Metrics;
use crate::proxy::Proxy;

/// Slow-loris guard: a client gets this long to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may run on after shutdown is requested.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(25);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr} ({which}): {source}")]
    Bind {
        which: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::keys::StoreError),
}

/// A proxy with its listeners bound and its key store loaded, ready to [`Server::run`].
pub struct Server {
    public: TcpListener,
    admin: TcpListener,
    proxy: Arc<Proxy>,
    cache: Arc<KeyCache>,
    metrics: Arc<Metrics>,
    readiness: Readiness,
}

impl Server {
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        let metrics = Arc::new(Metrics::new());
        let store = keys::open(&config.store, metrics.clone())?;
        tracing::info!(store = %store.describe(), "key store opened");
        let cache = KeyCache::new(store, config.cache.clone(), metrics.clone());
        let bind = |which, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind {
                    which,
                    addr,
                    source,
                })
        };
        let public = bind("listen.public", config.listen.public).await?;
        let admin = bind("listen.admin", config.listen.admin).await?;
        Ok(Self {
            public,
            admin,
            proxy: Arc::new(Proxy::new(Arc::new(config), cache.clone(), metrics.clone())),
            cache,
            metrics,
            readiness: Readiness::default(),
        })
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

    /// Serves until `shutdown` is cancelled, then drains.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(
            public = %self.public_addr(),
            admin = %self.admin_addr(),
            "keygate listening"
        );
        let background = shutdown.child_token();
        self.cache.start(background.clone());
        let proxy = self.proxy;
        let readiness = self.readiness.clone();
        let public = accept_loop(self.public, shutdown.clone(), move |peer| {
            let proxy = proxy.clone();
            service_fn(move |req: Request<Incoming>| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
            })
        });
        let admin_readiness = readiness.clone();
        let metrics = self.metrics.clone();
        let admin = accept_loop(self.admin, shutdown.clone(), move |_| {
            let readiness = admin_readiness.clone();
            let metrics = metrics.clone();
            service_fn(move |req: Request<Incoming>| {
                let response = admin::route(&req, &readiness, &metrics);
                async move { Ok::<_, Infallible>(response) }
            })
        });
        readiness.set(true);
        let stop_readiness = readiness.clone();
        let shutdown_watch = shutdown.clone();
        tokio::spawn(async move {
            shutdown_watch.cancelled().await;
            stop_readiness.set(false);
        });
        tokio::join!(public, admin);
        background.cancel();
        self.cache.flush_usage().await;
        tracing::info!("keygate stopped");
    }
}

/// Accepts connections until `shutdown`, then waits (up to [`SHUTDOWN_DEADLINE`]) for the open
/// ones to finish their in-flight requests.
async fn accept_loop<S, F, B>(listener: TcpListener, shutdown: CancellationToken, make: F)
where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), make(peer))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_DEADLINE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown deadline passed with connections still open");
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
