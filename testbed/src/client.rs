//! Minimal HTTP/1.1 clients over raw TCP, so that every byte and every
//! failure (refused, reset, short read) is observed exactly.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How a request failed, in the terms a user of the service would notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The connection was refused: nothing was listening.
    Refused,
    /// The connection was reset or closed before a full response.
    Reset,
    /// The response ended before Content-Length bytes arrived.
    ShortRead { expected: u64, received: u64 },
    /// Anything else (timeout, bad response).
    Other(String),
}

/// A completed response.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Fetched {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

fn classify(e: &io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Failure::Refused,
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => Failure::Reset,
        _ => Failure::Other(e.to_string()),
    }
}

/// An in-flight response whose head has arrived; the body is still coming.
pub struct Download {
    stream: TcpStream,
    pub status: u16,
    pub headers: String,
    pub expected: Option<u64>,
    buffered: Vec<u8>,
}

/// Connects and sends one request (`Connection: close`), returning once the
/// response head has arrived.
pub async fn start(
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &str,
) -> Result<Download, Failure> {
    start_from(None, addr, method, path, extra_headers).await
}

/// Connects from a chosen local address (e.g. 127.0.0.2 playing the node).
pub async fn connect(from: Option<IpAddr>, addr: SocketAddr) -> Result<TcpStream, Failure> {
    let result = match from {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(|e| classify(&e))?;
            socket
                .bind(SocketAddr::new(ip, 0))
                .map_err(|e| classify(&e))?;
            socket.connect(addr).await
        }
    };
    result.map_err(|e| classify(&e))
}

/// [`start`] from a chosen local address.
pub async fn start_from(
    from: Option<IpAddr>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &str,
) -> Result<Download, Failure> {
    start_on(
        connect(from, addr).await?,
        addr,
        method,
        path,
        extra_headers,
    )
    .await
}

/// Sends one request (`Connection: close`) on a connection already open
/// (one of a balancer's pooled connections), returning once the response
/// head has arrived.
pub async fn start_on(
    mut stream: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    extra_headers: &str,
) -> Result<Download, Failure> {
    let agent = if extra_headers.to_ascii_lowercase().contains("user-agent:") {
        ""
    } else {
        "User-Agent: nginx-drain-testbed\r\n"
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{agent}Connection: close\r\n{extra_headers}\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|e| classify(&e))?;
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 * 1024 {
            return Err(Failure::Other("response head over 64 KiB".into()));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.map_err(|e| classify(&e))?;
        if n == 0 {
            return Err(Failure::Reset);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let buffered = buf[head_end + 4..].to_vec();
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((&head, ""));
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Failure::Other(format!("bad status line {status_line:?}")))?;
    let headers = headers.replace("\r\n", "\n");
    let expected = headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    });
    Ok(Download {
        stream,
        status,
        headers,
        expected,
        buffered,
    })
}

impl Download {
    /// Reads the rest of the body. With a Content-Length, anything short of
    /// it is a failure (`ShortRead`): that is a cut download.
    pub async fn finish(self) -> Result<Fetched, Failure> {
        self.finish_counting(None).await
    }

    /// Like [`Download::finish`], adding every body byte to `progress`.
    pub async fn finish_counting(
        mut self,
        progress: Option<&std::sync::atomic::AtomicU64>,
    ) -> Result<Fetched, Failure> {
        if let Some(p) = progress {
            p.fetch_add(
                self.buffered.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let mut body = std::mem::take(&mut self.buffered);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            if self.expected.is_some_and(|e| body.len() as u64 >= e) {
                break;
            }
            match self.stream.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    body.extend_from_slice(&chunk[..n]);
                    if let Some(p) = progress {
                        p.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Err(e) => match self.expected {
                    Some(expected) => {
                        return Err(Failure::ShortRead {
                            expected,
                            received: body.len() as u64,
                        });
                    }
                    None => return Err(classify(&e)),
                },
            }
        }
        if let Some(expected) = self.expected
            && (body.len() as u64) < expected
        {
            return Err(Failure::ShortRead {
                expected,
                received: body.len() as u64,
            });
        }
        Ok(Fetched {
            status: self.status,
            headers: self.headers,
            body,
        })
    }
}

/// Where the kubelet's probes and hooks come from in tests: an address of
/// its own, as in a pod (the CNI bridge's), never a client's.
pub const KUBELET_ADDR: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

/// `GET path` as the kubelet sends a preStop hook: from [`KUBELET_ADDR`],
/// with its User-Agent (`kube-lifecycle/1.32`).
pub async fn kubelet_hook(addr: SocketAddr, path: &str) -> Result<Fetched, Failure> {
    start_from(
        Some(KUBELET_ADDR),
        addr,
        "GET",
        path,
        "User-Agent: kube-lifecycle/1.32\r\n",
    )
    .await?
    .finish()
    .await
}

/// One whole request.
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> Result<Fetched, Failure> {
    start(addr, method, path, "").await?.finish().await
}

/// `GET path`, bounded by `limit` (tests use it to catch hangs only).
pub async fn get(addr: SocketAddr, path: &str, limit: Duration) -> Result<Fetched, Failure> {
    match tokio::time::timeout(limit, request(addr, "GET", path)).await {
        Ok(r) => r,
        Err(_) => Err(Failure::Other(format!(
            "GET {path} took longer than {limit:?}"
        ))),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A blocking `GET path` with extra header lines over a raw socket: the
/// whole answer as text, or the I/O error (a reset is ConnectionReset).
pub fn raw_get(addr: SocketAddr, path: &str, headers: &str) -> io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The status code of an answer from [`raw_get`] (0 if none).
pub fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// The body of an answer from [`raw_get`].
pub fn body_of(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Starts `GET /blob?rate=RATE` (the testbed's rate-limited download) and
/// reads it to the end in a task: a download in flight.
pub async fn spawn_download(
    addr: SocketAddr,
    rate: &str,
) -> tokio::task::JoinHandle<Result<Fetched, Failure>> {
    let d = start(addr, "GET", &format!("/blob?rate={rate}"), "")
        .await
        .expect("the download starts");
    assert_eq!(d.status, 200, "the download starts with 200");
    tokio::spawn(d.finish())
}
