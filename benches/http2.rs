//! What keygate's own HTTP/2 layers (`src/http2`) cost per request, without I/O and without
//! the request path's stages: `cargo bench --bench http2`.
//!
//! One connection serves request after request as h2load sends them: a HEADERS frame whose
//! block refers to the dynamic table the first request filled (method, scheme, path,
//! authority, the API key, user-agent), read and decoded into a `RequestHead`; then a response
//! head such as keygate sends (status, content type and length, date, the five rate-limit
//! headers) encoded, and its HEADERS and a 16-byte DATA frame written. The bench/RESULTS.md
//! entry of 2026-12-07 puts the figure beside the user-space CPU per request of keygate's
//! HTTP/1.1 engine and of hyper's HTTP/2.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use keygate::http2::connection::{Connection, Event, Limits, Step};
use keygate::http2::frame::{self, Settings};
use keygate::http2::response;

/// A literal field added to the table (RFC 7541 §6.2.1), its name indexed or new.
fn indexed_literal(out: &mut Vec<u8>, name_index: u8, name: &str, value: &str) {
    if name_index > 0 {
        out.push(0x40 | name_index);
    } else {
        out.push(0x40);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
    }
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

fn connection() -> Connection {
    let mut conn = Connection::new(Limits::default());
    let mut start = frame::PREFACE.to_vec();
    frame::write_settings(&mut start, &Settings::default());
    // As h2load does: the connection's window opened wide at the start (16 bytes a response
    // leave it open for 134 million).
    frame::write_window_update(&mut start, 0, frame::MAX_WINDOW - 65_535);
    let mut at = 0;
    while at < start.len() {
        let Ok(Step::Took { len, .. }) = conn.read(&start[at..]) else {
            panic!("the start is refused");
        };
        at += len;
    }
    conn.output().clear();
    conn
}

fn serve(conn: &mut Connection, bytes: &[u8], limits: &[(&str, &str)]) {
    let (stream, head) = match conn.read(bytes) {
        Ok(Step::Took {
            event: Some(Event::Request { stream, head, .. }),
            ..
        }) => (stream, head),
        other => panic!("no request: {other:?}, {:02x?}", conn.output()),
    };
    black_box(&head);
    let mut block = Vec::with_capacity(256);
    response::encode(
        &mut block,
        200,
        [
            ("content-type", "application/json"),
            ("content-length", "16"),
            ("date", "Mon, 07 Dec 2026 22:00:00 GMT"),
        ]
        .into_iter()
        .chain(limits.iter().copied()),
    );
    conn.send_headers(stream, &block, false);
    conn.send_data(stream, b"{\"ok\":true}\n    ", true);
    black_box(conn.output()).clear();
}

fn requests(c: &mut Criterion) {
    let limits = [
        ("x-ratelimit-limit", "1000000"),
        ("x-ratelimit-remaining", "999999"),
        ("x-ratelimit-reset", "1"),
        ("ratelimit", "\"default\";r=999999;t=1"),
        ("ratelimit-policy", "\"default\";q=1000000;w=1"),
    ];
    // The first request fills the table; every later one refers to it (indices 62-65).
    let mut first = vec![0x83, 0x86];
    indexed_literal(&mut first, 4, "", "/v1/resource");
    indexed_literal(&mut first, 1, "", "127.0.0.1:8600");
    indexed_literal(
        &mut first,
        0,
        "x-api-key",
        "kg_sk_live_0123456789abcdefghijklmnopqr",
    );
    indexed_literal(&mut first, 58, "", "h2load nghttp2/1.52.0");
    let later = [0x83, 0x86, 0xc1, 0xc0, 0xbf, 0xbe];

    let mut conn = connection();
    let mut frame_bytes = Vec::new();
    frame::write_headers(&mut frame_bytes, 1, &first, true, 1 << 14);
    serve(&mut conn, &frame_bytes, &limits);
    let mut stream = 1u32;
    c.bench_function("http2 request in, response out (no I/O, no stages)", |b| {
        b.iter(|| {
            stream += 2;
            if stream > (1 << 30) {
                conn = connection();
                let mut bytes = Vec::new();
                frame::write_headers(&mut bytes, 1, &first, true, 1 << 14);
                serve(&mut conn, &bytes, &limits);
                stream = 3;
            }
            frame_bytes.clear();
            frame::write_headers(&mut frame_bytes, stream, &later, true, 1 << 14);
            serve(&mut conn, &frame_bytes, &limits);
        })
    });
}

criterion_group!(benches, requests);
criterion_main!(benches);
