//! TLS termination on the public listener: rustls with ALPN `h2` + `http/1.1`, TLS 1.2 or
//! newer, and a certificate that can be swapped while connections stay open.
//!
//! The acceptor's `ServerConfig` never changes; it asks a [`Certificates`] resolver for the
//! current certificate on each handshake. A reload parses and checks the new pair completely
//! (PEM, key type, key matches certificate) before swapping, so a half-written or broken file
//! leaves the old certificate serving. Live connections keep the session they negotiated.
//!
//! Session resumption is on: a client that comes back skips the certificate signature and
//! key exchange of a full handshake. Resumption is by ticket (TLS 1.3 and 1.2), sealed with
//! keys rustls rotates every 6 hours, so it costs the server no memory per client however many
//! clients there are; a ticket from one sidecar is not valid at another (each has its own
//! keys), and a restart starts fresh, which only costs those clients one full handshake.
//! Clients that do not take tickets resume from a cache of [`SESSION_CACHE`] sessions.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Tls, TlsVersion};
use crate::crypto;

/// What a completed handshake negotiated, as `keygate_tls_handshakes_total` labels it: from a
/// closed set of words, so a client cannot grow the metric's series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    pub version: &'static str,
    /// The key-exchange group; "none" for a resumed TLS 1.2 session, which runs none.
    pub group: &'static str,
    pub resumed: bool,
}

impl Handshake {
    pub fn of(conn: &rustls::ServerConnection) -> Self {
        Self::from_parts(
            conn.protocol_version(),
            conn.negotiated_key_exchange_group().map(|g| g.name()),
            conn.handshake_kind(),
        )
    }

    fn from_parts(
        version: Option<rustls::ProtocolVersion>,
        group: Option<rustls::NamedGroup>,
        kind: Option<rustls::HandshakeKind>,
    ) -> Self {
        use rustls::{NamedGroup, ProtocolVersion};
        let version = match version {
            Some(ProtocolVersion::TLSv1_3) => "1.3",
            Some(ProtocolVersion::TLSv1_2) => "1.2",
            _ => "other",
        };
        let group = match group {
            Some(NamedGroup::X25519MLKEM768) => "X25519MLKEM768",
            Some(NamedGroup::X25519) => "X25519",
            Some(NamedGroup::secp256r1) => "secp256r1",
            Some(NamedGroup::secp384r1) => "secp384r1",
            Some(_) => "other",
            None => "none",
        };
        let resumed = kind == Some(rustls::HandshakeKind::Resumed);
        Self {
            version,
            group,
            resumed,
        }
    }
}

/// Sessions kept for TLS 1.2 clients without ticket support (a few hundred bytes each).
const SESSION_CACHE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls.cert {path}: {message}")]
    Cert { path: String, message: String },
    #[error("tls.key {path}: {message}")]
    Key { path: String, message: String },
    #[error("tls.key does not belong to tls.cert: {0}")]
    Mismatch(String),
}

/// The certificate handshakes are answered with; replaced by [`Certificates::reload`].
#[derive(Debug)]
pub struct Certificates {
    current: ArcSwap<CertifiedKey>,
    /// What the files looked like when last loaded, to notice a change without re-parsing.
    stamp: std::sync::Mutex<FileStamp>,
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Modification time and length of the certificate and key files.
type FileStamp = [(Option<SystemTime>, u64); 2];

fn stamp(tls: &Tls) -> FileStamp {
    [&tls.cert, &tls.key].map(|p| match std::fs::metadata(p) {
        Ok(m) => (m.modified().ok(), m.len()),
        Err(_) => (None, 0),
    })
}

impl Certificates {
    pub fn load(tls: &Tls) -> Result<Arc<Self>, TlsError> {
        let stamp_now = stamp(tls);
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(load_pair(&tls.cert, &tls.key)?),
            stamp: std::sync::Mutex::new(stamp_now),
        }))
    }

    /// Loads the pair again; on any error the current certificate stays.
    pub fn reload(&self, tls: &Tls) -> Result<(), TlsError> {
        let stamp_now = stamp(tls);
        let pair = load_pair(&tls.cert, &tls.key)?;
        self.current.store(Arc::new(pair));
        *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) = stamp_now;
        Ok(())
    }

    /// Whether either file changed since the last load (or failed load attempt is pending).
    pub fn changed_on_disk(&self, tls: &Tls) -> bool {
        let last = *self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        stamp(tls) != last
    }

    /// Remembers the files' current state after a failed reload, so a broken file is
    /// reported once rather than on every watch tick; the next write retries.
    pub fn mark_seen(&self, tls: &Tls) {
        *self.stamp.lock().unwrap_or_else(|e| e.into_inner()) = stamp(tls);
    }
}

/// The rustls acceptor for `tls`, answering with `certificates`.
pub fn acceptor(tls: &Tls, certificates: Arc<Certificates>) -> tokio_rustls::TlsAcceptor {
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = rustls::ServerConfig::builder_with_provider(crypto::tls_provider())
        .with_protocol_versions(versions)
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    match crypto::ticketer() {
        Ok(ticketer) => config.ticketer = ticketer,
        // Only when the system's random source fails; resumption then uses the cache alone.
        Err(e) => tracing::warn!(error = %e, "TLS session tickets off"),
    }
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

fn load_pair(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        path: cert_path.display().to_string(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(format!("not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err(
            "holds no CERTIFICATE block; expected the PEM chain, leaf first".into(),
        ));
    }
    // The key file's error never quotes the file: it is a secret.
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| TlsError::Key {
        path: key_path.display().to_string(),
        message: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "holds no PRIVATE KEY block (PKCS#8, PKCS#1 or SEC1 PEM expected)".into()
            }
            rustls_pki_types::pem::Error::Io(io) => io.to_string(),
            _ => "not a valid PEM private key".into(),
        },
    })?;
    CertifiedKey::from_der(chain, key, &crypto::tls_provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch(e.to_string()),
        other => TlsError::Key {
            path: key_path.display().to_string(),
            message: format!("unusable private key: {other}"),
        },
    })
}

#[cfg(test)]
mod tests {
    use rustls::{HandshakeKind, NamedGroup, ProtocolVersion};

    use super::Handshake;

    #[test]
    fn handshakes_are_labelled_from_a_closed_set() {
        let h = |v, g, k| Handshake::from_parts(v, g, k);
        let full = Some(HandshakeKind::Full);
        let tls13 = Some(ProtocolVersion::TLSv1_3);
        // (version, group, kind) -> (version, group, resumed)
        let cases = [
            (
                h(tls13, Some(NamedGroup::X25519MLKEM768), full),
                ("1.3", "X25519MLKEM768", false),
            ),
            (
                h(tls13, Some(NamedGroup::X25519), full),
                ("1.3", "X25519", false),
            ),
            (
                h(
                    tls13,
                    Some(NamedGroup::secp256r1),
                    Some(HandshakeKind::FullWithHelloRetryRequest),
                ),
                ("1.3", "secp256r1", false),
            ),
            (
                h(
                    tls13,
                    Some(NamedGroup::secp384r1),
                    Some(HandshakeKind::Resumed),
                ),
                ("1.3", "secp384r1", true),
            ),
            // A TLS 1.2 resumption runs no key exchange.
            (
                h(
                    Some(ProtocolVersion::TLSv1_2),
                    None,
                    Some(HandshakeKind::Resumed),
                ),
                ("1.2", "none", true),
            ),
            // Whatever else a peer could bring stays one series.
            (
                h(tls13, Some(NamedGroup::Unknown(0x1234)), full),
                ("1.3", "other", false),
            ),
            (
                h(tls13, Some(NamedGroup::MLKEM1024), full),
                ("1.3", "other", false),
            ),
            (
                h(Some(ProtocolVersion::TLSv1_1), None, None),
                ("other", "none", false),
            ),
        ];
        for (got, (version, group, resumed)) in cases {
            assert_eq!(
                got,
                Handshake {
                    version,
                    group,
                    resumed
                }
            );
        }
    }
}
