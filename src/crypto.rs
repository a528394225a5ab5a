//! The cryptography under every TLS connection keygate takes or makes (clients on the TLS
//! port, HTTPS upstreams, `rediss://` key stores) and under its access tokens: aws-lc-rs.
//!
//! # Why aws-lc-rs
//!
//! Its rustls provider offers the hybrid post-quantum key exchange X25519MLKEM768 (X25519 and
//! ML-KEM-768 together: as strong as the stronger of the two), which browsers and OpenSSL 3.5
//! offer first: traffic recorded today cannot be read later by whoever gets a large quantum
//! computer. ring's provider has no post-quantum key exchange, and rustls deprecated it for
//! that in 0.23.48. A client that does not offer X25519MLKEM768 gets X25519, P-256 or P-384 as
//! before, and none pays an extra round trip for it: rustls takes the first group in the
//! client's own order that it supports, and clients send a key share for their first choice.
//! What it costs: `benches/tls_handshake.rs` (the server's key exchange 51 µs with
//! X25519MLKEM768 against 35 with X25519; bench/RESULTS.md, 2026-12-07 04:20).
//!
//! One provider, built in one place, so that the server, the upstream client and the Redis
//! client cannot drift apart in what they offer.

use std::sync::Arc;

pub use aws_lc_rs::{aead, digest};
use rustls::crypto::CryptoProvider;

/// The rustls provider every TLS configuration in keygate is built with.
pub fn tls_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes [`tls_provider`] the process's default, for libraries that build their own rustls
/// configuration (the Redis client, for `rediss://`). A second call, or a default installed
/// by someone else first, changes nothing.
pub fn install_default() {
    let _ = Arc::unwrap_or_clone(tls_provider()).install_default();
}

/// A rustls session-ticket maker for the server (stateless resumption), if the system's
/// random source works.
pub fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    rustls::crypto::aws_lc_rs::Ticketer::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the module doc promises: the hybrid post-quantum group first, and the classical
    /// groups clients without it fall back to.
    #[test]
    fn the_provider_offers_the_hybrid_post_quantum_group_first() {
        let groups: Vec<_> = tls_provider().kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(groups.first(), Some(&rustls::NamedGroup::X25519MLKEM768));
        assert!(groups.contains(&rustls::NamedGroup::X25519));
        assert!(groups.contains(&rustls::NamedGroup::secp256r1));
    }

    /// What libraries that build their own rustls configuration (the Redis client) get.
    #[test]
    fn the_installed_default_is_the_same_provider() {
        install_default();
        let installed = rustls::crypto::CryptoProvider::get_default().expect("installed");
        let names = |p: &CryptoProvider| p.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>();
        assert_eq!(names(installed), names(&tls_provider()));
    }
}
