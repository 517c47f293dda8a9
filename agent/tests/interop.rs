//! Generic gRPC clients against a real `netdb agent`: Python's grpcio with
//! its default channel options (which sends the socket path as
//! `:authority`), and a hand-written HTTP/2 client that sends exactly the
//! frames it is told to, on the Unix socket and, as a control, on TCP.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_netdb");

/// Agents of one test, in a directory of their own; killed on drop.
struct Agents {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Agents {
    fn new(tag: &str) -> Agents {
        let dir = std::env::temp_dir().join(format!("netdb-interop-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Agents { dir, children: Vec::new() }
    }

    /// Starts agent `name` serving its API on `api`, gossiping on `bind`.
    fn start(&mut self, name: &str, api: &str, bind: &str, extra: &[&str]) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(BIN)
            .args(["--api", api, "agent", "--no-dataplane", "--name", name, "--bind", bind])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start agent");
        self.children.push(child);
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Waits until the CLI on `api` lists `n` alive members.
    fn wait_alive(&self, api: &str, n: usize) {
        let start = Instant::now();
        loop {
            let out = Command::new(BIN).args(["--api", api, "members", "-o", "json"]).output();
            let alive = out
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
                .and_then(|v| {
                    v.as_array().map(|a| a.iter().filter(|m| m["state"] == "alive").count())
                })
                .unwrap_or(0);
            if alive == n {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{n} members alive on {api}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Python with grpcio, grpcio-reflection and protobuf.
fn python() -> Option<PathBuf> {
    support::python_with(
        "grpc-python-venv",
        &["grpcio", "grpcio-reflection", "protobuf"],
        "the generic gRPC client",
    )
}

fn run_python(py: &Path, target: &str, tag: &str, members: &str, hard: bool) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_client.py");
    let mut cmd = Command::new(py);
    cmd.args([script, target, "--members", members, "--network", "py", "--tag", tag]);
    if hard {
        cmd.arg("--hard");
    }
    let out = cmd.output().expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("ALL OK"),
        "grpc_client.py on {target}:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn python_grpcio_with_default_options_works_on_the_socket_and_on_tcp() {
    let Some(py) = python() else { return };
    let mut a = Agents::new("py");
    let sock = format!("unix:{}/p1.sock", a.dir.display());
    let tcp = "127.0.87.2:7999";
    a.start("p1", &sock, "127.0.87.1:7946", &[]);
    a.start("p2", tcp, "127.0.87.2:7946", &["--join", "127.0.87.1:7946", "--api-insecure"]);
    a.wait_alive(&sock, 2);

    let out = run_python(&py, &sock, "unix", "p1,p2", true);
    for check in [
        "import streamed",
        "3 MB put and dumped",
        "100 concurrent calls",
        "12 KB of metadata",
        "400 events",
    ] {
        assert!(out.contains(check), "{check}: {out}");
    }
    run_python(&py, tcp, "tcp", "p1,p2", false);
    // What the shim did is visible only in the agent's behaviour above; it
    // must not have refused any of it.
    assert!(!a.log("p1").contains("closed an API connection"), "{}", a.log("p1"));
}

// ----- a hand-written HTTP/2 client -----

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;
const PADDED: u8 = 8;
const PRIORITY: u8 = 0x20;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// How a request's header block goes out.
#[derive(Clone, Copy)]
enum Split {
    /// One HEADERS frame.
    Whole,
    /// HEADERS with padding and priority, then CONTINUATION frames of at
    /// most this many bytes.
    Pieces(usize),
}

/// One stream's answer.
#[derive(Debug, Default)]
struct Answer {
    headers: Vec<(String, String)>,
    data: Vec<u8>,
    reset: Option<u32>,
    ended: bool,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Names of the members in a successful Members reply.
    fn members(&self) -> Vec<String> {
        assert_eq!(self.header(":status"), Some("200"), "{self:?}");
        assert_eq!(self.header("grpc-status"), Some("0"), "{self:?}");
        let msg = self.data.get(5..).expect("a gRPC message");
        let reply = netdb_api::MembersReply::decode(msg).expect("a MembersReply");
        reply.members.into_iter().map(|m| m.name).collect()
    }
}

struct Raw<S> {
    s: S,
    enc: loona_hpack::Encoder<'static>,
    dec: loona_hpack::Decoder<'static>,
    next: u32,
}

impl<S: Read + Write> Raw<S> {
    fn connect(mut s: S) -> Raw<S> {
        s.write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat()).unwrap();
        Raw { s, enc: loona_hpack::Encoder::new(), dec: loona_hpack::Decoder::new(), next: 1 }
    }

    /// Sends a Members call with `authority` and `extra` metadata; returns
    /// its stream. The encoder indexes every field, so repeated calls are
    /// references into the dynamic table.
    fn members(&mut self, authority: &str, extra: &[(&str, &str)], split: Split) -> u32 {
        let stream = self.next;
        self.next += 2;
        let mut h = vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/netdb.api.v1.Netdb/Members"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ];
        h.extend_from_slice(extra);
        let block = self.enc.encode(h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        let mut out = Vec::new();
        match split {
            Split::Whole => out.extend(frame(HEADERS, END_HEADERS, stream, &block)),
            Split::Pieces(n) => {
                let mut chunks = block.chunks(n);
                let first = chunks.next().unwrap_or_default();
                let mut payload = vec![3u8, 0, 0, 0, 0, 16];
                payload.extend_from_slice(first);
                payload.extend_from_slice(&[0, 0, 0]);
                let rest: Vec<&[u8]> = chunks.collect();
                let flags = PADDED | PRIORITY | if rest.is_empty() { END_HEADERS } else { 0 };
                out.extend(frame(HEADERS, flags, stream, &payload));
                for (i, c) in rest.iter().enumerate() {
                    let flags = if i + 1 == rest.len() { END_HEADERS } else { 0 };
                    out.extend(frame(CONTINUATION, flags, stream, c));
                }
            }
        }
        out.extend(frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 0]));
        self.s.write_all(&out).unwrap();
        stream
    }

    fn read_frame(&mut self) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
        let mut h = [0u8; 9];
        self.s.read_exact(&mut h)?;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let mut payload = vec![0; len];
        self.s.read_exact(&mut payload)?;
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        Ok((h[3], h[4], stream, payload))
    }

    /// Reads until every stream in `streams` ended; Err on GOAWAY or a
    /// closed connection.
    fn answers(&mut self, streams: &[u32]) -> Result<HashMap<u32, Answer>, String> {
        let mut got: HashMap<u32, Answer> = HashMap::new();
        let mut block: Vec<u8> = Vec::new();
        while !streams.iter().all(|s| got.get(s).is_some_and(|a| a.ended)) {
            let (kind, flags, stream, payload) =
                self.read_frame().map_err(|e| format!("connection closed: {e}"))?;
            let a = got.entry(stream).or_default();
            match kind {
                SETTINGS if flags & 1 == 0 => {
                    self.s.write_all(&frame(SETTINGS, 1, 0, &[])).unwrap();
                }
                PING if flags & 1 == 0 => {
                    self.s.write_all(&frame(PING, 1, 0, &payload)).unwrap();
                }
                GOAWAY => return Err(format!("GOAWAY {payload:?}")),
                RST_STREAM => {
                    a.reset = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                    a.ended = true;
                }
                DATA => {
                    a.data.extend_from_slice(&payload);
                    a.ended |= flags & END_STREAM != 0;
                }
                HEADERS | CONTINUATION => {
                    let mut p = &payload[..];
                    if kind == HEADERS && flags & PADDED != 0 {
                        let pad = p[0] as usize;
                        p = &p[1..p.len() - pad];
                    }
                    if kind == HEADERS && flags & PRIORITY != 0 {
                        p = &p[5..];
                    }
                    block.extend_from_slice(p);
                    a.ended |= flags & END_STREAM != 0;
                    if flags & END_HEADERS != 0 {
                        let fields = self.dec.decode(&block).expect("the server's HPACK decodes");
                        block.clear();
                        a.headers.extend(fields.into_iter().map(|(n, v)| {
                            (String::from_utf8_lossy(&n).into(), String::from_utf8_lossy(&v).into())
                        }));
                    }
                }
                _ => {}
            }
        }
        Ok(got)
    }
}

const BAD_AUTHORITY: &str = "run%2Fnetdb%2Fnetdb.sock";

#[test]
fn a_client_sending_a_bad_authority_is_served_on_the_socket_however_it_frames_it() {
    let mut a = Agents::new("raw");
    let sock_path = a.dir.join("r1.sock");
    let sock = format!("unix:{}", sock_path.display());
    let tcp = "127.0.88.2:7999";
    a.start("r1", &sock, "127.0.88.1:7946", &[]);
    a.start("r2", tcp, "127.0.88.2:7946", &["--api-insecure"]);
    a.wait_alive(&sock, 1);
    a.wait_alive(tcp, 1);

    // Control: TCP has no rewriting, and h2 resets the stream
    // (PROTOCOL_ERROR), so this client does see the failure it guards
    // against.
    let mut c = Raw::connect(std::net::TcpStream::connect(tcp).unwrap());
    let s = c.members(BAD_AUTHORITY, &[], Split::Whole);
    let got = c.answers(&[s]).unwrap();
    assert_eq!(got[&s].reset, Some(1), "TCP refuses a bad :authority: {:?}", got[&s]);

    let mut c = Raw::connect(UnixStream::connect(&sock_path).unwrap());
    c.s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // A padded, prioritised HEADERS frame and CONTINUATION frames; then the
    // same fields again, now references into the dynamic table; then a path
    // as grpc-java sends it.
    let s1 = c.members(BAD_AUTHORITY, &[], Split::Pieces(20));
    let s2 = c.members(BAD_AUTHORITY, &[], Split::Whole);
    let s3 = c.members("/run/netdb/netdb.sock", &[("x-trace", "t")], Split::Whole);
    let got = c.answers(&[s1, s2, s3]).unwrap();
    for s in [s1, s2, s3] {
        assert_eq!(got[&s].members(), ["r1"], "stream {s}");
    }

    // A 30 KB header list: over the server's 16 KiB limit, so it answers
    // 431 and resets the stream, but only if the rewritten block, sent on
    // in HEADERS and CONTINUATION frames, decoded right; else h2 ends the
    // whole connection and the next calls fail.
    let big = "b".repeat(30_000);
    let s = c.members(BAD_AUTHORITY, &[("x-big", &big)], Split::Pieces(16_000));
    let got = c.answers(&[s]).unwrap();
    let refused = got[&s].header(":status") == Some("431") || got[&s].reset == Some(7);
    assert!(refused, "an oversized header list is refused alone: {:?}", got[&s]);

    // 100 concurrent streams on the same connection.
    let streams: Vec<u32> = (0..100)
        .map(|i| c.members(BAD_AUTHORITY, &[("x-n", &i.to_string())], Split::Whole))
        .collect();
    let got = c.answers(&streams).unwrap();
    for s in streams {
        assert_eq!(got[&s].members(), ["r1"], "stream {s}");
    }
    assert!(!a.log("r1").contains("closed an API connection"), "{}", a.log("r1"));
}

#[test]
fn hostile_frames_end_their_connection_only() {
    let mut a = Agents::new("hostile");
    let sock_path = a.dir.join("h1.sock");
    let sock = format!("unix:{}", sock_path.display());
    a.start("h1", &sock, "127.0.89.1:7946", &[]);
    a.wait_alive(&sock, 1);

    let hostile: [(&str, Vec<u8>, &str); 3] = [
        ("oversized", frame(DATA, 0, 1, &vec![0; 20_000]), "a 20000-byte frame"),
        ("bad HPACK", frame(HEADERS, END_HEADERS, 1, &[0xff, 0x7f]), "does not decode"),
        (
            "flood",
            [
                frame(HEADERS, 0, 1, &[0x82]),
                (0..40).flat_map(|_| frame(CONTINUATION, 0, 1, &[])).collect(),
            ]
            .concat(),
            "CONTINUATION frames",
        ),
    ];
    for (what, bytes, logged) in hostile {
        let mut s = UnixStream::connect(&sock_path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&[PREFACE, &frame(SETTINGS, 0, 0, &[]), &bytes].concat()).unwrap();
        // The server's SETTINGS may come first; then the connection ends.
        let mut sink = Vec::new();
        let end = s.read_to_end(&mut sink);
        assert!(
            end.is_ok()
                || end.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{what}: the connection ends rather than hangs: {end:?}"
        );
        let start = Instant::now();
        while !a.log("h1").contains(logged) {
            assert!(start.elapsed() < Duration::from_secs(10), "{what} logged: {}", a.log("h1"));
            std::thread::sleep(Duration::from_millis(50));
        }
        // The agent still serves, on a new connection.
        let mut c = Raw::connect(UnixStream::connect(&sock_path).unwrap());
        let st = c.members(BAD_AUTHORITY, &[], Split::Whole);
        assert_eq!(c.answers(&[st]).unwrap()[&st].members(), ["h1"], "after {what}");
    }
}
