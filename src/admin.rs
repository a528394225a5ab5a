//! The admin listener's routes: `/healthz` (the process answers), `/readyz` (config loaded,
//! listeners bound, not shutting down; a Redis outage does not make keygate unready — it
//! still serves cached keys — it shows in `/metrics` as `keygate_key_store_up 0`, unless
//! `[store] ready_requires_current` asks readiness to fail while the key cache cannot be
//! confirmed current), `/metrics` (Prometheus text) and `/last-used` (JSON, key id → when it
//! was last used; the place to read them when a read-only keys file leaves them in memory).
//! Never served on the public port, so a client cannot probe or scrape it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::keys::KeyStore;
use crate::metrics::Metrics;

/// Shared readiness: flipped on once serving starts, off as soon as shutdown begins so load
/// balancers stop sending before connections close.
#[derive(Debug, Default, Clone)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    /// `[store] ready_requires_current`: also not ready while the key cache cannot be
    /// confirmed current (`keygate_key_feed_current 0`).
    requires_current: Arc<AtomicBool>,
}

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn get(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn require_current_cache(&self, on: bool) {
        self.requires_current.store(on, Ordering::SeqCst);
    }

    /// Ready, by the process's state and, if required, the key cache's.
    fn check(&self, metrics: &Metrics) -> Result<(), &'static str> {
        if !self.get() {
            return Err(r#"{"status":"not_ready"}"#);
        }
        if self.requires_current.load(Ordering::SeqCst)
            && metrics.store_health.feed_current.get() == 0
        {
            return Err(r#"{"status":"not_ready","reason":"key_cache_not_current"}"#);
        }
        Ok(())
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
        (&Method::GET | &Method::HEAD, "/readyz") => match readiness.check(metrics) {
            Ok(()) => (StatusCode::OK, r#"{"status":"ready"}"#),
            Err(body) => (StatusCode::SERVICE_UNAVAILABLE, body),
        },
        (_, "/healthz" | "/readyz" | "/metrics" | "/last-used") => (
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":{"code":"method_not_allowed","message":"Use GET","type":"invalid_request_error"}}"#,
        ),
        _ => (
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"not_found","message":"Admin routes: /healthz, /readyz, /metrics, /last-used","type":"invalid_request_error"}}"#,
        ),
    };
    json(status, Bytes::from_static(body.as_bytes()))
}

/// Whether `req` asks for `/last-used`, which needs the store ([`last_used`]).
pub fn wants_last_used<B>(req: &Request<B>) -> bool {
    req.uri().path() == "/last-used" && req.method() == Method::GET
}

/// `{"key_…": "2026-12-05T10:00:00Z", …}`: when each key was last used, as far as this
/// process's store knows (written behind every 10 s).
pub async fn last_used(store: &dyn KeyStore) -> Response<Full<Bytes>> {
    match store.last_used().await {
        Ok(times) => {
            let times: std::collections::BTreeMap<String, String> = times
                .into_iter()
                .map(|(id, at)| (id, humantime::format_rfc3339_seconds(at).to_string()))
                .collect();
            let body = serde_json::to_vec(&times).expect("strings serialize");
            json(StatusCode::OK, Bytes::from(body))
        }
        Err(e) => {
            tracing::warn!(error = %e, "last-used times not read");
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                Bytes::from_static(
                    br#"{"error":{"code":"key_store_unavailable","message":"The key store cannot answer","type":"api_error"}}"#,
                ),
            )
        }
    }
}

/// A JSON response (also the management API's).
pub(crate) fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
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

    #[test]
    fn readiness_may_require_a_current_key_cache() {
        let ready = Readiness::default();
        let m = Metrics::new();
        let get = || Request::get("/readyz").body(()).unwrap();
        ready.set(true);
        m.store_health.feed_current.set(0);
        assert_eq!(route(&get(), &ready, &m).status(), 200, "not by default");
        ready.require_current_cache(true);
        let refused = route(&get(), &ready, &m);
        assert_eq!(refused.status(), 503);
        m.store_health.feed_current.set(1);
        assert_eq!(route(&get(), &ready, &m).status(), 200);
    }
}
