//! What an idle session asks of its client transport: a socket to wait on for the client's
//! next bytes while it holds no buffers.
//!
//! A session idle for a second gives back its read buffer and scratch space and waits for
//! readability with a one-byte `peek` on the TCP connection, so an idle keep-alive
//! connection costs its task and socket. Over TLS that wait is only sound while rustls holds
//! nothing the client sent (a pipelined request already decrypted would never make the
//! socket readable again) and nothing to send; the transport says whether that holds.
//! rustls's own buffers are not given back: its record buffer (4 KiB) and cipher state stay
//! with the connection.
//!
//! Measured (`bench/conn_memory.py --tls`, 2,000 idle connections after one request each): an
//! idle TLS connection cost 41 KB resident, 25 KB once it gave back its buffers, and 15–19 KB
//! (median 15.8) with its TLS stream boxed as well (`server::serve_tls`); nginx and HAProxy
//! 18.1 and 19.0 KB on the same machine (bench/RESULTS.md, 2026-12-07).

use tokio::net::TcpStream;

use crate::batch::{Batched, Socket};

/// A client transport as an idle session sees it.
pub trait Idle {
    /// Gives back the buffers the transport keeps between exchanges, and says whether the
    /// session may now wait on [`Idle::tcp`] for the client's next bytes.
    fn shed(&mut self) -> bool;
    /// The TCP connection underneath.
    fn tcp(&self) -> Option<&TcpStream>;
}

impl Idle for Socket {
    fn shed(&mut self) -> bool {
        true
    }

    fn tcp(&self) -> Option<&TcpStream> {
        Some(Socket::tcp(self))
    }
}

impl<T: Idle + ?Sized> Idle for Box<T> {
    fn shed(&mut self) -> bool {
        (**self).shed()
    }

    fn tcp(&self) -> Option<&TcpStream> {
        (**self).tcp()
    }
}

impl Idle for tokio_rustls::server::TlsStream<Batched<Socket>> {
    fn shed(&mut self) -> bool {
        let (io, tls) = self.get_mut();
        // `process_new_packets` decrypts nothing new here (every read already did): it is
        // how rustls tells what it holds.
        let nothing_held = !tls.wants_write()
            && tls
                .process_new_packets()
                .is_ok_and(|state| state.plaintext_bytes_to_read() == 0);
        nothing_held && io.shed()
    }

    fn tcp(&self) -> Option<&TcpStream> {
        Some(self.get_ref().0.get_ref().tcp())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    type Server = tokio_rustls::server::TlsStream<Batched<Socket>>;
    type Client = tokio_rustls::client::TlsStream<TcpStream>;

    /// A TLS connection over loopback: keygate's side as `serve_tls` builds it, and a client.
    async fn tls_pair() -> (Server, Client) {
        let provider = crate::crypto::tls_provider();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
            connector.connect(name, tcp).await.unwrap()
        };
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            let io = Batched::new(Socket::new(tcp), true);
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
            acceptor.accept(io).await.unwrap()
        };
        let (client, server) = tokio::join!(connect, accept);
        (server, client)
    }

    #[tokio::test]
    async fn tls_waits_on_its_socket_only_while_rustls_holds_nothing_the_client_sent() {
        let (mut server, mut client) = tls_pair().await;
        assert!(server.tcp().is_some());

        // Everything the client sent has been read: the session may wait on the socket.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut head = [0u8; 18];
        server.read_exact(&mut head).await.unwrap();
        assert!(server.shed());

        // One record, read in part: the rest is decrypted and held by rustls, and the socket
        // will not become readable for it.
        client.write_all(b"first second").await.unwrap();
        let mut part = [0u8; 5];
        server.read_exact(&mut part).await.unwrap();
        assert_eq!(&part, b"first");
        assert!(!server.shed(), "rustls holds \" second\"");
        let mut rest = [0u8; 7];
        server.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b" second");
        assert!(server.shed());

        // Half a record on the wire: rustls needs more bytes, which make the socket readable.
        let (tcp, tls) = client.get_mut();
        std::io::Write::write_all(&mut tls.writer(), b"third").unwrap();
        let mut record = Vec::new();
        tls.write_tls(&mut record).unwrap();
        let half = record.len() / 2;
        tcp.write_all(&record[..half]).await.unwrap();
        let mut probe = [0u8; 1];
        server.tcp().unwrap().peek(&mut probe).await.unwrap();
        let mut buf = [0u8; 16];
        let read =
            tokio::time::timeout(std::time::Duration::from_millis(200), server.read(&mut buf));
        assert!(read.await.is_err(), "half a record decrypts to nothing");
        assert!(server.shed());
        tcp.write_all(&record[half..]).await.unwrap();
        server.tcp().unwrap().peek(&mut probe).await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"third");

        // The response path still works after the write buffer was given back.
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        server.flush().await.unwrap();
        let mut answer = [0u8; 19];
        client.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"HTTP/1.1 200 OK\r\n\r\n");
    }
}
