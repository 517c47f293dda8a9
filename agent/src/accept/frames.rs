//! The client-to-server HTTP/2 byte stream, frame by frame: header blocks
//! (HEADERS and its CONTINUATION frames) are rewritten by `block`, every
//! other frame passes through byte for byte. Sans-IO: bytes in, bytes out.

use bytes::{BufMut, BytesMut};

use super::block::{BlockCodec, BlockError};

/// The client connection preface (RFC 9113 section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;

const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// What the rewriter accepts from a client. Each bound is one the server
/// (tonic with its defaults, hence h2's and hyper's) enforces itself, so
/// nothing a working client sends is refused here that the server would
/// have taken.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The server's SETTINGS_MAX_FRAME_SIZE (h2's default, 16,384, which
    /// tonic keeps): no larger frame may come in, and none goes out.
    pub(crate) max_frame: usize,
    /// Encoded bytes of one header block, all its frames together.
    pub(crate) max_block: usize,
    /// Decoded size of one header list. hyper advertises 16 KiB and h2
    /// answers larger lists with 431 but keeps the connection up to four
    /// times that; past it h2 ends the connection, and so does this.
    pub(crate) max_list: usize,
    /// CONTINUATION frames in one header block (empty ones cost nothing to
    /// send and are a known flood).
    pub(crate) max_continuations: usize,
}

impl Limits {
    /// The bounds that match tonic's server defaults.
    pub(crate) const TONIC_DEFAULTS: Limits = Limits {
        max_frame: 16_384,
        max_block: 64 * 1024,
        max_list: 64 * 1024,
        max_continuations: 16,
    };
}

/// Why a connection is ended: what the client sent, in words a client
/// author can act on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("a {len}-byte frame, over the {max}-byte SETTINGS_MAX_FRAME_SIZE")]
    FrameTooLarge { len: usize, max: usize },
    #[error("a header block over {max} bytes; send less metadata")]
    BlockTooLarge { max: usize },
    #[error("a header block in more than {max} CONTINUATION frames")]
    TooManyContinuations { max: usize },
    #[error("a malformed frame: {0}")]
    Malformed(&'static str),
    #[error("a header block the agent cannot forward: {0}")]
    Block(#[from] BlockError),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Waiting for the whole connection preface.
    Preface,
    Frames,
    /// Not HTTP/2 with prior knowledge: the server refuses it on its own,
    /// so it is handed over unchanged.
    Transparent,
}

/// A HEADERS frame waiting for its CONTINUATION frames.
struct Pending {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
    continuations: usize,
}

/// The rewriter for one connection.
pub(crate) struct Rewriter {
    phase: Phase,
    /// Payload bytes of a passed-through frame not yet copied.
    passthrough: usize,
    pending: Option<Pending>,
    codec: BlockCodec,
    limits: Limits,
    authorities_replaced: u64,
}

struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

impl FrameHead {
    fn parse(b: &[u8; FRAME_HEADER_LEN]) -> FrameHead {
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = *b;
        FrameHead {
            len: u32::from_be_bytes([0, l0, l1, l2]) as usize,
            kind,
            flags,
            stream: u32::from_be_bytes([s0, s1, s2, s3]) & 0x7fff_ffff,
        }
    }
}

impl Rewriter {
    pub(crate) fn new(limits: Limits) -> Rewriter {
        Rewriter {
            phase: Phase::Preface,
            passthrough: 0,
            pending: None,
            codec: BlockCodec::new(limits.max_list),
            limits,
            authorities_replaced: 0,
        }
    }

    /// How many `:authority` values were replaced so far.
    pub(crate) fn authorities_replaced(&self) -> u64 {
        self.authorities_replaced
    }

    /// Moves what it can from `input` to `out`; an incomplete header frame
    /// stays in `input` until more arrives. After an error the connection
    /// must end: the HPACK state or the framing is lost.
    pub(crate) fn feed(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> Result<(), Refusal> {
        loop {
            match self.phase {
                Phase::Transparent => {
                    out.unsplit(input.split());
                    return Ok(());
                }
                Phase::Preface => {
                    let n = input.len().min(PREFACE.len());
                    if input.get(..n) != PREFACE.get(..n) {
                        self.phase = Phase::Transparent;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    out.unsplit(input.split_to(n));
                    self.phase = Phase::Frames;
                }
                Phase::Frames => {
                    if self.passthrough > 0 {
                        if input.is_empty() {
                            return Ok(());
                        }
                        let n = self.passthrough.min(input.len());
                        out.unsplit(input.split_to(n));
                        self.passthrough -= n;
                        continue;
                    }
                    let Some(head) = input.first_chunk::<FRAME_HEADER_LEN>() else {
                        return Ok(());
                    };
                    let head = FrameHead::parse(head);
                    if head.len > self.limits.max_frame {
                        return Err(Refusal::FrameTooLarge {
                            len: head.len,
                            max: self.limits.max_frame,
                        });
                    }
                    if matches!(head.kind, HEADERS | CONTINUATION | PUSH_PROMISE) {
                        if input.len() < FRAME_HEADER_LEN + head.len {
                            return Ok(());
                        }
                        let frame = input.split_to(FRAME_HEADER_LEN + head.len);
                        let payload = frame.get(FRAME_HEADER_LEN..).unwrap_or_default();
                        self.on_header_frame(&head, payload, out)?;
                    } else {
                        if self.pending.is_some() {
                            return Err(Refusal::Malformed(
                                "another frame inside a header block (expected CONTINUATION)",
                            ));
                        }
                        out.unsplit(input.split_to(FRAME_HEADER_LEN));
                        self.passthrough = head.len;
                    }
                }
            }
        }
    }

    fn on_header_frame(
        &mut self,
        head: &FrameHead,
        payload: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), Refusal> {
        let mut pending = match head.kind {
            HEADERS => {
                if self.pending.is_some() {
                    return Err(Refusal::Malformed("HEADERS inside another header block"));
                }
                if head.stream == 0 {
                    return Err(Refusal::Malformed("HEADERS on stream 0"));
                }
                let (priority, fragment) = headers_payload(head.flags, payload)?;
                Pending {
                    stream: head.stream,
                    end_stream: head.flags & END_STREAM != 0,
                    priority,
                    block: fragment.to_vec(),
                    continuations: 0,
                }
            }
            CONTINUATION => {
                let Some(mut p) = self.pending.take() else {
                    return Err(Refusal::Malformed("CONTINUATION outside a header block"));
                };
                if p.stream != head.stream {
                    return Err(Refusal::Malformed("CONTINUATION on another stream"));
                }
                p.continuations += 1;
                if p.continuations > self.limits.max_continuations {
                    return Err(Refusal::TooManyContinuations {
                        max: self.limits.max_continuations,
                    });
                }
                p.block.extend_from_slice(payload);
                p
            }
            // A server never accepts PUSH_PROMISE from a client, and its
            // header block would go into the HPACK state unseen.
            _ => return Err(Refusal::Malformed("PUSH_PROMISE from a client")),
        };
        if pending.block.len() > self.limits.max_block {
            return Err(Refusal::BlockTooLarge { max: self.limits.max_block });
        }
        if head.flags & END_HEADERS == 0 {
            self.pending = Some(pending);
            return Ok(());
        }
        let rewritten = self.codec.rewrite(&pending.block)?;
        if rewritten.authority_replaced {
            self.authorities_replaced += 1;
        }
        pending.block = rewritten.block;
        self.write_block(&pending, out);
        Ok(())
    }

    /// Writes a HEADERS frame (with the client's priority, without its
    /// padding, which only hid the length) and as many CONTINUATION frames
    /// as the block needs to fit the server's frame size.
    fn write_block(&self, p: &Pending, out: &mut BytesMut) {
        let max = self.limits.max_frame;
        let prefix = if p.priority.is_some() { 5 } else { 0 };
        let first = p.block.len().min(max - prefix);
        let (head, mut rest) = p.block.split_at(first);
        let mut flags = if p.end_stream { END_STREAM } else { 0 };
        if p.priority.is_some() {
            flags |= PRIORITY;
        }
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        put_frame_header(out, prefix + head.len(), HEADERS, flags, p.stream);
        if let Some(priority) = &p.priority {
            out.put_slice(priority);
        }
        out.put_slice(head);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(max));
            rest = tail;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            put_frame_header(out, chunk.len(), CONTINUATION, flags, p.stream);
            out.put_slice(chunk);
        }
    }
}

/// A HEADERS payload's priority fields and header block fragment, without
/// its padding.
fn headers_payload(flags: u8, payload: &[u8]) -> Result<(Option<[u8; 5]>, &[u8]), Refusal> {
    let mut rest = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let Some((&n, tail)) = rest.split_first() else {
            return Err(Refusal::Malformed("PADDED HEADERS without a pad length"));
        };
        pad = usize::from(n);
        rest = tail;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let Some((p, tail)) = rest.split_first_chunk::<5>() else {
            return Err(Refusal::Malformed("HEADERS too short for its PRIORITY fields"));
        };
        priority = Some(*p);
        rest = tail;
    }
    let Some(end) = rest.len().checked_sub(pad) else {
        return Err(Refusal::Malformed("HEADERS padding longer than the frame"));
    };
    Ok((priority, rest.get(..end).unwrap_or_default()))
}

fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    let [_, l0, l1, l2] = (len as u32).to_be_bytes();
    out.put_slice(&[l0, l1, l2, kind, flags]);
    out.put_u32(stream);
}

#[cfg(test)]
mod tests {
    use super::super::block::tests::request;
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_frame_header(&mut b, payload.len(), kind, flags, stream);
        b.put_slice(payload);
        b.to_vec()
    }

    /// A parsed output frame.
    #[derive(Debug)]
    struct Out {
        kind: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    }

    fn frames(mut b: &[u8]) -> Vec<Out> {
        let mut v = Vec::new();
        while !b.is_empty() {
            let head = FrameHead::parse(b.first_chunk().expect("whole frame header"));
            let end = FRAME_HEADER_LEN + head.len;
            v.push(Out {
                kind: head.kind,
                flags: head.flags,
                stream: head.stream,
                payload: b.get(FRAME_HEADER_LEN..end).expect("whole frame").to_vec(),
            });
            b = b.get(end..).unwrap_or_default();
        }
        v
    }

    fn run(limits: Limits, input: &[u8]) -> Result<Vec<u8>, Refusal> {
        let mut r = Rewriter::new(limits);
        let mut inb = BytesMut::from(input);
        let mut out = BytesMut::new();
        r.feed(&mut inb, &mut out)?;
        Ok(out.to_vec())
    }

    fn settings() -> Vec<u8> {
        frame(0x4, 0, 0, &[0, 4, 0, 0, 0xff, 0xff])
    }

    #[test]
    fn a_bad_authority_is_rewritten_and_other_frames_pass_unchanged() {
        let mut enc = loona_hpack::Encoder::new();
        let sent = request("run%2Fnetdb%2Fnetdb.sock");
        let block = enc.encode(sent.iter().map(|(n, v)| (&n[..], &v[..])));
        let data = frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]);
        let window = frame(0x8, 0, 0, &[0, 1, 0, 0]);
        let input = [
            PREFACE.to_vec(),
            settings(),
            window.clone(),
            frame(HEADERS, END_HEADERS, 1, &block),
            data.clone(),
        ]
        .concat();
        let out = run(Limits::TONIC_DEFAULTS, &input).unwrap();
        let rest = out.strip_prefix(PREFACE).expect("the preface passes");
        let fs = frames(rest);
        assert_eq!(fs.len(), 4);
        assert_eq!(frame(fs[0].kind, fs[0].flags, 0, &fs[0].payload), settings());
        assert_eq!(frame(fs[1].kind, fs[1].flags, 0, &fs[1].payload), window);
        assert_eq!((fs[2].kind, fs[2].flags, fs[2].stream), (HEADERS, END_HEADERS, 1));
        let got = loona_hpack::Decoder::new().decode(&fs[2].payload).unwrap();
        assert_eq!(got, request("localhost"));
        assert_eq!(frame(fs[3].kind, fs[3].flags, 1, &fs[3].payload), data);
    }

    #[test]
    fn continuation_padding_and_priority_in_then_one_frame_out() {
        let mut enc = loona_hpack::Encoder::new();
        let sent = request("localhost:1");
        let block = enc.encode(sent.iter().map(|(n, v)| (&n[..], &v[..])));
        let (a, rest) = block.split_at(7);
        let (b, c) = rest.split_at(5);
        let priority = [0x80, 0, 0, 3, 200];
        let mut first = vec![4u8];
        first.extend_from_slice(&priority);
        first.extend_from_slice(a);
        first.extend_from_slice(&[0; 4]);
        let input = [
            PREFACE.to_vec(),
            frame(HEADERS, END_STREAM | PADDED | PRIORITY, 3, &first),
            frame(CONTINUATION, 0, 3, b),
            frame(CONTINUATION, 0, 3, &[]),
            frame(CONTINUATION, END_HEADERS, 3, c),
        ]
        .concat();
        let out = run(Limits::TONIC_DEFAULTS, &input).unwrap();
        let fs = frames(out.strip_prefix(PREFACE).unwrap());
        assert_eq!(fs.len(), 1, "{fs:?}");
        assert_eq!(fs[0].flags, END_STREAM | PRIORITY | END_HEADERS, "padding dropped");
        assert_eq!(fs[0].stream, 3);
        let (p, block) = fs[0].payload.split_at(5);
        assert_eq!(p, priority);
        assert_eq!(loona_hpack::Decoder::new().decode(block).unwrap(), sent);
    }

    #[test]
    fn a_block_larger_than_a_frame_goes_out_in_continuation_frames() {
        let mut h = request("run%2Fx.sock");
        h.push((b"x-big".to_vec(), vec![b'b'; 40_000]));
        let block = loona_hpack::Encoder::new().encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut input = PREFACE.to_vec();
        let mut chunks = block.chunks(16_000).peekable();
        let mut kind = HEADERS;
        while let Some(c) = chunks.next() {
            let flags = if chunks.peek().is_none() { END_HEADERS } else { 0 };
            input.extend(frame(kind, flags, 5, c));
            kind = CONTINUATION;
        }
        let out = run(Limits::TONIC_DEFAULTS, &input).unwrap();
        let fs = frames(out.strip_prefix(PREFACE).unwrap());
        assert!(fs.len() >= 3, "{} frames", fs.len());
        assert_eq!(fs[0].kind, HEADERS);
        let mut block = Vec::new();
        for (i, f) in fs.iter().enumerate() {
            assert!(f.payload.len() <= 16_384);
            assert_eq!(f.stream, 5);
            assert_eq!(f.kind, if i == 0 { HEADERS } else { CONTINUATION });
            assert_eq!(f.flags & END_HEADERS != 0, i == fs.len() - 1);
            block.extend_from_slice(&f.payload);
        }
        let got = loona_hpack::Decoder::new().decode(&block).unwrap();
        let mut want = request("localhost");
        want.push((b"x-big".to_vec(), vec![b'b'; 40_000]));
        assert_eq!(got, want);
    }

    #[test]
    fn any_split_of_the_input_gives_the_same_output() {
        let mut enc = loona_hpack::Encoder::new();
        let mut input = [PREFACE.to_vec(), settings()].concat();
        for stream in [1u32, 3, 5] {
            let h = request("run%2Fnetdb%2Fnetdb.sock");
            let block = enc.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
            input.extend(frame(HEADERS, END_HEADERS, stream, &block));
            input.extend(frame(0x0, END_STREAM, stream, &vec![7; 3000]));
        }
        let whole = run(Limits::TONIC_DEFAULTS, &input).unwrap();
        let mut r = Rewriter::new(Limits::TONIC_DEFAULTS);
        let (mut inb, mut out) = (BytesMut::new(), BytesMut::new());
        for b in &input {
            inb.put_u8(*b);
            r.feed(&mut inb, &mut out).unwrap();
        }
        assert_eq!(out.to_vec(), whole);
        assert_eq!(r.authorities_replaced(), 3);
    }

    #[test]
    fn not_http2_passes_through_untouched() {
        let input = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(run(Limits::TONIC_DEFAULTS, input).unwrap(), input);
    }

    #[test]
    fn an_incomplete_frame_waits() {
        let input = [PREFACE.to_vec(), frame(HEADERS, END_HEADERS, 1, &[0x82; 20])].concat();
        let cut = input.get(..input.len() - 1).unwrap();
        assert_eq!(run(Limits::TONIC_DEFAULTS, cut).unwrap(), PREFACE);
    }

    #[test]
    fn hostile_frames_are_refused() {
        let with = |frames: &[Vec<u8>]| [PREFACE.to_vec(), frames.concat()].concat();
        let l = Limits::TONIC_DEFAULTS;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("oversized", with(&[frame(0x0, 0, 1, &vec![0; 16_385])])),
            ("headers on stream 0", with(&[frame(HEADERS, END_HEADERS, 0, &[0x82])])),
            ("bad hpack index", with(&[frame(HEADERS, END_HEADERS, 1, &[0xff, 0x7f])])),
            ("truncated hpack", with(&[frame(HEADERS, END_HEADERS, 1, &[0x00, 0x05, b'a'])])),
            ("bad huffman", with(&[frame(HEADERS, END_HEADERS, 1, &[0x00, 0x81, 0x00, 0x00])])),
            ("padding too long", with(&[frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 0x82])])),
            ("priority too short", with(&[frame(HEADERS, END_HEADERS | PRIORITY, 1, &[0, 0])])),
            ("stray continuation", with(&[frame(CONTINUATION, END_HEADERS, 1, &[0x82])])),
            (
                "continuation on another stream",
                with(&[frame(HEADERS, 0, 1, &[0x82]), frame(CONTINUATION, END_HEADERS, 3, &[])]),
            ),
            (
                "data inside a header block",
                with(&[frame(HEADERS, 0, 1, &[0x82]), frame(0x0, 0, 1, &[])]),
            ),
            ("push promise", with(&[frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2])])),
            (
                "continuation flood",
                with(&[
                    frame(HEADERS, 0, 1, &[0x82]),
                    (0..17).flat_map(|_| frame(CONTINUATION, 0, 1, &[])).collect(),
                ]),
            ),
            (
                "block too large",
                with(&[
                    frame(HEADERS, 0, 1, &vec![0x82; 16_384]),
                    (0..4).flat_map(|_| frame(CONTINUATION, 0, 1, &vec![0x82; 16_384])).collect(),
                ]),
            ),
        ];
        for (what, input) in cases {
            assert!(run(l, &input).is_err(), "{what} is refused");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small xorshift keeps the test deterministic without a new
        // dependency.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut refused = 0;
        for _ in 0..3000 {
            let len = (next() % 64) as usize;
            let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let kind = [HEADERS, CONTINUATION, 0x0, 0x4][(next() % 4) as usize];
            let flags = next() as u8;
            let mut input = PREFACE.to_vec();
            input.extend(frame(kind, flags, (next() % 4) as u32, &body));
            input.extend((0..(next() % 40)).map(|_| next() as u8));
            refused += usize::from(run(Limits::TONIC_DEFAULTS, &input).is_err());
        }
        assert!(refused > 100, "random input is mostly refused ({refused})");
    }
}
