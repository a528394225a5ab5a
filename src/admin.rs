//! The admin listener's routes: `/healthz` (the process answers), `/readyz` (config loaded,
//! listeners bound, not shutting down; a Redis outage does not make keygate unready — it
//! still serves cached keys — it shows in `/metrics` as `keygate_key_store_up 0`) and
//! `/metrics` (Prometheus text). Never served on the public port, so a client
//! cannot probe or scrape it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::metrics::Metrics;

/// Shared readiness: flipped on once serving starts, off as soon as shutdown begins so load
/// balancers stop sending before connections close.
#[derive(Debug, Default, Clone)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn route<B>(
    req: &Request<B>,
    readiness: &Readiness,
    metrics: &Metrics,
) -> Response<Full<Bytes>> {
    if req.uri().path() == "/metrics" && req.method() == Method::GET {
        let mut response = Response::new(Full::new(Bytes::from(metrics.render())));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        return response;
    }
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, r#"{"status":"ok"}"#),
        (&Method::GET | &Method::HEAD, "/readyz") if readiness.get() => {
            (StatusCode::OK, r#"{"status":"ready"}"#)
        }
        (&Method::GET | &Method::HEAD, "/readyz") => {
            (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not_ready"}"#)
        }
        (_, "/healthz" | "/readyz" | "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":{"code":"method_not_allowed","message":"Use GET","type":"invalid_request_error"}}"#,
        ),
        _ => (
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"not_found","message":"Admin routes: /healthz, /readyz, /metrics","type":"invalid_request_error"}}"#,
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let ready = Readiness::default();
        let m = Metrics::new();
        let get = |path: &str| Request::get(path).body(()).unwrap();
        assert_eq!(route(&get("/healthz"), &ready, &m).status(), 200);
        assert_eq!(route(&get("/readyz"), &ready, &m).status(), 503);
        ready.set(true);
        assert_eq!(route(&get("/readyz"), &ready, &m).status(), 200);
        assert_eq!(route(&get("/metrics"), &ready, &m).status(), 200);
        assert_eq!(route(&get("/nope"), &ready, &m).status(), 404);
        let post = Request::post("/healthz").body(()).unwrap();
        assert_eq!(route(&post, &ready, &m).status(), 405);
    }
}
