//! A response's header block for the client, HPACK-encoded (RFC 7541).
//!
//! The encoder keeps no state: it refers to the static table only (RFC 7541 Appendix A) and
//! sends every other name and every value as a literal that is not added to the dynamic table
//! (§6.2.2), so nothing the client's SETTINGS_HEADER_TABLE_SIZE says can put the two ends out
//! of step, and no table has to be kept per connection. What it costs is bytes: a response's
//! repeated fields (`content-type`, the rate-limit policy) go out whole each time, and without
//! Huffman coding. Whether indexing them pays for its CPU is for the benchmark to say once the
//! engine serves.
//!
//! The caller gives the fields the client may see (the rulebook's `to_client` decided that);
//! names are written in lowercase, as HTTP/2 requires (RFC 9113 §8.2.1), whatever case the
//! upstream's HTTP/1.1 head used.

/// The static table's names (RFC 7541 Appendix A), index 1 first. Entries that repeat a name
/// (`:method`, `:path`, `:scheme`, `:status`) list it at its first index; the `:status` values
/// that have an entry of their own are in [`STATUS`].
const NAMES: [&str; 61] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

/// The `:status` entries of the static table: (status, index).
const STATUS: [(u16, u8); 7] = [
    (200, 8),
    (204, 9),
    (206, 10),
    (304, 11),
    (400, 12),
    (404, 13),
    (500, 14),
];

/// The index of `:status` as a name.
const STATUS_NAME: usize = 8;

/// Appends the header block of a response: `status` (100–999), then `fields` (name, value).
pub fn encode<N, V>(out: &mut Vec<u8>, status: u16, fields: impl IntoIterator<Item = (N, V)>)
where
    N: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    debug_assert!((100..1000).contains(&status));
    match STATUS.iter().find(|(s, _)| *s == status) {
        // §6.1: an indexed field.
        Some(&(_, index)) => out.push(0x80 | index),
        None => {
            // §6.2.2, indexed name: `:status` and its three digits.
            integer(out, 0x00, 4, STATUS_NAME);
            let digits = [
                b'0' + (status / 100) as u8,
                b'0' + (status / 10 % 10) as u8,
                b'0' + (status % 10) as u8,
            ];
            string(out, &digits);
        }
    }
    for (name, value) in fields {
        let (name, value) = (name.as_ref(), value.as_ref());
        match static_name(name) {
            Some(index) => integer(out, 0x00, 4, index),
            None => {
                // §6.2.2, new name.
                out.push(0x00);
                integer(out, 0x00, 7, name.len());
                out.extend(name.iter().map(u8::to_ascii_lowercase));
            }
        }
        string(out, value);
    }
}

/// A dynamic table size update (RFC 7541 §6.3), which must begin a header block.
pub fn table_size_update(out: &mut Vec<u8>, size: u32) {
    integer(out, 0x20, 5, size as usize);
}

/// The static table's index of `name` (any case), for regular fields.
fn static_name(name: &[u8]) -> Option<usize> {
    // Pseudo-header names are never a response's regular fields; skip their 14 entries.
    NAMES[14..]
        .iter()
        .position(|n| n.as_bytes().eq_ignore_ascii_case(name))
        .map(|i| i + 15)
}

/// An integer with an `n`-bit prefix (RFC 7541 §5.1), its first byte's high bits `flags`.
fn integer(out: &mut Vec<u8>, flags: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A string literal, not Huffman-coded (RFC 7541 §5.2).
fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    integer(out, 0x00, 7, bytes.len());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests;
