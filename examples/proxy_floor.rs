//! The cost floor of a bare hyper HTTP/1 proxy, by how it reaches the upstream: what keygate's
//! own work is measured against (see `forward::paired` and bench/RESULTS.md).
//!
//! `cargo run --release --example proxy_floor -- LISTEN UPSTREAM MODE`, MODE one of:
//! - `pool`: hyper-util's pooled client, shared by every client connection;
//! - `spawned`: an upstream connection per client connection, driven in a task of its own;
//! - `same`: an upstream connection per client connection, driven in the client connection's
//!   task (what keygate does).
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
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, upstream, mode] = &args[..] else {
        return Err("usage: proxy_floor LISTEN UPSTREAM pool|spawned|same".into());
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
