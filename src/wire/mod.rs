//! HTTP/1.1 on the wire, keygate's own: client request heads ([`request`]), bodies
//! ([`body`]), and what goes back to the client ([`response`]). The session that uses them is
//! `server::session`; the upstream's request head is written by
//! [`crate::forward::upstream_head`]; which header means what is [`crate::header_rules`].
//!
//! Why not hyper for HTTP/1.1: on the benchmark machine a bare hyper proxy (one upstream
//! connection per client connection, driven in the client connection's task) reached about
//! 0.8× HAProxy's plain proxying, and keygate on it ~0.7×; the same loop written over
//! `httparse` with one buffer per direction reached 1.1× (bench/RESULTS.md, 2026-12-04). A
//! sidecar's cost is multiplied by the fleet, so the request path parses the head once, into
//! an index over the read buffer, admits it, and writes the upstream's head directly; hyper
//! still serves HTTP/2 clients, the admin port, and HTTP/1.1 clients when the upstream speaks
//! HTTP/2.
//!
//! What is spoken: HTTP/1.0 and 1.1 requests in origin or absolute form, keep-alive and
//! pipelining (one request at a time), `Content-Length` and chunked bodies both ways (streamed,
//! never buffered whole), `Expect: 100-continue`, 1xx interim responses, `Upgrade: websocket`
//! after admission (other upgrades are dropped). What is refused with a JSON 400: malformed
//! heads, ambiguous framing (see [`request`]), `CONNECT`, `OPTIONS *`. Trailers are read and
//! dropped; a fragment in a target is cut off.

pub mod body;
mod buffer;
pub mod request;
pub mod response;

pub use body::{BodyError, Decoder, Encoding};
pub use buffer::Buffer;
pub use request::{Framing, HeadError, MAX_HEADER_LINES, ParsedRequest, RequestHead};
