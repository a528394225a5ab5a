//! The TLS client settings for the upstream (system roots, or the PEM roots in
//! `upstream.ca_file`), and the shared pool's client (HTTP/1.1 or HTTP/2) for what hyper
//! serves and [`super::links`] does not: an HTTP/2 upstream, and HTTP/1.1 clients hyper serves.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::Limited;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::time::Instant;

use crate::config::Upstream;
use crate::tcp;

pin_project_lite::pin_project! {
    /// The client's request body on its way upstream: the client's stream, cut off at
    /// `server.max_body_bytes`, remembering whether it failed, when the pool last took a
    /// piece of it and whether it waits on the client. The upstream client reports a body
    /// that failed mid-stream as its own error (over HTTP/2, as a stream reset with the cause
    /// gone), and a client that sent a broken body must hear 400, not a 502; a client that
    /// stopped sending must hear 408, not a 504.
    pub struct UpstreamBody {
        #[pin]
        inner: Limited<Incoming>,
        state: Arc<BodyState>,
    }
}

/// What became of a client's body on its way through the pool.
#[derive(Debug)]
pub struct BodyState {
    failed: AtomicU8,
    base: Instant,
    /// Milliseconds after `base` of the last piece the pool took.
    progress: AtomicU64,
    /// The pool asked for the next piece and the client has not sent it.
    waiting: AtomicBool,
}

impl BodyState {
    const TOO_LARGE: u8 = 1;
    const BROKEN: u8 = 2;

    /// The body ran past `server.max_body_bytes`.
    pub fn too_large(&self) -> bool {
        self.failed.load(Ordering::Relaxed) == Self::TOO_LARGE
    }

    /// The body was malformed or cut short by the client.
    pub fn broken(&self) -> bool {
        self.failed.load(Ordering::Relaxed) == Self::BROKEN
    }

    /// When the upstream timeout runs out: `timeout` after the body's latest progress (a
    /// long upload is not a late answer).
    pub fn deadline(&self, timeout: Duration) -> Instant {
        self.base + Duration::from_millis(self.progress.load(Ordering::Relaxed)) + timeout
    }

    /// The body waits on the client.
    pub fn waiting(&self) -> bool {
        self.waiting.load(Ordering::Relaxed)
    }
}

impl UpstreamBody {
    pub fn new(body: Incoming, max: usize) -> (Self, Arc<BodyState>) {
        let state = Arc::new(BodyState {
            failed: AtomicU8::new(0),
            base: Instant::now(),
            progress: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
        });
        let body = Self {
            inner: Limited::new(body, max),
            state: state.clone(),
        };
        (body, state)
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        let state = &**this.state;
        state.waiting.store(polled.is_pending(), Ordering::Relaxed);
        match &polled {
            std::task::Poll::Ready(Some(Err(e))) => {
                let kind = if e.is::<http_body_util::LengthLimitError>() {
                    BodyState::TOO_LARGE
                } else {
                    BodyState::BROKEN
                };
                state.failed.store(kind, Ordering::Relaxed);
            }
            std::task::Poll::Ready(Some(Ok(_))) => {
                let millis = u64::try_from(state.base.elapsed().as_millis()).unwrap_or(u64::MAX);
                state.progress.store(millis, Ordering::Relaxed);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

pub type UpstreamClient = Client<Connector, UpstreamBody>;

/// Opens upstream connections: TCP, then TLS for an `https` upstream.
pub type Connector = HttpsConnector<HttpConnector>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("upstream.ca_file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("no usable system root certificates for an https upstream: {0}")]
    NativeRoots(String),
    #[error("upstream.url: {0}")]
    Address(String),
}

/// How keygate verifies an `https` upstream. Roots are loaded only when something needs them.
pub fn tls_config(upstream: &Upstream) -> Result<rustls::ClientConfig, ClientError> {
    let needs_tls = [Some(&upstream.url), upstream.sandbox_url.as_ref()]
        .into_iter()
        .flatten()
        .any(|u| u.scheme_str() == Some("https"));
    let roots = match (&upstream.ca_file, needs_tls) {
        (Some(path), _) => roots_from_file(path)?,
        (None, true) => native_roots()?,
        // Never used; loading the system store would only cost start-up time.
        (None, false) => RootCertStore::empty(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(crate::crypto::tls_provider())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tls)
}

/// With no frame from an HTTP/2 upstream for this long, keygate sends it a PING...
const HTTP2_PING_EVERY: Duration = Duration::from_secs(5);
/// ... and closes the connection if the answer takes longer than this: a connection that
/// stopped answering is replaced within 10 s.
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// The shared pool's client.
pub fn build(
    upstream: &Upstream,
    tls: rustls::ClientConfig,
) -> Result<UpstreamClient, ClientError> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_keepalive(Some(tcp::KEEPALIVE_IDLE));
    http.set_keepalive_interval(Some(tcp::KEEPALIVE_INTERVAL));
    http.set_keepalive_retries(Some(tcp::KEEPALIVE_PROBES));
    http.set_tcp_user_timeout(Some(tcp::USER_TIMEOUT));
    http.set_connect_timeout(Some(upstream.connect_timeout));
    // The TLS connector hands plain `http://` through untouched.
    http.enforce_http(false);

    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = if upstream.http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    let client = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_only(upstream.http2)
        // A multiplexed HTTP/2 connection that stops answering (a hung upstream whose kernel
        // still acknowledges, or a dead path) would take every request until each timed
        // out: a PING unanswered for HTTP2_PING_TIMEOUT closes it, and the next request dials.
        .http2_keep_alive_interval(HTTP2_PING_EVERY)
        .http2_keep_alive_timeout(HTTP2_PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .timer(TokioTimer::new())
        .build(connector);
    Ok(client)
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, ClientError> {
    let err = |message: String| ClientError::CaFile {
        path: path.display().to_string(),
        message,
    };
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
        let cert = cert.map_err(|e| err(e.to_string()))?;
        roots
            .add(cert)
            .map_err(|e| err(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(err("holds no PEM certificate".into()));
    }
    Ok(roots)
}

fn native_roots() -> Result<RootCertStore, ClientError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or("none found".to_owned(), |e| e.to_string());
        return Err(ClientError::NativeRoots(format!(
            "{why}; set upstream.ca_file"
        )));
    }
    Ok(roots)
}
