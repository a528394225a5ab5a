use super::*;

fn decoded(block: &[u8]) -> Vec<(String, String)> {
    loona_hpack::Decoder::new()
        .decode(block)
        .unwrap()
        .into_iter()
        .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_response_decodes_as_given_with_names_in_lowercase() {
    let long_name = "x-".to_owned() + &"n".repeat(200);
    let long_value = "v".repeat(300);
    let mut out = Vec::new();
    encode(
        &mut out,
        429,
        [
            ("Content-Type", "application/json"),
            ("X-RateLimit-Remaining", "0"),
            ("retry-after", "1"),
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
            (long_name.as_str(), long_value.as_str()),
            ("x-empty", ""),
        ],
    );
    assert_eq!(
        decoded(&out),
        pairs(&[
            (":status", "429"),
            ("content-type", "application/json"),
            ("x-ratelimit-remaining", "0"),
            ("retry-after", "1"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            (long_name.as_str(), long_value.as_str()),
            ("x-empty", ""),
        ])
    );
    // A status with an entry of its own is one byte; a name's index past 14 two.
    let mut out = Vec::new();
    encode(&mut out, 200, [("server", "keygate")]);
    assert_eq!(&out[..3], [0x88, 0x0f, 54 - 15], "{out:02x?}");
}

#[test]
fn every_status_and_every_static_name_decode_as_meant() {
    for status in 100..1000u16 {
        let mut out = Vec::new();
        encode(&mut out, status, [] as [(&str, &str); 0]);
        assert_eq!(
            decoded(&out),
            pairs(&[(":status", &status.to_string())]),
            "{status}"
        );
    }
    // The table here against the decoder's own copy of RFC 7541 Appendix A.
    for name in &NAMES[14..] {
        let mut out = Vec::new();
        encode(&mut out, 200, [(name.to_ascii_uppercase(), "v")]);
        assert_eq!(
            decoded(&out),
            pairs(&[(":status", "200"), (name, "v")]),
            "{name}"
        );
        assert!(out.len() <= 1 + 2 + 2, "{name} by its index: {out:02x?}");
    }
}

/// The `h2` crate's client reads a response whose head this module encoded (and whose frames
/// `frame` wrote) as it was meant.
#[tokio::test]
async fn the_h2_crate_reads_the_response_as_encoded() {
    use crate::http2::frame::{self, Frame};
    use tokio::io::AsyncWriteExt;

    let (client_io, mut server_io) = tokio::io::duplex(1 << 16);
    let client = tokio::spawn(async move {
        let (mut client, connection) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(connection);
        let request = http::Request::get("https://api.example.com/v1/items")
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(piece) = body.data().await {
            let piece = piece.unwrap();
            body.flow_control().release_capacity(piece.len()).unwrap();
            bytes.extend_from_slice(&piece);
        }
        (status, headers, bytes)
    });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut buf = Vec::new();
    let stream = crate::http2::test_io::until(&mut server_io, &mut buf, deadline, |f| match f {
        Frame::Headers { stream, .. } => Some(stream),
        _ => None,
    })
    .await;
    let mut out = Vec::new();
    frame::write_settings(&mut out, &frame::Settings::default());
    frame::write_settings_ack(&mut out);
    let mut block = Vec::new();
    encode(
        &mut block,
        201,
        [
            ("Content-Type", "application/json"),
            ("Location", "/v1/items/7"),
            ("X-RateLimit-Limit", "1000"),
            ("Content-Length", "11"),
        ],
    );
    frame::write_headers(
        &mut out,
        stream,
        &block,
        false,
        frame::DEFAULT_MAX_FRAME_SIZE,
    );
    frame::write_data_header(&mut out, stream, 11, true);
    out.extend_from_slice(b"{\"id\":\"7\"}\n");
    server_io.write_all(&out).await.unwrap();

    let (status, headers, body) = tokio::time::timeout_at(deadline, client)
        .await
        .expect("the client finished")
        .unwrap();
    assert_eq!(status, http::StatusCode::CREATED);
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        headers,
        pairs(&[
            ("content-type", "application/json"),
            ("location", "/v1/items/7"),
            ("x-ratelimit-limit", "1000"),
            ("content-length", "11"),
        ])
    );
    assert_eq!(body, b"{\"id\":\"7\"}\n");
}
