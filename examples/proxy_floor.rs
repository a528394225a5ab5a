//! The cost floor of a bare hyper HTTP/1 proxy, by how it reaches the upstream: what keygate's
//! own work is measured against (see `forward::paired` and bench/RESULTS.md).
//!
//! `cargo run --release --example proxy_floor -- LISTEN UPSTREAM MODE`, MODE one of:
//! - `pool`: hyper-util's pooled client, shared by every client connection;
//! - `spawned`: an upstream connection per client connection, driven in a task of its own;
//! - `same`: an upstream connection per client connection, driven in the client connection's
//!   task (what keygate did with hyper for HTTP/1.1, until 2026-12-04);
//! - `raw`: no hyper: `httparse` heads, one buffer per direction, an upstream connection per
//!   client connection, one request at a time in the client connection's task (the shape of
//!   keygate's own HTTP/1.1, `server::session`). `Content-Length` bodies only.
//!
//! Requests are forwarded as they came (no header rewriting, no timeouts): a floor, not a proxy.

use std::sync::{Arc, Mutex};

use http::Request;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, mode] = &args[..] else {
        return Err("usage: proxy_floor LISTEN UPSTREAM pool|spawned|same|raw".into());
    };
    let listener = TcpListener::bind(listen).await?;
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let pool: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build(http);
    let base: Arc<str> = format!("http://{upstream}").into();
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        let server = hyper::server::conn::http1::Builder::new();
        let (pool, base, upstream, mode) =
            (pool.clone(), base.clone(), upstream.clone(), mode.clone());
        tokio::spawn(async move {
            if mode == "raw" {
                if let Ok(up) = TcpStream::connect(&upstream).await {
                    let _ = raw(io.into_inner(), up).await;
                }
                return;
            }
            if mode == "pool" {
                let service = service_fn(move |mut req: Request<Incoming>| {
                    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    *req.uri_mut() = format!("{base}{path}").parse().expect("a valid URI");
                    pool.request(req)
                });
                let _ = server.serve_connection(io, service).await;
                return;
            }
            let Ok(up) = TcpStream::connect(&upstream).await else {
                return;
            };
            let _ = up.set_nodelay(true);
            let Ok((sender, conn)) =
                hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(up)).await
            else {
                return;
            };
            // HTTP/1: one request at a time, so the sender is always free when a request comes.
            let slot: Arc<Mutex<Option<SendRequest<Incoming>>>> =
                Arc::new(Mutex::new(Some(sender)));
            let service = service_fn(move |req: Request<Incoming>| {
                let slot = slot.clone();
                async move {
                    let mut sender = slot.lock().unwrap().take().expect("one request at a time");
                    sender.ready().await?;
                    let response = sender.send_request(req);
                    *slot.lock().unwrap() = Some(sender);
                    response.await
                }
            });
            let served = server.serve_connection(io, service);
            if mode == "spawned" {
                tokio::spawn(conn);
                let _ = served.await;
                return;
            }
            tokio::pin!(served, conn);
            let mut upstream_done = false;
            loop {
                tokio::select! {
                    biased;
                    _ = &mut conn, if !upstream_done => upstream_done = true,
                    _ = &mut served => return,
                }
            }
        });
    }
}

/// Forwards requests and responses as they came, each read whole by its `Content-Length`.
async fn raw(mut client: TcpStream, mut up: TcpStream) -> std::io::Result<()> {
    up.set_nodelay(true)?;
    let (mut cbuf, mut ubuf) = (Vec::with_capacity(16384), Vec::with_capacity(16384));
    loop {
        let Some(n) = message(&mut client, &mut cbuf, true).await? else {
            return Ok(());
        };
        up.write_all(&cbuf[..n]).await?;
        cbuf.drain(..n);
        let Some(n) = message(&mut up, &mut ubuf, false).await? else {
            return Ok(());
        };
        client.write_all(&ubuf[..n]).await?;
        ubuf.drain(..n);
    }
}

/// Reads until `buf` holds one whole message (head and `Content-Length` body); its length.
async fn message(
    io: &mut TcpStream,
    buf: &mut Vec<u8>,
    request: bool,
) -> std::io::Result<Option<usize>> {
    loop {
        let mut lines = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; 64];
        let length = |headers: &[httparse::Header]| -> usize {
            headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                .unwrap_or(0)
        };
        let parsed = if request {
            let mut req = httparse::Request::new(&mut []);
            let parsed = req.parse_with_uninit_headers(buf, &mut lines);
            parsed.map(|s| match s {
                httparse::Status::Complete(head) => Some((head, length(req.headers))),
                httparse::Status::Partial => None,
            })
        } else {
            let mut resp = httparse::Response::new(&mut []);
            let config = httparse::ParserConfig::default();
            let parsed = config.parse_response_with_uninit_headers(&mut resp, buf, &mut lines);
            parsed.map(|s| match s {
                httparse::Status::Complete(head) => Some((head, length(resp.headers))),
                httparse::Status::Partial => None,
            })
        };
        if let Ok(Some((head, body))) = parsed {
            if buf.len() >= head + body {
                return Ok(Some(head + body));
            }
        } else if parsed.is_err() {
            return Ok(None);
        }
        // Into the vector's spare capacity: a zeroed stack buffer per read would cost a 16 KiB
        // memset twice per request, as much as the rest of this loop.
        buf.reserve(16384);
        if io.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}
