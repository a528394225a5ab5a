//! `Upgrade` pass-through (WebSocket and friends) for HTTP/1.1 clients.
//!
//! An upgrade request goes through `admit` like any other, so a WebSocket needs a key with the
//! route's scopes. Only once the upstream answers `101 Switching Protocols` are the two
//! connections spliced together; keygate then copies bytes both ways until either side closes,
//! and no longer looks at what flows.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// The protocol a client asks to switch to, if this request is an upgrade: `Connection` must
/// name `upgrade` and `Upgrade` must be present (RFC 9110 §7.8).
pub fn requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    let named = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    named.then(|| upgrade.clone())
}

/// Puts the upgrade back on a request whose hop-by-hop headers were stripped.
pub fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Takes the client side's pending upgrade off the request, so it is not sent upstream with it.
pub fn take_client_side<B>(req: &mut Request<B>) -> Option<OnUpgrade> {
    req.extensions_mut().remove::<OnUpgrade>()
}

/// After the upstream answered: if it switched protocols, splice the two connections in a task
/// of their own and let the `101` (with its `Upgrade`/`Connection`) go back to the client.
pub fn splice<B>(client: OnUpgrade, response: &mut Response<B>) {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let upstream = hyper::upgrade::on(&mut *response);
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
            Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_counts_as_an_upgrade() {
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[("connection", "Upgrade"), ("upgrade", "websocket")], true),
            (
                &[
                    ("connection", "keep-alive, upgrade"),
                    ("upgrade", "websocket"),
                ],
                true,
            ),
            (&[("upgrade", "websocket")], false),
            (&[("connection", "upgrade")], false),
            (&[("connection", "close"), ("upgrade", "websocket")], false),
        ];
        for (headers, want) in cases {
            let mut h = HeaderMap::new();
            for (k, v) in *headers {
                h.append(*k, HeaderValue::from_static(v));
            }
            assert_eq!(requested(&h).is_some(), *want, "{headers:?}");
        }
    }
}
