//! HTTP/1.1 on the wire, keygate's own: request heads ([`head`]), bodies ([`body`]), and what
//! goes back to the client ([`mod@write`]). The connection loop that uses them is
//! `server::h1`; the upstream's request head is written by [`crate::forward::h1`].
//!
//! Why not hyper for HTTP/1.1: on the benchmark machine a bare hyper proxy (one upstream
//! connection per client connection, driven in the client connection's task) reached about
//! 0.8× HAProxy's plain proxying, and keygate on it ~0.7×; the same loop written over
//! `httparse` with one buffer per direction reached 1.1× (bench/RESULTS.md, 2026-12-04). A
//! sidecar's cost is multiplied by the fleet, so the request path parses the head once, into
//! an index over the read buffer, admits it, and writes the upstream's head directly; hyper
//! still serves HTTP/2 clients, the admin port and an HTTP/2 upstream.
//!
//! What is spoken: HTTP/1.0 and 1.1 requests in origin or absolute form, keep-alive and
//! pipelining (one request at a time), `Content-Length` and chunked bodies both ways (streamed,
//! never buffered whole), `Expect: 100-continue`, 1xx interim responses, `Upgrade: websocket`
//! after admission (other upgrades are dropped). What is refused with a JSON 400: malformed
//! heads, ambiguous framing (see [`head`]), `CONNECT`, `OPTIONS *`. Trailers are read and
//! dropped; a fragment in a target is cut off.

pub mod body;
mod buffer;
pub mod head;
pub mod write;

pub use body::{BodyError, Decoder, Encoding};
pub use buffer::Buffer;
pub use head::{Framing, HeadError, MAX_HEADER_LINES, Request, RequestHead};
