//! A tiny upstream that answers every request with JSON describing it: method, path, query,
//! headers, the connection's peer address, and the body's length and SHA-256 (streamed, so a
//! 1 GiB upload costs no memory).
//! `keygate demo` puts it behind the proxy; the black-box tests use it as their upstream.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Bodies up to this size are echoed back as text as well as hashed.
const ECHO_BODY_LIMIT: usize = 64 * 1024;

/// Serves until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(_) => continue,
            },
        };
        let (stream, peer) = stream;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let service = service_fn(move |req| describe(req, Some(peer)));
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

/// Answers with the request's description (without the connection it came over).
pub async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    describe(req, None).await
}

/// `peer`: the client's address, which tells a proxy's upstream connections apart.
async fn describe(
    req: Request<Incoming>,
    peer: Option<SocketAddr>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut hasher = Sha256::new();
    let mut len = 0usize;
    let mut kept = Vec::new();
    let mut body_error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    len += data.len();
                    if kept.len() + data.len() <= ECHO_BODY_LIMIT {
                        kept.extend_from_slice(data);
                    }
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    let mut headers: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let digest: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": len,
        "body_sha256": digest,
        "body": (len <= ECHO_BODY_LIMIT).then(|| String::from_utf8_lossy(&kept).into_owned()),
        "body_error": body_error,
        "peer": peer.map(|p| p.to_string()),
    });
    let mut response = Response::new(Full::new(Bytes::from(json.to_string())));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}
