//! A request head as the request path's stages read it, whichever HTTP engine parsed it:
//! keygate's own HTTP/1.1 connections ([`crate::wire`]) or hyper (HTTP/2 clients). The stages
//! only ever look things up in it; forwarding is each engine's own business.

use http::Method;
use http::header::CONTENT_LENGTH;

pub trait Head {
    fn method(&self) -> &Method;
    /// The request target's path, without its query.
    fn path(&self) -> &str;
    /// Every value of the header `name` (given in lowercase), in the order received.
    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a;
    /// Request line and header fields in bytes, as on the wire (for HTTP/2, as if they were).
    fn head_len(&self) -> usize;
    /// The body length the request declares (`Content-Length`), if it declares one.
    fn declared_length(&self) -> Option<u64>;
}

impl<B> Head for http::Request<B> {
    fn method(&self) -> &Method {
        self.method()
    }

    fn path(&self) -> &str {
        self.uri().path()
    }

    fn values<'a>(&'a self, name: &'static str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers()
            .get_all(name)
            .into_iter()
            .map(|value| value.as_bytes())
    }

    fn head_len(&self) -> usize {
        // "name: value\r\n" per field, plus the request line.
        let fields: usize = self
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        let uri = self.uri();
        let line = self.method().as_str().len()
            + uri.authority().map_or(0, |a| a.as_str().len())
            + uri.path_and_query().map_or(1, |p| p.as_str().len())
            + 12;
        fields + line
    }

    fn declared_length(&self) -> Option<u64> {
        self.headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }
}
