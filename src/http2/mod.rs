//! HTTP/2 on the wire, keygate's own: being built to serve HTTP/2 clients in place of hyper's
//! server (issue 23). **Nothing serves with it yet**: hyper serves every HTTP/2 client until
//! the engine is whole and holds every guarantee hyper's holds today.
//!
//! Why: an HTTP/2 request costs keygate three to four times the user-space CPU of an HTTP/1.1
//! one on its own engine, the same stages and upstream links behind both (bench/RESULTS.md,
//! 2026-12-07 21:05: h2c through hyper 9.6–11.3 µs of user time per request at 10 streams,
//! keygate's own HTTP/1.1 2.3–3.7 µs; the kernel's part is already below HAProxy's). A profile
//! of the HTTP/2 path puts most of its user time in the `h2` crate, the allocator, the `http`
//! and `bytes` types, copies and hyper, the layers an engine of keygate's own does without, as
//! its HTTP/1.1 one does ([`crate::wire`]).
//!
//! What is here so far:
//! - [`frame`]: the frame layer (RFC 9113 §4 and §6): a frame read from the front of a
//!   buffer, with every check that one frame alone decides (sizes, stream 0 or not, padding,
//!   settings' values), and the frames a server writes.
//! - [`request`]: a request's header block, decoded (HPACK) and held to RFC 9113 §8's rules
//!   (pseudo-header fields, connection-specific fields, lowercase names, `Host` against
//!   `:authority`), into a head the request path's stages read.
//! - [`response`]: a response's header block, HPACK-encoded from the static table and
//!   literals (no dynamic table to keep in step).
//! - [`connection`]: one connection's state without I/O: the client's bytes in, one frame at
//!   a time, events out (a request, a piece of its body, a reset), the server's frames and
//!   responses collected in one output buffer; stream states, flow control both ways, the
//!   client's settings, and the limits on streams, resets, header blocks and unread output.
//!
//! Still to build: the engine that drives a [`connection::Connection`] over a socket and
//! keygate's request path (admit, the upstream links, refusals as JSON, the rate-limit
//! headers, `finish`), with the clocks hyper's connections have today (header, idle, stall,
//! a polite close that must finish), TLS and extended CONNECT for WebSockets; then
//! conformance (h2spec's cases, written as tests) and differential tests against hyper's
//! server, a benchmark against it, and only then the switch.

pub mod connection;
pub mod frame;
pub mod request;
pub mod response;
#[cfg(test)]
mod test_io;
