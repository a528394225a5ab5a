use super::*;

/// A header block as a client's encoder would send it (with the dynamic table and Huffman
/// coding where the encoder chooses them).
fn block(encoder: &mut loona_hpack::Encoder<'_>, fields: &[(&str, &str)]) -> Vec<u8> {
    encoder.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
}

fn decode(fields: &[(&str, &str)]) -> Result<RequestHead, BlockError> {
    let mut encoder = loona_hpack::Encoder::new();
    Decoder::new(16 << 10).request(&block(&mut encoder, fields))
}

const GET: [(&str, &str); 4] = [
    (":method", "GET"),
    (":scheme", "https"),
    (":authority", "api.example.com"),
    (":path", "/v1/items?page=2"),
];

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    GET.iter().chain(extra).copied().collect()
}

#[test]
fn a_request_reads_as_the_stages_want_it() {
    let head = decode(&with(&[
        ("x-api-key", "kg_sk_live_abc"),
        ("cookie", "a=1"),
        ("cookie", "b=2"),
        ("content-length", "0"),
        ("te", "trailers"),
    ]))
    .unwrap();
    assert_eq!(head.method(), Method::GET);
    assert_eq!(Head::path(&head), "/v1/items");
    assert_eq!(head.target(), "/v1/items?page=2");
    assert_eq!(head.scheme(), Some("https"));
    assert_eq!(head.authority(), Some("api.example.com"));
    assert_eq!(head.protocol(), None);
    assert_eq!(
        head.values("x-api-key").collect::<Vec<_>>(),
        [b"kg_sk_live_abc"]
    );
    // Cookie crumbs stay apart, as sent (§8.2.3); joining them is the forwarder's business.
    assert_eq!(
        head.values("cookie").collect::<Vec<_>>(),
        [&b"a=1"[..], b"b=2"]
    );
    assert_eq!(head.declared_length(), Some(0));
    // "GET /v1/items?page=2 HTTP/1.1\r\n" and five "name: value\r\n" lines.
    assert_eq!(head.head_len(), 31 + 27 + 13 + 13 + 19 + 14);
    assert_eq!(head.fields().count(), 5);
}

/// Header lists that are malformed requests, and what each breaks.
fn malformed_cases() -> Vec<(Vec<(&'static str, &'static str)>, BlockError)> {
    use BlockError::Malformed;
    vec![
        (
            with(&[("X-Api-Key", "k")]),
            Malformed("a field name that is not a lowercase token"),
        ),
        (
            with(&[("x api key", "k")]),
            Malformed("a field name that is not a lowercase token"),
        ),
        (
            with(&[("x-a:b", "k")]),
            Malformed("a field name that is not a lowercase token"),
        ),
        (
            with(&[("x-note", "a\r\nx-keygate-owner: me")]),
            Malformed("a field value with a control character"),
        ),
        (
            with(&[("x-note", "a\0b")]),
            Malformed("a field value with a control character"),
        ),
        (
            with(&[("x-note", " padded")]),
            Malformed("a field value that begins or ends with whitespace"),
        ),
        (
            with(&[("x-note", "padded\t")]),
            Malformed("a field value that begins or ends with whitespace"),
        ),
        (
            with(&[("connection", "close")]),
            Malformed("a connection-specific field"),
        ),
        (
            with(&[("transfer-encoding", "chunked")]),
            Malformed("a connection-specific field"),
        ),
        (
            with(&[("upgrade", "websocket")]),
            Malformed("a connection-specific field"),
        ),
        (
            with(&[("keep-alive", "5")]),
            Malformed("a connection-specific field"),
        ),
        (
            with(&[("proxy-connection", "keep-alive")]),
            Malformed("a connection-specific field"),
        ),
        (with(&[("te", "gzip")]), Malformed("TE other than trailers")),
        (
            with(&[("content-length", "5"), ("content-length", "6")]),
            Malformed("the request carries conflicting Content-Length values"),
        ),
        (
            with(&[("content-length", "-1")]),
            Malformed("Content-Length is malformed"),
        ),
        (
            with(&[("host", "other.example.com")]),
            Malformed("Host names another authority than :authority"),
        ),
        (
            with(&[("host", "api.example.com"), ("host", "api.example.com")]),
            Malformed("the request has more than one Host header"),
        ),
        (
            vec![
                (":method", "GET"),
                (":scheme", "https"),
                ("x-api-key", "k"),
                (":path", "/admin"),
            ],
            Malformed("a pseudo-header field after a regular field"),
        ),
        (
            vec![
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/public"),
                (":path", "/admin"),
            ],
            Malformed("a pseudo-header field twice"),
        ),
        (
            with(&[(":status", "200")]),
            Malformed("an unknown pseudo-header field"),
        ),
        (
            vec![(":method", "GET"), (":scheme", "https"), (":Path", "/")],
            Malformed("an unknown pseudo-header field"),
        ),
        (
            vec![
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/v1/a b"),
            ],
            Malformed("a pseudo-header field with a byte outside visible ASCII"),
        ),
        (
            vec![
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/v1/a\r\nx: y"),
            ],
            Malformed("a pseudo-header field with a byte outside visible ASCII"),
        ),
        (
            vec![
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "http://evil.example/admin"),
            ],
            Malformed(":path is not an origin-form target"),
        ),
        (
            vec![(":method", "GET"), (":scheme", "https"), (":path", "*")],
            Malformed(":path is not an origin-form target"),
        ),
        (
            vec![(":method", "GET"), (":scheme", "https"), (":path", "")],
            Malformed("no :path, or an empty one"),
        ),
        (
            vec![(":method", "GET"), (":scheme", "https")],
            Malformed("no :path, or an empty one"),
        ),
        (
            vec![(":method", "GET"), (":path", "/")],
            Malformed("no :scheme"),
        ),
        (
            vec![(":scheme", "https"), (":path", "/")],
            Malformed("no :method"),
        ),
        (
            vec![(":method", "G(T"), (":scheme", "https"), (":path", "/")],
            Malformed(":method is not a token"),
        ),
        (
            vec![
                (":method", "GET"),
                (":protocol", "websocket"),
                (":scheme", "https"),
                (":path", "/"),
            ],
            Malformed(":protocol on a request that is not a CONNECT"),
        ),
        (
            vec![
                (":method", "CONNECT"),
                (":authority", "a:443"),
                (":path", "/"),
            ],
            Malformed("a CONNECT with :scheme or :path"),
        ),
        (
            vec![(":method", "CONNECT")],
            Malformed("a CONNECT without :authority"),
        ),
    ]
}

#[test]
fn what_an_upstream_could_read_differently_is_malformed() {
    for (fields, want) in malformed_cases() {
        assert_eq!(decode(&fields).unwrap_err(), want, "{fields:?}");
    }
}

/// What hyper's HTTP/2 server (the `h2` crate), which serves keygate's HTTP/2 clients today,
/// makes of a request: taken, or refused (its stream reset or the connection ended). Sent as
/// raw frames, since the h2 client will not send a malformed request.
async fn h2_server_takes(fields: &[(&str, &str)]) -> bool {
    use crate::http2::frame::{PREFACE, Settings, write_headers, write_settings};
    use tokio::io::AsyncWriteExt;

    let (mut client_io, server_io) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move {
        let mut connection = h2::server::handshake(server_io).await.ok()?;
        let (request, _respond) = connection.accept().await?.ok()?;
        Some(request.uri().path().to_owned())
    });
    let mut encoder = loona_hpack::Encoder::new();
    let mut bytes = PREFACE.to_vec();
    write_settings(&mut bytes, &Settings::default());
    let first = block(&mut encoder, fields);
    write_headers(&mut bytes, 1, &first, true, 1 << 14);
    // A good request after it: if it is the first the server takes, the first was refused.
    let good = block(
        &mut encoder,
        &[(":method", "GET"), (":scheme", "https"), (":path", "/good")],
    );
    write_headers(&mut bytes, 3, &good, true, 1 << 14);
    client_io.write_all(&bytes).await.unwrap();
    let taken = tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("the h2 server answered")
        .unwrap();
    taken.is_some_and(|path| path != "/good")
}

/// keygate's reading is never more lenient than hyper's: every request the `h2` crate's
/// server refuses, keygate refuses. Where keygate is stricter, it is one of the rules RFC
/// 9113 states and the `h2` crate does not check (named here, so that a change on either
/// side shows).
#[tokio::test]
async fn no_request_hyper_s_server_refuses_is_taken_here() {
    // RFC 9113's rules the h2 crate does not check (§8.2.1 edge whitespace; §8.3.1 Host
    // against :authority, :path present and in origin form; §8.5 CONNECT's :authority).
    let stricter: &[&str] = &[
        "a field value that begins or ends with whitespace",
        "Host names another authority than :authority",
        "the request has more than one Host header",
        ":path is not an origin-form target",
        "no :path, or an empty one",
        "a CONNECT without :authority",
    ];
    let mut found_stricter = Vec::new();
    for (fields, want) in malformed_cases() {
        let hyper_takes = h2_server_takes(&fields).await;
        assert_eq!(decode(&fields).err(), Some(want.clone()), "{fields:?}");
        let BlockError::Malformed(reason) = want else {
            unreachable!()
        };
        if hyper_takes {
            found_stricter.push((reason, fields));
        }
    }
    let mut found: Vec<&str> = found_stricter.iter().map(|(r, _)| *r).collect();
    found.sort();
    found.dedup();
    let mut want = stricter.to_vec();
    want.sort();
    assert_eq!(
        found, want,
        "where hyper's server takes what keygate refuses: {found_stricter:#?}"
    );
    // And what both take.
    for fields in [
        with(&[("x-api-key", "k"), ("te", "trailers"), ("cookie", "a=1")]),
        with(&[("host", "api.example.com")]),
    ] {
        assert!(h2_server_takes(&fields).await, "{fields:?}");
        assert!(decode(&fields).is_ok(), "{fields:?}");
    }
}

#[test]
fn the_other_requests_rfc_9113_allows_read_as_meant() {
    // OPTIONS *, and Host standing for a missing :authority (§8.3.1).
    let head = decode(&[
        (":method", "OPTIONS"),
        (":scheme", "http"),
        (":path", "*"),
        ("host", "api.example.com"),
    ])
    .unwrap();
    assert_eq!(head.target(), "*");
    assert_eq!(head.authority(), Some("api.example.com"));

    // Host that agrees with :authority but for case.
    assert!(decode(&with(&[("host", "API.example.com")])).is_ok());

    // A WebSocket over HTTP/2 (RFC 8441).
    let head = decode(&[
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "https"),
        (":authority", "api.example.com"),
        (":path", "/v1/stream"),
    ])
    .unwrap();
    assert_eq!(head.method(), Method::CONNECT);
    assert_eq!(head.protocol(), Some("websocket"));

    // A plain CONNECT reads (keygate's stages refuse the method, with their own error).
    let head = decode(&[(":method", "CONNECT"), (":authority", "db.internal:5432")]).unwrap();
    assert_eq!(head.target(), "");
    assert_eq!(Head::path(&head), "");

    // Values may hold obs-text and inner whitespace; empty values are values.
    let head = decode(&with(&[("x-note", "caf\u{e9} au\tlait"), ("x-empty", "")])).unwrap();
    assert_eq!(
        head.values("x-note").next(),
        Some("caf\u{e9} au\tlait".as_bytes())
    );
    assert_eq!(head.values("x-empty").next(), Some(&b""[..]));
}

#[test]
fn a_header_list_over_the_limit_is_too_large_and_the_table_stays_in_step() {
    // :method GET, :scheme https, :path / (static), then two literals the client adds to the
    // dynamic table: x-small: v, x-big: 100 bytes. 124 + 42 + 137 bytes as §6.5.2 counts.
    let mut first = b"\x82\x87\x84\x40\x07x-small\x01v\x40\x05x-big\x64".to_vec();
    first.extend_from_slice(&[b'x'; 100]);
    let mut decoder = Decoder::new(200);
    assert_eq!(decoder.request(&first).unwrap_err(), BlockError::TooLarge);
    // The next block refers to x-small by its index in the table (63: x-big, added after it,
    // is 62), which holds only if the refused block was decoded whole.
    let head = decoder.request(b"\x82\x87\x84\xbf").unwrap();
    assert_eq!(head.values("x-small").collect::<Vec<_>>(), [b"v"]);
    assert_eq!(Head::path(&head), "/");

    // A malformed block, too, is decoded whole before it is refused.
    let mut decoder = Decoder::new(16 << 10);
    let malformed = b"\x82\x87\x84\x40\x0aconnection\x05close\x40\x07x-later\x01w";
    assert_eq!(
        decoder.request(malformed).unwrap_err(),
        BlockError::Malformed("a connection-specific field")
    );
    let head = decoder.request(b"\x82\x87\x84\xbe").unwrap();
    assert_eq!(head.values("x-later").collect::<Vec<_>>(), [b"w"]);
}

#[test]
fn a_block_that_does_not_decode_is_a_compression_error() {
    let mut decoder = Decoder::new(16 << 10);
    for bad in [
        // An index past both tables.
        &b"\xff\x7f"[..],
        // A literal whose length runs past the block.
        b"\x00\x05ab",
        // A table size update above the 4,096 bytes keygate allows.
        b"\x3f\xe1\x3f",
        // A table size update at the end of a block.
        b"\x82\x20",
    ] {
        assert!(
            matches!(decoder.request(bad), Err(BlockError::Compression(_))),
            "{bad:02x?}"
        );
    }
}

/// The `h2` crate's client (hyper's HPACK encoder, Huffman coding and its dynamic table)
/// sends two requests; both decode as it meant them.
#[tokio::test]
async fn requests_from_the_h2_crate_decode_as_sent() {
    use crate::http2::frame::Frame;

    let (client_io, mut server_io) = tokio::io::duplex(1 << 16);
    let client = tokio::spawn(async move {
        let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        for path in ["/v1/items?page=1", "/v1/items/7"] {
            let request = http::Request::get(format!("https://api.example.com{path}"))
                .header("x-api-key", "kg_sk_live_abcdefghijklmnopqrstuvwxyz")
                .header("accept", "application/json")
                .body(())
                .unwrap();
            let _response = client.send_request(request, true).unwrap();
        }
        // Kept open until the server has read both.
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut buf = Vec::new();
    let mut decoder = Decoder::new(16 << 10);
    let mut heads = Vec::new();
    for _ in 0..2 {
        let block = crate::http2::test_io::until(&mut server_io, &mut buf, deadline, |f| match f {
            Frame::Headers { block, .. } => Some(block.to_vec()),
            _ => None,
        })
        .await;
        heads.push(decoder.request(&block).unwrap());
    }
    client.abort();
    let read: Vec<_> = heads
        .iter()
        .map(|h| {
            (
                h.method().as_str().to_owned(),
                h.scheme().unwrap().to_owned(),
                h.authority().unwrap().to_owned(),
                h.target().to_owned(),
                h.values("x-api-key").next().unwrap().to_vec(),
                h.values("accept").next().unwrap().to_vec(),
            )
        })
        .collect();
    for (head, path) in read.iter().zip(["/v1/items?page=1", "/v1/items/7"]) {
        assert_eq!(
            head,
            &(
                "GET".to_owned(),
                "https".to_owned(),
                "api.example.com".to_owned(),
                path.to_owned(),
                b"kg_sk_live_abcdefghijklmnopqrstuvwxyz".to_vec(),
                b"application/json".to_vec(),
            )
        );
    }
}
