//! Upstream connections for keygate's own HTTP/1.1 ([`crate::wire`]): opening them (TCP, then
//! TLS for an `https` upstream), telling whether an idle one can still carry a request, and
//! parking idle ones between client connections.
//!
//! Each HTTP/1.1 client connection owns one upstream connection and uses it for its requests
//! one after another, in its own task: a request and its response never cross to another
//! task, and there is no pool to check out of. When a client connection ends, or has been idle
//! for half a header timeout, its upstream connection is parked ([`Parking`]) for any client
//! connection: clients that open a connection per request still reuse upstream connections
//! instead of leaving a TIME_WAIT socket behind per request, and idle keep-alive clients do
//! not pin upstream connections. HTTP/2 clients' streams take and park them one by one
//! (`forward::links`). Parked connections expire after [`PARK_FOR`]; at most
//! [`PARK_MAX`] are kept. A parked connection holds no read buffer (it gets one back when
//! taken): 256 parked connections with their 16 KiB buffers were 4.3 MB of a sidecar's
//! resident memory after a flood of clients had gone. [`Parking::sweep`], run every
//! [`SWEEP_EVERY`] by the server, closes expired and upstream-closed ones even when no client
//! comes to take or park one, so a flood's upstream connections (and their sockets on the
//! upstream) do not outlive it until the next request; it also frees the spare read buffers
//! that went unused since the sweep before (`Spare`).
//!
//! An idle connection is never waited on, so a close from the upstream is noticed when the
//! connection is next taken: [`Link::usable`] looks, without blocking, for anything that
//! arrived since the last response. A request that still meets a connection closed at that
//! very moment is retried once on a new one when that is safe (see `server::session::serve`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use http::Uri;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::batch::Socket;
use crate::wire::Buffer;

/// A parked connection older than this is closed instead of reused. Shorter than the idle
/// timeouts of common upstream servers (nginx 75 s, Go 90 s) so that most are ours to close;
/// a shorter one (Node.js 5 s) is noticed when the connection is taken.
pub const PARK_FOR: Duration = Duration::from_secs(30);
/// Idle connections kept per forwarder: beyond this many client connections closing at once,
/// closing the extra upstream connections is cheaper than holding them. HTTP/2 clients park
/// one per stream, and a wave of streams ends together: with h2load's 50 connections × 10
/// streams, a cap of 256 closed about half of them at every wave and dialed them again for the
/// next (connect and close took ~9 % of keygate's CPU). A parked connection holds no buffer,
/// only its socket.
pub const PARK_MAX: usize = 1024;
/// The read buffer of an upstream connection: response heads and body pieces.
pub const READ_BUFFER: usize = 16 * 1024;
/// How often the server has [`Parking::sweep`] look at the parking: a connection outlives its [`PARK_FOR`] by
/// at most this much.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Which upstream a connection leads to. A config reload makes a new forwarder, so a
/// connection opened under an older config is never reused under the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub forwarder: u64,
    /// 0: production, 1: sandbox, then `[environments.<tag>]` in order
    /// ([`super::Forwarder::upstream_for`]).
    pub upstream: u8,
}

/// The transport to the upstream.
pub enum Stream {
    /// Shared with batched writes ([`crate::batch`]).
    Plain(Socket),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An open upstream connection, with what was read from it and not used yet.
pub struct Link {
    pub stream: Stream,
    pub buf: Buffer,
    pub route: Destination,
    /// It carried a request before: a failure before any response byte may be a close that
    /// crossed the request on the wire, not a refusal.
    pub reused: bool,
}

impl Link {
    /// Whether it can carry the next request: nothing arrived since its last response (a
    /// close, most likely, or bytes it should not have sent), checked without waiting.
    pub fn usable(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        if let Stream::Plain(socket) = &self.stream {
            // No system call unless the socket was reported readable since the last read.
            return matches!(socket.tcp().try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        }
        let mut probe = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        // Pending: nothing there. TLS may read and keep a session ticket, which is fine.
        Pin::new(&mut self.stream)
            .poll_read(&mut cx, &mut probe)
            .is_pending()
    }
}

/// Where one upstream is and how to reach it.
struct Address {
    host: String,
    port: u16,
    /// For an `https` upstream: the name its certificate must carry.
    tls_name: Option<ServerName<'static>>,
}

impl Address {
    fn new(url: &Uri) -> Result<Self, String> {
        let https = url.scheme_str() == Some("https");
        let host = url.host().ok_or("the upstream URL has no host")?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls_name = match https {
            true => Some(
                ServerName::try_from(host.clone())
                    .map_err(|e| format!("the upstream host is not a TLS name: {e}"))?,
            ),
            false => None,
        };
        Ok(Self {
            host,
            port,
            tls_name,
        })
    }
}

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("connecting to the upstream timed out")]
    Timeout,
    #[error("connecting to the upstream: {0}")]
    Io(#[from] io::Error),
}

/// Opens connections to the production, the sandbox or an environment's upstream.
pub struct Dialer {
    production: Address,
    sandbox: Option<Address>,
    environments: Vec<Address>,
    tls: TlsConnector,
    connect_timeout: Duration,
}

impl Dialer {
    pub fn new(
        production: &Uri,
        sandbox: Option<&Uri>,
        environments: &[&Uri],
        tls: Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
    ) -> Result<Self, String> {
        Ok(Self {
            production: Address::new(production)?,
            sandbox: sandbox.map(Address::new).transpose()?,
            environments: environments
                .iter()
                .map(|u| Address::new(u))
                .collect::<Result<_, _>>()?,
            tls: TlsConnector::from(tls),
            connect_timeout,
        })
    }

    /// A new connection for `route`, within the connect timeout (TLS handshake included).
    pub async fn dial(&self, route: Destination) -> Result<Link, DialError> {
        let address = match (&self.sandbox, route.upstream) {
            (Some(sandbox), 1) => sandbox,
            (_, n @ 2..) => self
                .environments
                .get(usize::from(n - 2))
                .unwrap_or(&self.production),
            _ => &self.production,
        };
        let stream = tokio::time::timeout(self.connect_timeout, self.open(address))
            .await
            .map_err(|_| DialError::Timeout)??;
        Ok(Link {
            stream,
            buf: Buffer::with_capacity(READ_BUFFER),
            route,
            reused: false,
        })
    }

    async fn open(&self, address: &Address) -> io::Result<Stream> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((address.host.as_str(), address.port))
            .await?
            .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the upstream host has no address");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    tcp.set_nodelay(true)?;
                    crate::tcp::watch_path(&tcp)?;
                    return match &address.tls_name {
                        None => Ok(Stream::Plain(Socket::new(tcp))),
                        Some(name) => {
                            let tls = self.tls.connect(name.clone(), tcp).await?;
                            Ok(Stream::Tls(Box::new(tls)))
                        }
                    };
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Spare read buffers always kept (512 KiB), however long they go unused.
const SPARE_KEPT: usize = 32;

/// The read buffers of parked connections, kept for the connections taken next.
///
/// An HTTP/2 stream takes and parks a connection per request. A fresh 16 KiB buffer each time
/// cost a zeroed allocation and its free per request: with a fixed 32 spares and h2load's 50
/// connections x 10 streams (500 in flight), `memset` alone was 3 % of keygate's CPU, and
/// keeping them all took 1.7 µs off each request (bench/RESULTS.md, 2026-12-06 18:16). So as
/// many are kept as the connections in use have handed back, and each [`Parking::sweep`]
/// frees those no connection needed since the one before, down to [`SPARE_KEPT`]: a burst's
/// buffers are gone two sweeps after it ended. At most [`PARK_MAX`] (16 MiB) in all, shared
/// out over the shelves; in practice about as many as were in use at once, whose buffers were
/// live then anyway.
#[derive(Default)]
struct Spare {
    buffers: Vec<Buffer>,
    /// The fewest buffers held since the last trim: that many went unused all along.
    fewest: usize,
}

impl Spare {
    fn take(&mut self) -> Buffer {
        let buf = self.buffers.pop();
        self.fewest = self.fewest.min(self.buffers.len());
        buf.unwrap_or_else(|| Buffer::with_capacity(READ_BUFFER))
    }

    fn give(&mut self, buf: Buffer, max: usize) {
        // A buffer a large head grew is not kept: the next connection would hold it too.
        if buf.capacity() == READ_BUFFER && self.buffers.len() < max {
            self.buffers.push(buf);
        }
    }

    /// Frees the buffers that went unused since the last trim, down to [`SPARE_KEPT`];
    /// returns the bytes freed.
    fn trim(&mut self) -> usize {
        let unused = self
            .fewest
            .min(self.buffers.len().saturating_sub(SPARE_KEPT));
        self.buffers.truncate(self.buffers.len() - unused);
        if unused > 0 {
            self.buffers.shrink_to(SPARE_KEPT);
        }
        self.fewest = self.buffers.len();
        unused * READ_BUFFER
    }
}

/// What a [`Parking::sweep`] closed and freed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Parked connections closed: expired, or closed by the upstream.
    pub closed: usize,
    /// Bytes of spare read buffers freed.
    pub freed: usize,
}

/// Idle upstream connections between client connections, on one shelf per shard (see
/// [`enter_shard`]), newest at the back.
pub struct Parking {
    shelves: Box<[Shelf]>,
    /// Connections, and spare buffers, kept per shelf at most: [`PARK_MAX`] shared out, but in
    /// tests.
    max: usize,
}

#[derive(Default)]
struct Shelf {
    idle: Mutex<VecDeque<(Instant, Link)>>,
    /// Empty read buffers for the connections taken next.
    spare: Mutex<Spare>,
}

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Marks the calling thread as the event loop of shard `index` (`[server] sharded`): the
/// connections it parks, and those it takes, are that shard's own. An upstream socket is
/// registered with the event loop that opened it, and a shard that used another's would have
/// every readiness of it cross threads, delayed until that other loop next polls the kernel.
/// Threads of a shared runtime stay shard 0 and share one shelf.
pub fn enter_shard(index: usize) {
    SHARD.set(index);
}

impl Default for Parking {
    fn default() -> Self {
        Self::new(1)
    }
}

impl Parking {
    /// A parking with a shelf for each of `shards` event loops.
    pub fn new(shards: usize) -> Self {
        let shards = shards.max(1);
        Self {
            shelves: (0..shards).map(|_| Shelf::default()).collect(),
            max: PARK_MAX.div_ceil(shards).max(SPARE_KEPT),
        }
    }

    /// The calling shard's shelf.
    fn shelf(&self) -> &Shelf {
        &self.shelves[SHARD.get() % self.shelves.len()]
    }

    /// Keeps `link` for the next client connection that needs its route, if it is usable.
    pub fn park(&self, mut link: Link) {
        if !link.usable() {
            return;
        }
        let shelf = self.shelf();
        // Empty (`usable` says so): whoever takes a connection next gets it back.
        let buf = std::mem::replace(&mut link.buf, Buffer::with_capacity(0));
        lock(&shelf.spare).give(buf, self.max);
        let mut idle = lock(&shelf.idle);
        expire(&mut idle);
        if idle.len() >= self.max {
            idle.pop_front();
        }
        idle.push_back((Instant::now(), link));
    }

    /// The newest usable parked connection to `route`; closes the unusable ones it meets.
    pub fn take(&self, route: Destination) -> Option<Link> {
        let shelf = self.shelf();
        let mut idle = lock(&shelf.idle);
        expire(&mut idle);
        while let Some(at) = idle.iter().rposition(|(_, link)| link.route == route) {
            let (_, mut link) = idle.remove(at).expect("position is in range");
            if link.usable() {
                drop(idle);
                link.buf = lock(&shelf.spare).take();
                return Some(link);
            }
        }
        None
    }

    /// Closes the expired connections, and those the upstream closed (or wrote to) while they
    /// waited, and frees the spare buffers unused since the last sweep, on every shelf.
    pub fn sweep(&self) -> Swept {
        let mut swept = Swept {
            closed: 0,
            freed: 0,
        };
        for shelf in &self.shelves {
            let mut idle = lock(&shelf.idle);
            let before = idle.len();
            expire(&mut idle);
            idle.retain_mut(|(_, link)| link.usable());
            swept.closed += before - idle.len();
            drop(idle);
            swept.freed += lock(&shelf.spare).trim();
        }
        swept
    }

    pub fn len(&self) -> usize {
        self.shelves.iter().map(|s| lock(&s.idle).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn expire(idle: &mut VecDeque<(Instant, Link)>) {
    while idle.front().is_some_and(|(at, _)| at.elapsed() >= PARK_FOR) {
        idle.pop_front();
    }
}

/// A poisoned lock only means another task panicked while holding it; the queue is valid in
/// every state.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const ROUTE: Destination = Destination {
        forwarder: 0,
        upstream: 0,
    };

    /// `n` connections to a real loopback listener, and the server ends of them.
    async fn links(n: usize) -> (Vec<Link>, Vec<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url: Uri = format!("http://{}", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let tls = Arc::new(
            rustls::ClientConfig::builder_with_provider(crate::crypto::tls_provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        );
        let dialer = Dialer::new(&url, None, &[], tls, Duration::from_secs(2)).unwrap();
        let (mut out, mut servers) = (Vec::new(), Vec::new());
        for _ in 0..n {
            out.push(dialer.dial(ROUTE).await.unwrap());
            servers.push(listener.accept().await.unwrap().0);
        }
        (out, servers)
    }

    #[tokio::test]
    async fn parking_keeps_the_newest_and_forgets_the_expired() {
        let home = Parking {
            max: 8,
            ..Parking::default()
        };
        let (mut made, _servers) = links(8 + 2).await;
        let newest = made.pop().unwrap();
        for link in made {
            home.park(link);
        }
        assert_eq!(home.len(), 8, "the oldest go beyond the cap");

        // Everything parked longer than PARK_FOR ago is closed on the next park; a fresh one
        // is handed out.
        for (at, _) in lock(&home.shelves[0].idle).iter_mut() {
            *at -= PARK_FOR;
        }
        home.park(newest);
        assert_eq!(home.len(), 1);
        let other = Destination {
            upstream: 1,
            ..ROUTE
        };
        assert!(home.take(other).is_none(), "no connection to the sandbox");
        assert!(home.take(ROUTE).is_some());
        assert!(home.take(ROUTE).is_none());
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_or_wrote_to_is_not_usable() {
        let (mut made, mut servers) = links(3).await;
        assert!(made[0].usable(), "an idle, open connection");
        drop(servers.remove(0));
        servers[0].write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        // Give the reactor a turn to see both.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!made[0].usable(), "closed by the upstream");
        assert!(!made[1].usable(), "bytes nobody asked for");
        assert!(made[2].usable());
        let home = Parking::default();
        for link in made {
            home.park(link);
        }
        assert_eq!(home.len(), 1, "only the usable one is parked");
    }

    #[tokio::test]
    async fn a_parked_connection_holds_no_buffer_and_the_sweep_closes_the_dead_and_the_expired() {
        let home = Parking::default();
        let (made, mut servers) = links(3).await;
        for link in made {
            home.park(link);
        }
        assert!(
            lock(&home.shelves[0].idle)
                .iter()
                .all(|(_, link)| link.buf.capacity() == 0)
        );

        // The upstream closes the newest; the oldest has waited past PARK_FOR.
        drop(servers.remove(2));
        lock(&home.shelves[0].idle).front_mut().unwrap().0 -= PARK_FOR;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(home.sweep().closed, 2);
        assert_eq!(home.len(), 1, "the closed and the expired are gone");
        let mut rest = [0u8; 1];
        assert_eq!(
            servers[0].read(&mut rest).await.unwrap(),
            0,
            "the expired one is closed"
        );

        let taken = home.take(ROUTE).expect("the one left");
        assert_eq!(
            taken.buf.capacity(),
            READ_BUFFER,
            "a full buffer to read a response"
        );
    }

    #[test]
    fn spare_buffers_last_while_they_are_used_and_go_two_sweeps_after() {
        let mut spare = Spare::default();
        // A burst: 500 connections in use at once hand their buffers back.
        let taken: Vec<Buffer> = (0..500).map(|_| spare.take()).collect();
        assert!(taken.iter().all(|b| b.capacity() == READ_BUFFER));
        for buf in taken {
            spare.give(buf, PARK_MAX);
        }
        assert_eq!(
            spare.trim(),
            0,
            "none of them went unused for a whole sweep"
        );

        // Busy between sweeps: every buffer is taken and given back again, none allocated.
        for _ in 0..3 {
            let taken: Vec<Buffer> = (0..500).map(|_| spare.take()).collect();
            assert_eq!(spare.buffers.len(), 0);
            taken.into_iter().for_each(|b| spare.give(b, PARK_MAX));
            assert_eq!(spare.trim(), 0, "all were needed");
        }

        // Only 100 in use at once: the 400 never touched go at the next sweep.
        let taken: Vec<Buffer> = (0..100).map(|_| spare.take()).collect();
        taken.into_iter().for_each(|b| spare.give(b, PARK_MAX));
        assert_eq!(spare.trim(), 400 * READ_BUFFER);
        assert_eq!(spare.buffers.len(), 100);

        // Idle: down to what is always kept, and no further.
        assert_eq!(spare.trim(), (100 - SPARE_KEPT) * READ_BUFFER);
        assert_eq!(spare.trim(), 0);
        assert_eq!(spare.buffers.len(), SPARE_KEPT);

        // A buffer a large head grew is not kept; nor more than PARK_MAX.
        spare.give(Buffer::with_capacity(2 * READ_BUFFER), PARK_MAX);
        assert_eq!(spare.buffers.len(), SPARE_KEPT);
        for _ in 0..PARK_MAX + 10 {
            spare.give(Buffer::with_capacity(READ_BUFFER), PARK_MAX);
        }
        assert_eq!(spare.buffers.len(), PARK_MAX);
    }

    #[tokio::test]
    async fn each_shard_takes_back_only_the_connections_it_parked_and_the_sweep_sees_them_all() {
        let home = Parking::new(2);
        assert_eq!(home.max, PARK_MAX / 2, "the cap is shared out");
        let (mut made, mut servers) = links(3).await;
        enter_shard(1);
        home.park(made.pop().unwrap());
        home.park(made.pop().unwrap());
        enter_shard(0);
        assert!(
            home.take(ROUTE).is_none(),
            "shard 0 does not use shard 1's connections"
        );
        home.park(made.pop().unwrap());
        assert_eq!(home.len(), 3);

        // The upstream closes one of shard 1's; a sweep from any thread finds it.
        drop(servers.remove(2));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(home.sweep().closed, 1);
        assert!(home.take(ROUTE).is_some(), "shard 0's own");
        assert!(home.take(ROUTE).is_none());
        enter_shard(1);
        assert!(home.take(ROUTE).is_some(), "shard 1's usable one");
        assert!(home.take(ROUTE).is_none());
        enter_shard(0);
    }
}
