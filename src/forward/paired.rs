//! A client connection's own upstream connection.
//!
//! An HTTP/1.1 client sends one request at a time, so each client connection can own one
//! upstream connection instead of borrowing one from the shared pool for every request. The
//! upstream connection is driven inside the client connection's task (`server::conn::serve`
//! polls [`Paired::poll_drive`] beside the client side), so a request and its response never
//! cross to another task. Why: in `examples/proxy_floor.rs` on the bench machine
//! (2026-11-29), a bare hyper proxy did 38.9k req/s through the shared pool, 44–46k with an
//! upstream connection per client connection in a task of its own, and 50–51k with it driven
//! in the client connection's task (user CPU per request 6.9 → 4.7 µs, system 11.6 → 9.2 µs).
//!
//! When a client connection ends, or is found between requests by its watchdog (every half
//! header timeout, 5 s by default), its idle upstream connection is parked ([`Parking`]) for
//! any client connection: a client that opens a connection per request still reuses upstream
//! connections instead of leaving a TIME_WAIT socket (and a used ephemeral port) behind for
//! every request, and idle client connections do not hold upstream connections. A parked
//! connection is not driven; taking it polls it once, which notices a close that already
//! arrived, and a request that could not be written to a connection closed in the meantime is
//! retried once on a new one. Expired ones are closed at the next park or take (so after
//! traffic stops, up to [`PARK_MAX`] idle connections stay open until the upstream closes them).
//!
//! HTTP/2 clients (many requests at once on one connection), upgrades (the connection is
//! handed over to the WebSocket) and an HTTP/2 upstream use the shared pool.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::client::conn::http1;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::client::UpstreamBody;

pub(super) type Sender = http1::SendRequest<UpstreamBody>;
pub(super) type Driver = http1::Connection<MaybeHttpsStream<TokioIo<TcpStream>>, UpstreamBody>;

/// A parked connection older than this is closed instead of reused. Shorter than the idle
/// timeouts of common upstream servers (nginx 75 s, Go 90 s) so that most are ours to close;
/// a shorter one (Node.js 5 s) is noticed when the connection is taken.
const PARK_FOR: Duration = Duration::from_secs(30);
/// Idle connections kept per forwarder: beyond this many client connections closing at once,
/// closing the extra upstream connections is cheaper than holding them.
const PARK_MAX: usize = 256;

/// Which upstream a connection leads to. A config reload makes a new forwarder, so a
/// connection opened under an older config is never reused under the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Route {
    pub forwarder: u64,
    pub sandbox: bool,
}

/// An open upstream connection.
pub(super) struct Link {
    route: Route,
    /// `None` while a request holds it.
    sender: Option<Sender>,
    driver: Pin<Box<Driver>>,
    /// Where it goes when its client connection ends.
    home: Weak<Parking>,
}

impl Link {
    pub(super) fn new(route: Route, driver: Driver, home: &Arc<Parking>) -> Self {
        Self {
            route,
            sender: None,
            driver: Box::pin(driver),
            home: Arc::downgrade(home),
        }
    }

    /// Processes whatever already arrived on the connection (a close, most likely) without a
    /// task to wake; true if it has ended.
    fn poll_closed(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.driver.as_mut().poll(&mut cx).is_ready()
    }

    /// No request is using it: the sender is back and the last response is done.
    fn idle(&self) -> bool {
        self.sender.as_ref().is_some_and(Sender::is_ready)
    }

    /// Idle and open: usable for the next request by anyone.
    fn idle_and_open(&mut self) -> bool {
        !self.poll_closed() && self.idle()
    }

    /// Hands an idle, open connection to its forwarder's parking; otherwise it is closed.
    fn park(mut self) {
        if self.idle_and_open()
            && let Some(home) = self.home.upgrade()
        {
            home.park(self);
        }
    }
}

/// What a request should use.
pub(super) enum Lane {
    /// The client connection's own upstream connection (or a parked one it just took).
    Own(Sender),
    /// None yet: open one.
    Open,
    /// The shared pool: this client connection's upstream connection leads to the other
    /// upstream (a sandbox key on a connection that also carries live keys, or the reverse).
    Pool,
}

/// Idle upstream connections between client connections, newest at the back.
#[derive(Default)]
pub(super) struct Parking {
    idle: Mutex<VecDeque<(Instant, Link)>>,
}

impl Parking {
    fn park(&self, link: Link) {
        let mut idle = lock(&self.idle);
        expire(&mut idle);
        if idle.len() >= PARK_MAX {
            idle.pop_front();
        }
        idle.push_back((Instant::now(), link));
    }

    /// The newest usable parked connection to `route`; closes the unusable ones it meets.
    fn take(&self, route: Route) -> Option<Link> {
        let mut idle = lock(&self.idle);
        expire(&mut idle);
        while let Some(at) = idle.iter().rposition(|(_, link)| link.route == route) {
            let (_, mut link) = idle.remove(at).expect("position is in range");
            if link.idle_and_open() {
                return Some(link);
            }
        }
        None
    }
}

fn expire(idle: &mut VecDeque<(Instant, Link)>) {
    while idle.front().is_some_and(|(at, _)| at.elapsed() >= PARK_FOR) {
        idle.pop_front();
    }
}

/// A client connection's upstream side, shared by its requests (which send on it) and its
/// serve loop (which drives it).
#[derive(Default)]
pub struct Paired {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    link: Option<Link>,
    /// The serve loop's task, to wake when a link is attached.
    waker: Option<Waker>,
    /// The response-head deadline of the request in flight. One timer per client connection,
    /// moved for each request: moving a registered tokio timer later is one atomic
    /// operation, while a new timer per request (`tokio::time::timeout`) is registered with
    /// and removed from the timer wheel under its lock every time.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl Paired {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Drives the upstream connection, if there is one. Call it from the client connection's
    /// task each time that task wakes; it never completes.
    pub fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = lock(&self.state);
        if let Some(link) = &mut state.link
            && let Poll::Ready(result) = link.driver.as_mut().poll(cx)
        {
            // Closed by the upstream, or broken: the next request opens another.
            if let Err(e) = result {
                tracing::debug!(error = %e, "upstream connection ended");
            }
            state.link = None;
        }
        if state.link.is_none()
            && !state
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Where a request to `route` goes. Takes a parked connection when this client
    /// connection has none.
    pub(super) fn lane(&self, route: Route, parking: &Parking) -> Lane {
        let mut state = lock(&self.state);
        if let Some(link) = &mut state.link {
            if link.route == route {
                if let Some(sender) = link.sender.take() {
                    return Lane::Own(sender);
                }
                // A request lost the sender on an error path: the connection is suspect.
                state.link = None;
            } else if link.route.forwarder == route.forwarder {
                return Lane::Pool;
            } else {
                // Opened under a config that a reload replaced.
                state.link = None;
            }
        }
        match parking.take(route) {
            Some(mut link) => {
                let sender = link.sender.take().expect("a parked link is idle");
                attach(&mut state, link);
                Lane::Own(sender)
            }
            None => Lane::Open,
        }
    }

    /// Runs `exchange` for at most `timeout`; `None` when it ran out of time.
    pub(super) async fn within<T>(
        &self,
        timeout: Duration,
        exchange: impl Future<Output = T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        match &mut lock(&self.state).deadline {
            Some(timer) => timer.as_mut().reset(deadline),
            slot @ None => *slot = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        let mut exchange = std::pin::pin!(exchange);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(done) = exchange.as_mut().poll(cx) {
                return Poll::Ready(Some(done));
            }
            let mut state = lock(&self.state);
            let timer = state.deadline.as_mut().expect("armed above");
            timer.as_mut().poll(cx).map(|()| None)
        })
        .await
    }

    /// Makes `link` this client connection's upstream connection (closing any other).
    pub(super) fn attach(&self, link: Link) {
        attach(&mut lock(&self.state), link);
    }

    /// Returns the sender once its request is handed over, for the next request.
    pub(super) fn give_back(&self, route: Route, sender: Sender) {
        if let Some(link) = &mut lock(&self.state).link
            && link.route == route
            && link.sender.is_none()
        {
            link.sender = Some(sender);
        }
    }

    /// Closes the upstream connection.
    pub(super) fn detach(&self) {
        lock(&self.state).link = None;
    }

    /// The client connection is idle: its upstream connection, if idle too, goes to the
    /// parking for any client connection. Without this, every idle keep-alive client
    /// connection (a load balancer's pool holds many) would hold an upstream connection, and
    /// the upstream would see as many connections as keygate has clients.
    pub fn park_if_idle(&self) {
        let mut state = lock(&self.state);
        if state.link.as_ref().is_some_and(Link::idle) {
            let link = state.link.take().expect("checked");
            drop(state);
            link.park();
        }
    }
}

fn attach(state: &mut State, link: Link) {
    state.link = Some(link);
    if let Some(waker) = state.waker.take() {
        waker.wake();
    }
}

impl Drop for Paired {
    /// The client connection ended: its upstream connection, if idle, waits for the next one.
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(link) = state.link.take() {
            link.park();
        }
    }
}

/// A poisoned lock only means another request panicked while holding it; the state is a
/// connection slot that is valid in every state.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const ROUTE: Route = Route {
        forwarder: 0,
        sandbox: false,
    };

    /// Idle upstream connections to a real loopback listener (which accepts and holds them).
    async fn links(home: &Arc<Parking>, n: usize) -> (Vec<Link>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let mut out = Vec::new();
        for _ in 0..n {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let io = MaybeHttpsStream::Http(TokioIo::new(tcp));
            let (sender, driver) = http1::handshake(io).await.unwrap();
            let mut link = Link::new(ROUTE, driver, home);
            link.sender = Some(sender);
            out.push(link);
        }
        (out, held)
    }

    #[tokio::test]
    async fn parking_keeps_the_newest_and_forgets_the_expired() {
        let home = Arc::new(Parking::default());
        let (mut made, held) = links(&home, PARK_MAX + 2).await;
        let newest = made.pop().unwrap();
        for link in made {
            home.park(link);
        }
        assert_eq!(
            lock(&home.idle).len(),
            PARK_MAX,
            "the oldest go beyond PARK_MAX"
        );

        // Everything parked longer than PARK_FOR ago is closed on the next take; a fresh one
        // is handed out.
        for (at, _) in lock(&home.idle).iter_mut() {
            *at -= PARK_FOR;
        }
        home.park(newest);
        assert_eq!(lock(&home.idle).len(), 1);
        let other = Route {
            sandbox: true,
            ..ROUTE
        };
        assert!(home.take(other).is_none(), "no connection to the sandbox");
        assert!(home.take(ROUTE).is_some());
        assert!(home.take(ROUTE).is_none());
        held.abort();
    }
}
