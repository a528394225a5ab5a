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
//!
//! - [`response`]: a response's header block, HPACK-encoded from the static table and
//!   literals (no dynamic table to keep in step).
//!
//! Still to build, in this order: the connection's
//! state (streams, flow control both ways, settings, the limits on streams, resets and
//! header blocks that hyper's server enforces today), then the engine over keygate's upstream
//! links and its clocks, conformance and differential tests against hyper, and fuzzing of
//! each layer.

pub mod frame;
pub mod request;
pub mod response;
