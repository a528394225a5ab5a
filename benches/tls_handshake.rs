//! What the hybrid post-quantum key exchange costs keygate's TLS server (`keygate::crypto`):
//! the server's side of each key-exchange group a client may choose (rustls's
//! `start_and_complete`, what keygate runs once per full handshake), and whole TLS 1.3
//! handshakes, client and server in one thread over memory, with X25519 and X25519MLKEM768:
//! `cargo bench --bench tls_handshake`. The certificate is ECDSA P-256, as in bench/run.sh.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConnection, NamedGroup, ServerConnection};

const GROUPS: [NamedGroup; 3] = [
    NamedGroup::X25519,
    NamedGroup::secp256r1,
    NamedGroup::X25519MLKEM768,
];

fn group(name: NamedGroup) -> &'static dyn rustls::crypto::SupportedKxGroup {
    *rustls::crypto::aws_lc_rs::ALL_KX_GROUPS
        .iter()
        .find(|g| g.name() == name)
        .expect("aws-lc-rs has every group benchmarked here")
}

fn server_key_exchange(c: &mut Criterion) {
    for name in GROUPS {
        let g = group(name);
        let client_share = g.start().unwrap().pub_key().to_vec();
        c.bench_function(&format!("server key exchange, {name:?}"), |b| {
            b.iter(|| g.start_and_complete(black_box(&client_share)).unwrap())
        });
    }
}

/// A server config as keygate builds it (its provider, TLS 1.3, one ECDSA P-256 certificate)
/// and a client trusting that certificate that offers only `name`.
fn configs(name: NamedGroup) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let server = rustls::ServerConfig::builder_with_provider(keygate::crypto::tls_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let mut provider = (*keygate::crypto::tls_provider()).clone();
    provider.kx_groups = vec![group(name)];
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

/// One full handshake over memory; panics unless both sides finish with `name`.
fn handshake(
    server: &Arc<rustls::ServerConfig>,
    client: &Arc<rustls::ClientConfig>,
    name: NamedGroup,
) {
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut c =
        ClientConnection::new(client.clone(), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut wire = Vec::with_capacity(8192);
    while c.is_handshaking() || s.is_handshaking() {
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        let mut from_client = &wire[..];
        while !from_client.is_empty() {
            s.read_tls(&mut from_client).unwrap();
        }
        wire.clear();
        s.process_new_packets().unwrap();
        while s.wants_write() {
            s.write_tls(&mut wire).unwrap();
        }
        let mut from_server = &wire[..];
        while !from_server.is_empty() {
            c.read_tls(&mut from_server).unwrap();
        }
        wire.clear();
        c.process_new_packets().unwrap();
    }
    let got = s.negotiated_key_exchange_group().map(|g| g.name());
    assert_eq!(got, Some(name));
}

fn whole_handshakes(c: &mut Criterion) {
    for name in [NamedGroup::X25519, NamedGroup::X25519MLKEM768] {
        let (server, client) = configs(name);
        c.bench_function(&format!("TLS 1.3 handshake, both sides, {name:?}"), |b| {
            b.iter(|| handshake(&server, &client, name))
        });
    }
}

criterion_group!(benches, server_key_exchange, whole_handshakes);
criterion_main!(benches);
