//! What every connection keygate opens (to the upstream, to Redis) is given so that a path
//! that dies without a reset (a vanished host or container, a stuck NAT entry, a cable pulled
//! between nodes) is noticed by the kernel in seconds instead of the 15 minutes of default
//! retransmissions: TCP keepalive with short probes for a connection that idles (a parked
//! upstream connection, a quiet WebSocket tunnel, a subscriber), and `TCP_USER_TIMEOUT` for
//! one that has sent data nobody acknowledges. A live peer's kernel answers both whatever its
//! application is doing, so a slow upstream is never mistaken for a dead path.
//!
//! A client's connection gets the same watch only where it can carry a WebSocket tunnel, with
//! longer bounds (a phone in a lift is not a dead host; its path is the internet, not a
//! node's network): an HTTP/1.1 connection once it becomes one, an HTTP/2 connection from
//! its start (any of its streams may become one, RFC 8441, and the socket is hyper's by
//! then). Every other wait on a client already has a clock of its own (the idle, header and
//! stall timeouts), so HTTP/1.1 connections that never upgrade are spared the system calls.

use std::time::Duration;

/// Idle time before the first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// Time between unanswered probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
/// Unanswered probes that end the connection: a dead idle path is noticed within
/// `KEEPALIVE_IDLE + KEEPALIVE_PROBES × KEEPALIVE_INTERVAL` (11 s).
pub const KEEPALIVE_PROBES: u32 = 3;
/// Data left unacknowledged this long ends the connection.
pub const USER_TIMEOUT: Duration = Duration::from_secs(10);

/// A tunnel's client: idle time before the first probe.
pub const CLIENT_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// A tunnel's client: time between unanswered probes.
pub const CLIENT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A tunnel's client: with keepalive on, Linux ends the connection once this has passed
/// since the client's last segment and a probe is out, rather than after a probe count:
/// a vanished client of a quiet tunnel is let go within about 70 s, one that stopped
/// acknowledging the tunnel's data within 60 s.
pub const CLIENT_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// The keepalive settings, for `socket2`.
pub fn keepalive() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES)
}

/// Gives an open connection both settings.
pub fn watch_path(tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(tcp);
    socket.set_tcp_keepalive(&keepalive())?;
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

/// Gives a client's connection that carries (or may carry) a tunnel the client's settings.
pub fn watch_client(tcp: &tokio::net::TcpStream) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(tcp);
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(CLIENT_KEEPALIVE_IDLE)
            .with_interval(CLIENT_KEEPALIVE_INTERVAL),
    )?;
    socket.set_tcp_user_timeout(Some(CLIENT_USER_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_gets_the_settings() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        watch_path(&tcp).unwrap();
        let socket = socket2::SockRef::from(&tcp);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
    }

    #[tokio::test]
    async fn a_tunnels_client_gets_the_client_settings() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        watch_client(&tcp).unwrap();
        let socket = socket2::SockRef::from(&tcp);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), CLIENT_KEEPALIVE_IDLE);
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            CLIENT_KEEPALIVE_INTERVAL
        );
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(CLIENT_USER_TIMEOUT)
        );
    }
}
