//! One client header block: decoded with the connection's HPACK state, its
//! `:authority` made acceptable to the server, and encoded again so that
//! the server's HPACK state never changes.

use std::borrow::Cow;

use loona_hpack::Decoder;
use loona_hpack::decoder::DecoderError;

/// The dynamic table size the server's decoder allows. tonic does not set
/// SETTINGS_HEADER_TABLE_SIZE, so h2 keeps the protocol's default; a client
/// may shrink its table below this (a dynamic table size update), never
/// grow it past.
pub(crate) const SERVER_HEADER_TABLE_SIZE: usize = 4096;

/// What replaces an `:authority` the server would refuse: what grpc-go and
/// kubernetes' clients send on Unix sockets, so the server sees what it
/// would have seen from them.
const LOCALHOST: &[u8] = b"localhost";

/// Why a header block could not be rewritten. Either way the connection's
/// HPACK state can no longer be trusted, so the connection must end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BlockError {
    #[error("its HPACK header block does not decode ({0:?})")]
    Hpack(DecoderError),
    #[error(
        "its header list is over {max} bytes (name + value + 32 per field); send less metadata"
    )]
    ListTooLarge { max: usize },
}

/// A re-encoded header block.
#[derive(Debug)]
pub(crate) struct Rewritten {
    pub(crate) block: Vec<u8>,
    pub(crate) authority_replaced: bool,
}

/// The decoding half of one connection's HPACK context, and the encoder
/// that keeps the server's half empty.
pub(crate) struct BlockCodec {
    decoder: Decoder<'static>,
    max_list: usize,
}

impl BlockCodec {
    /// A codec refusing header lists over `max_list` bytes, counted as
    /// RFC 9113 counts SETTINGS_MAX_HEADER_LIST_SIZE.
    pub(crate) fn new(max_list: usize) -> BlockCodec {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(SERVER_HEADER_TABLE_SIZE);
        BlockCodec { decoder, max_list }
    }

    /// Decodes `block` (which updates the client's dynamic table as the
    /// client meant) and encodes every field again as a literal without
    /// indexing: the server's dynamic table stays empty, so no later block
    /// can refer to an entry that only the client has.
    pub(crate) fn rewrite(&mut self, block: &[u8]) -> Result<Rewritten, BlockError> {
        let max = self.max_list;
        let mut out = Vec::with_capacity(block.len().saturating_mul(2).min(max));
        let mut size = 0usize;
        let mut over = false;
        let mut authority_replaced = false;
        // The whole block is decoded even past the limit: the dynamic
        // table must end where the client's encoder thinks it is.
        self.decoder
            .decode_with_cb(block, |name: Cow<'_, [u8]>, value: Cow<'_, [u8]>| {
                size = size.saturating_add(name.len() + value.len() + 32);
                over |= size > max;
                if over {
                    return;
                }
                let value: &[u8] = if *name == *b":authority" && !server_accepts(&value) {
                    authority_replaced = true;
                    LOCALHOST
                } else {
                    &value
                };
                encode_literal(&mut out, &name, value);
            })
            .map_err(BlockError::Hpack)?;
        if over {
            return Err(BlockError::ListTooLarge { max });
        }
        Ok(Rewritten { block: out, authority_replaced })
    }
}

/// Whether h2 takes this `:authority`: it parses it as an
/// `http::uri::Authority` and resets the stream if that fails.
fn server_accepts(authority: &[u8]) -> bool {
    http::uri::Authority::try_from(authority).is_ok()
}

/// A literal header field without indexing, with a literal name and raw
/// (not Huffman) strings: RFC 7541 section 6.2.2. Size is no concern on a
/// local socket; the server's table must never change.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    encode_string(out, name);
    encode_string(out, value);
}

/// A string literal: its length as an integer with a 7-bit prefix (the H
/// bit clear), then its octets.
fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    const PREFIX_MAX: usize = 0x7f;
    let mut n = s.len();
    if n < PREFIX_MAX {
        out.push(n as u8);
    } else {
        out.push(PREFIX_MAX as u8);
        n -= PREFIX_MAX;
        while n >= 0x80 {
            out.push((n & 0x7f) as u8 | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn decode_fresh(block: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        Decoder::new().decode(block).expect("the rewritten block decodes without any table")
    }

    /// A gRPC request's fields, with this `:authority`.
    pub(crate) fn request(authority: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/netdb.api.v1.Netdb/Members"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
    }

    fn encode(enc: &mut loona_hpack::Encoder<'_>, h: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    #[test]
    fn a_bad_authority_becomes_localhost_and_the_rest_is_kept() {
        let mut codec = BlockCodec::new(64 * 1024);
        let mut enc = loona_hpack::Encoder::new();
        let sent = request("run%2Fnetdb%2Fnetdb.sock");
        let r = codec.rewrite(&encode(&mut enc, &sent)).unwrap();
        assert!(r.authority_replaced);
        let mut want = request("localhost");
        assert_eq!(decode_fresh(&r.block), want);
        // A path as grpc-java sends it is refused by h2 too.
        let r = codec.rewrite(&encode(&mut enc, &request("/run/netdb/netdb.sock"))).unwrap();
        assert!(r.authority_replaced);
        assert_eq!(decode_fresh(&r.block), want);
        want = request("localhost:50051");
        let r = codec.rewrite(&encode(&mut enc, &want)).unwrap();
        assert!(!r.authority_replaced, "a valid authority is kept");
        assert_eq!(decode_fresh(&r.block), want);
    }

    /// Every field as a literal with incremental indexing (new name).
    fn indexing(h: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (n, v) in h {
            b.push(0x40);
            encode_string(&mut b, n);
            encode_string(&mut b, v);
        }
        b
    }

    #[test]
    fn dynamic_table_references_across_blocks_decode_as_the_client_meant() {
        let mut codec = BlockCodec::new(64 * 1024);
        let sent = request("run%2Fnetdb%2Fnetdb.sock");
        let n = sent.len() as u8;
        // The first block fills the client's table; the newest entry is
        // index 62, so field i of `sent` is 62 + (n - 1 - i).
        let first = indexing(&sent);
        let second: Vec<u8> = (0..n).map(|i| 0x80 | (62 + n - 1 - i)).collect();
        let mut other = sent.clone();
        other.push((b"x-trace".to_vec(), b"abc".to_vec()));
        let mut third = second.clone();
        third.extend(indexing(&other[sent.len()..]));
        // The new entry shifts the rest: the fourth block's first field is
        // now one further down.
        let fourth: Vec<u8> = (0..=n).map(|i| 0x80 | (62 + n - i)).collect();
        for (block, want) in [(first, &sent), (second, &sent), (third, &other), (fourth, &other)] {
            let r = codec.rewrite(&block).unwrap();
            assert!(r.authority_replaced);
            let got = decode_fresh(&r.block);
            assert_eq!(got.len(), want.len());
            for ((gn, gv), (wn, wv)) in got.iter().zip(want.iter()) {
                assert_eq!(gn, wn);
                if gn == b":authority" {
                    assert_eq!(gv, b"localhost");
                } else {
                    assert_eq!(gv, wv);
                }
            }
        }
    }

    #[test]
    fn table_size_updates_are_honoured_and_bounded() {
        let mut codec = BlockCodec::new(64 * 1024);
        let mut enc = loona_hpack::Encoder::new();
        let sent = request("localhost");
        let _ = codec.rewrite(&encode(&mut enc, &sent)).unwrap();
        // The client empties its table (size update to 0, then back to
        // 4096) and then refers to index 62, which no longer exists.
        let mut block = vec![0x20, 0x3f, 0xe1, 0x1f];
        block.push(0x80 | 62);
        assert!(matches!(
            codec.rewrite(&block),
            Err(BlockError::Hpack(DecoderError::HeaderIndexOutOfBounds))
        ));
        // Growing past the server's SETTINGS_HEADER_TABLE_SIZE is refused.
        let mut codec = BlockCodec::new(64 * 1024);
        let block = [0x3f, 0xe2, 0x1f, 0x82];
        assert!(matches!(
            codec.rewrite(&block),
            Err(BlockError::Hpack(DecoderError::InvalidMaxDynamicSize))
        ));
    }

    #[test]
    fn a_header_list_amplified_through_the_table_is_refused() {
        let mut codec = BlockCodec::new(64 * 1024);
        let mut enc = loona_hpack::Encoder::new();
        let big = vec![(b"x-big".to_vec(), vec![b'a'; 3000])];
        let _ = codec.rewrite(&encode(&mut enc, &big)).unwrap();
        // 100 one-byte references to a 3 KB entry: 300 KB decoded.
        let refs = vec![0x80 | 62u8; 100];
        assert!(matches!(codec.rewrite(&refs), Err(BlockError::ListTooLarge { .. })));
        // The table is still in step: a single reference works.
        let r = codec.rewrite(&[0x80 | 62]).unwrap();
        assert_eq!(decode_fresh(&r.block), big);
    }

    #[test]
    fn long_strings_use_multi_byte_lengths() {
        let mut codec = BlockCodec::new(64 * 1024);
        for len in [126, 127, 128, 255, 16_383, 16_384, 40_000] {
            let h = vec![(b"x-len".to_vec(), vec![b'v'; len])];
            let block = loona_hpack::Encoder::new().encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
            let r = codec.rewrite(&block).unwrap();
            assert_eq!(decode_fresh(&r.block), h, "len {len}");
        }
    }
}
