//! The admin listener's routes: `/healthz` (the process answers) and `/readyz` (config
//! loaded, listeners bound, not shutting down). Never served on the public port, so a client
//! cannot probe or scrape it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

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

pub fn route<B>(req: &Request<B>, readiness: &Readiness) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, r#"{"status":"ok"}"#),
        (&Method::GET | &Method::HEAD, "/readyz") if readiness.get() => {
            (StatusCode::OK, r#"{"status":"ready"}"#)
        }
        (&Method::GET | &Method::HEAD, "/readyz") => {
            (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not_ready"}"#)
        }
        (_, "/healthz" | "/readyz") => (
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":{"code":"method_not_allowed","message":"Use GET","type":"invalid_request_error"}}"#,
        ),
        _ => (
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"not_found","message":"Admin routes: /healthz, /readyz","type":"invalid_request_error"}}"#,
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
        let get = |path: &str| Request::get(path).body(()).unwrap();
        assert_eq!(route(&get("/healthz"), &ready).status(), 200);
        assert_eq!(route(&get("/readyz"), &ready).status(), 503);
        ready.set(true);
        assert_eq!(route(&get("/readyz"), &ready).status(), 200);
        assert_eq!(route(&get("/metrics"), &ready).status(), 404);
        let post = Request::post("/healthz").body(()).unwrap();
        assert_eq!(route(&post, &ready).status(), 405);
    }
}
