//! The plugin server: HTTP/1.1 on a Unix socket, `POST /<Interface>.<Method>`
//! with a JSON body, as dockerd's plugin client (pkg/plugins) speaks it.
//!
//! This layer knows nothing of the methods: it checks the HTTP method,
//! bounds the body and hands the bytes to a [`Handler`].

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{UnixListener, UnixStream};

use super::protocol;

/// The media type of plugin replies.
pub(crate) const CONTENT_TYPE_PLUGIN: &str = "application/vnd.docker.plugins.v1+json";

/// The largest request body read. dockerd's biggest requests (CreateNetwork,
/// Join with many port bindings) are a few KiB.
pub(crate) const MAX_BODY: usize = 1 << 20;

/// How long a client may take to send a request's headers; dockerd sends
/// them at once, so a slow one is stuck or not dockerd.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// What a plugin method answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    /// 200 with `value` as JSON.
    pub(crate) fn json(value: &impl Serialize) -> Reply {
        match serde_json::to_vec(value) {
            Ok(body) => Reply { status: 200, body },
            // Only a map with non-string keys fails; a bug, but dockerd
            // should still get an answer it can show.
            Err(e) => Reply::status(500, &format!("cannot encode the reply: {e}")),
        }
    }

    /// The method failed: 200 with the error field dockerd reads for the
    /// method's interface (`Err`, or `Error` for IPAM).
    pub(crate) fn error(method: &str, message: &str) -> Reply {
        Reply { status: 200, body: protocol::error_body(method, message) }
    }

    /// An HTTP-level failure (no such method, bad request): `status` with
    /// `{"Err": message}`, which dockerd shows whatever the interface.
    pub(crate) fn status(status: u16, message: &str) -> Reply {
        Reply { status, body: protocol::status_error_body(message) }
    }
}

/// Answers plugin calls.
pub(crate) trait Handler: Send + Sync + 'static {
    /// `method` is the request path without its slash
    /// (`NetworkDriver.CreateNetwork`); `body` is as received, possibly
    /// empty (Activate, GetCapabilities) or not JSON at all.
    fn call(&self, method: &str, body: Bytes) -> impl Future<Output = Reply> + Send;
}

/// Why the plugin socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BindError {
    #[error("cannot create the plugin socket directory {}: {source}", dir.display())]
    Dir { dir: PathBuf, source: io::Error },
    #[error(
        "another process serves {}; is another netdb agent running? use --docker-plugin-socket",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error("{} exists and is not a socket; use --docker-plugin-socket with another path", path.display())]
    NotSocket { path: PathBuf },
    #[error("cannot remove the stale plugin socket {}: {source}; remove it by hand", path.display())]
    Stale { path: PathBuf, source: io::Error },
    #[error("cannot bind the plugin socket {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot set the mode of the plugin socket {}: {source}", path.display())]
    Mode { path: PathBuf, source: io::Error },
}

/// Binds the plugin socket at `path`, creating its directory, and replacing
/// a socket file left by a process that is gone; one that still answers is
/// someone else's and is left alone.
pub(crate) async fn bind(path: &Path) -> Result<UnixListener, BindError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // dockerd (root) only needs to traverse it; 0755 is what
        // /run/docker/plugins has anyway.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|source| BindError::Dir { dir: dir.to_owned(), source })?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        // Only a socket is ours to replace; anything else is a wrong path.
        if !std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) {
            return Err(BindError::NotSocket { path: path.to_owned() });
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(BindError::InUse { path: path.to_owned() });
        }
        std::fs::remove_file(path)
            .map_err(|source| BindError::Stale { path: path.to_owned(), source })?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|source| BindError::Bind { path: path.to_owned(), source })?;
    // dockerd runs as root; the group lets an operator's tools probe it.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|source| BindError::Mode { path: path.to_owned(), source })?;
    Ok(listener)
}

/// Serves plugin calls on `listener` until the task is dropped, each
/// connection in its own task (dockerd keeps connections alive and calls
/// concurrently).
pub(crate) async fn serve<H: Handler>(listener: UnixListener, handler: Arc<H>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "accepting a plugin connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(handler.clone(), req));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "plugin connection ended with an error");
            }
        });
    }
}

async fn respond<H: Handler>(
    handler: Arc<H>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let start = Instant::now();
    let path = req.uri().path();
    let method = path.strip_prefix('/').unwrap_or(path).to_owned();
    let (reply, close) = if req.method() != Method::POST {
        (Reply::status(405, &format!("{} {path}: plugin calls use POST", req.method())), false)
    } else if declared_length(&req).is_some_and(|n| n > MAX_BODY as u64) {
        // Refused before reading a byte of it; the unread body makes the
        // connection unusable, so it is closed.
        (too_large(), true)
    } else {
        match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(body) => (handler.call(&method, body.to_bytes()).await, false),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => (too_large(), true),
            Err(e) => (Reply::status(400, &format!("cannot read the request body: {e}")), true),
        }
    };
    // Docker calls a few times per container start or stop: a line each
    // tells what Docker asked and how long netdb took.
    tracing::info!(
        method = %method,
        status = reply.status,
        duration_us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX),
        "docker plugin call"
    );
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_PLUGIN));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("POST"));
    }
    if close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}

fn declared_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers().get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn too_large() -> Reply {
    Reply::status(413, &format!("request body over {MAX_BODY} bytes"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fresh directory under the system's temporary one, removed on drop.
    pub(crate) struct TempDir(pub(crate) PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            let p = std::env::temp_dir().join(format!("netdb-docker-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Answers with the method and body it got; `Fail.*` with an error.
    struct Echo;

    impl Handler for Echo {
        async fn call(&self, method: &str, body: Bytes) -> Reply {
            if method.ends_with(".Fail") {
                return Reply::error(method, "asked to fail");
            }
            if method == "Missing.Method" {
                return Reply::status(404, &format!("{method}: not implemented"));
            }
            Reply::json(&serde_json::json!({
                "Method": method,
                "Body": String::from_utf8_lossy(&body),
            }))
        }
    }

    /// One parsed HTTP/1.1 response.
    #[derive(Debug)]
    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }

        fn json(&self) -> serde_json::Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    /// Reads one response from `stream`, keeping what follows in `buf`;
    /// bodies are always sized by Content-Length here.
    async fn read_answer(stream: &mut UnixStream, buf: &mut Vec<u8>) -> Answer {
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "connection closed before a response: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().unwrap())
            .unwrap();
        buf.drain(..head_end + 4);
        while buf.len() < len {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed inside a body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = buf.drain(..len).collect();
        Answer { status, headers, body }
    }

    /// A request as dockerd 20.10 sends it: an empty Host, its Accept, and
    /// a Content-Length even when empty.
    fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "{method} {path} HTTP/1.1\r\nHost: \r\nUser-Agent: Go-http-client/1.1\r\n\
             Content-Length: {}\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\
             Accept-Encoding: gzip\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    async fn call(path: &Path, method: &str, uri: &str, body: &[u8]) -> Answer {
        let mut s = UnixStream::connect(path).await.unwrap();
        s.write_all(&request(method, uri, body)).await.unwrap();
        read_answer(&mut s, &mut Vec::new()).await
    }

    #[tokio::test]
    async fn serves_posts_and_refuses_the_rest() {
        let dir = TempDir::new("http");
        let path = dir.0.join("run/plugins/netdb.sock");
        let listener = bind(&path).await.unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o660);
            assert_eq!(mode(path.parent().unwrap()), 0o755);
        }
        let server = tokio::spawn(serve(listener, Arc::new(Echo)));

        let body = br#"{"NetworkID":"n1"}"#;
        let a = call(&path, "POST", "/NetworkDriver.CreateNetwork", body).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("content-type"), Some(CONTENT_TYPE_PLUGIN));
        assert_eq!(
            a.json(),
            serde_json::json!({"Method": "NetworkDriver.CreateNetwork", "Body": r#"{"NetworkID":"n1"}"#})
        );

        // Errors: in the interface's field on 200, in Err otherwise.
        let a = call(&path, "POST", "/IpamDriver.Fail", b"").await;
        assert_eq!((a.status, a.json()), (200, serde_json::json!({"Error": "asked to fail"})));
        let a = call(&path, "POST", "/NetworkDriver.Fail", b"").await;
        assert_eq!((a.status, a.json()), (200, serde_json::json!({"Err": "asked to fail"})));
        let a = call(&path, "POST", "/Missing.Method", b"{}").await;
        assert_eq!(a.status, 404);
        assert_eq!(a.json()["Err"], "Missing.Method: not implemented");

        let a = call(&path, "GET", "/Plugin.Activate", b"").await;
        assert_eq!(a.status, 405);
        assert_eq!(a.header("allow"), Some("POST"));
        assert_eq!(a.header("content-type"), Some(CONTENT_TYPE_PLUGIN));
        assert!(a.json()["Err"].as_str().unwrap().contains("use POST"));

        // Two calls on one connection, as dockerd's keep-alive client makes
        // them; the first with an empty body like Plugin.Activate's.
        let mut s = UnixStream::connect(&path).await.unwrap();
        let mut buf = Vec::new();
        s.write_all(&request("POST", "/Plugin.Activate", b"")).await.unwrap();
        let a = read_answer(&mut s, &mut buf).await;
        assert_eq!((a.status, a.json()["Method"].as_str()), (200, Some("Plugin.Activate")));
        assert_eq!(a.json()["Body"], "");
        s.write_all(&request("POST", "/IpamDriver.ReleasePool", b"{\"PoolID\":\"p\"}\n"))
            .await
            .unwrap();
        let a = read_answer(&mut s, &mut buf).await;
        assert_eq!(a.json()["Body"], "{\"PoolID\":\"p\"}\n");

        // Declared too large: refused before the body is sent.
        let mut s = UnixStream::connect(&path).await.unwrap();
        let head = format!(
            "POST /NetworkDriver.Join HTTP/1.1\r\nHost: \r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let a = read_answer(&mut s, &mut Vec::new()).await;
        assert_eq!(a.status, 413);
        assert_eq!(a.header("connection"), Some("close"));
        assert!(a.json()["Err"].as_str().unwrap().contains("over 1048576 bytes"));

        // Chunked, so only reading tells: stopped at the limit while the
        // client is still writing (its writes then fail; that is the point).
        let s = UnixStream::connect(&path).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let writer = tokio::spawn(async move {
            let head =
                "POST /NetworkDriver.Join HTTP/1.1\r\nHost: \r\nTransfer-Encoding: chunked\r\n\r\n";
            wr.write_all(head.as_bytes()).await?;
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..64 {
                wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
                wr.write_all(&chunk).await?;
                wr.write_all(b"\r\n").await?;
            }
            wr.write_all(b"0\r\n\r\n").await
        });
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        // Read until the response is complete; a reset after it is fine.
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
        }
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
        assert!(writer.await.unwrap().is_err(), "the whole 4 MiB body was accepted");

        curl(&path).await;
        server.abort();
    }

    /// The same call through curl, a client that is not ours.
    async fn curl(path: &Path) {
        let path = path.to_owned();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-sS", "--max-time", "10", "--unix-socket"])
                .arg(&path)
                .args(["-d", "{\"PoolID\":\"p\"}", "-w", "\n%{http_code} %{content_type}"])
                .arg("http://plugin/IpamDriver.ReleasePool")
                .output()
        })
        .await
        .unwrap();
        let out = match out {
            Ok(out) => out,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                println!("SKIP curl part: curl is not installed");
                return;
            }
            Err(e) => panic!("cannot run curl: {e}"),
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
        let (body, tail) = text.rsplit_once('\n').unwrap();
        assert_eq!(tail, format!("200 {CONTENT_TYPE_PLUGIN}"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["Method"], "IpamDriver.ReleasePool");
        assert_eq!(v["Body"], "{\"PoolID\":\"p\"}");
    }

    #[tokio::test]
    async fn bind_replaces_a_stale_socket_and_refuses_a_live_one() {
        let dir = TempDir::new("bind");
        let path = dir.0.join("netdb.sock");

        // Stale: a socket file whose listener is gone.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let listener = bind(&path).await.unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(Echo)));
        assert_eq!(call(&path, "POST", "/Plugin.Activate", b"").await.status, 200);

        // Live: refused, and the serving socket is left in place.
        let e = bind(&path).await.unwrap_err();
        assert!(matches!(e, BindError::InUse { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("another netdb agent") && text.contains("--docker-plugin-socket"));
        assert_eq!(call(&path, "POST", "/Plugin.Activate", b"").await.status, 200);
        server.abort();

        // Not a socket: left alone.
        let file = dir.0.join("file");
        std::fs::write(&file, b"keep").unwrap();
        let e = bind(&file).await.unwrap_err();
        assert!(matches!(e, BindError::NotSocket { .. }), "{e:?}");
        assert!(e.to_string().contains("is not a socket"));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep");

        // A path that cannot be a directory.
        let e = bind(&path.join("sub.sock")).await.unwrap_err();
        assert!(matches!(e, BindError::Dir { .. }), "{e:?}");
        assert!(e.to_string().contains("cannot create the plugin socket directory"));
    }
}
