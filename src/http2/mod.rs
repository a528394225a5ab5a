//! HTTP/2 on the wire, keygate's own: being built to serve HTTP/2 clients in place of hyper's
//! server (issue 23). **Nothing serves with it yet**: hyper serves every HTTP/2 client until
//! the engine is whole and holds every guarantee hyper's holds today.
//!
//! Why: an HTTP/2 request costs keygate about four times the user-space CPU of an HTTP/1.1
//! one on its own engine, the same stages and upstream links behind both (bench/RESULTS.md,
//! 2026-12-07 21:20: h2c through hyper 9.5–11.4 µs of user time per request, keygate's own
//! HTTP/1.1 2.5–3.0 µs; the kernel's part is already below HAProxy's). A profile of the HTTP/2
//! path puts about 60 % of its user time in the `h2` crate, hyper, the `http` types, the
//! allocator and copies, the layers an engine of keygate's own does without, as its HTTP/1.1
//! one does ([`crate::wire`]).
//!
//! What is here so far:
//! - [`frame`]: the frame layer (RFC 9113 §4 and §6): a frame read from the front of a
//!   buffer, with every check that one frame alone decides (sizes, stream 0 or not, padding,
//!   settings' values), and the frames a server writes.
//!
//! Still to build, in this order: header blocks (HPACK, and the request rules of RFC 9113
//! §8: pseudo-header fields, connection-specific fields, lowercase names), the connection's
//! state (streams, flow control both ways, settings, the limits on streams, resets and
//! header blocks that hyper's server enforces today), then the engine over keygate's upstream
//! links and its clocks, conformance and differential tests against hyper, and fuzzing of
//! each layer.

pub mod frame;
