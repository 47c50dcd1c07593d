//! Load generators: new connections at a steady rate (what a load balancer
//! sends while it still routes to the pod), and keep-alive clients. Every
//! loop is bounded in count and in time.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::client::{self, Failure};

/// No single request may take longer than this (catches hangs).
const REQUEST_LIMIT: Duration = Duration::from_secs(20);

/// What a load generator saw, as a user of the service would count it.
#[derive(Debug, Default, Clone)]
pub struct LoadStats {
    pub sent: u64,
    pub ok: u64,
    pub refused: u64,
    pub reset: u64,
    pub short: u64,
    pub other: u64,
    /// Keep-alive requests sent again on a new connection because the server
    /// had closed the idle one they were written to (what HTTP clients do
    /// for idempotent requests, RFC 9112 section 9.3.1): not failures.
    pub retried: u64,
    /// The first few failures, for messages.
    pub examples: Vec<String>,
    /// When the last request was sent.
    pub last_sent: Option<Instant>,
    /// Each new connection's start and whether it succeeded (open_loop
    /// only), for timelines.
    pub events: Vec<(Instant, bool)>,
}

impl LoadStats {
    pub fn failed(&self) -> u64 {
        self.refused + self.reset + self.short + self.other
    }

    fn count(&mut self, r: Result<u16, Failure>) {
        match r {
            Ok(200) => self.ok += 1,
            Ok(status) => self.fail(format!("HTTP {status}"), |s| s.other += 1),
            Err(Failure::Refused) => self.fail("refused".into(), |s| s.refused += 1),
            Err(Failure::Reset) => self.fail("reset".into(), |s| s.reset += 1),
            Err(e @ Failure::ShortRead { .. }) => self.fail(format!("{e:?}"), |s| s.short += 1),
            Err(Failure::Other(e)) => self.fail(e, |s| s.other += 1),
        }
    }

    fn fail(&mut self, what: String, bump: impl FnOnce(&mut Self)) {
        bump(self);
        if self.examples.len() < 5 {
            self.examples.push(what);
        }
    }

    pub fn merge(&mut self, o: &LoadStats) {
        self.sent += o.sent;
        self.ok += o.ok;
        self.refused += o.refused;
        self.reset += o.reset;
        self.short += o.short;
        self.other += o.other;
        self.retried += o.retried;
        self.examples.extend(
            o.examples
                .iter()
                .take(5 - self.examples.len().min(5))
                .cloned(),
        );
        self.last_sent = self.last_sent.max(o.last_sent);
        self.events.extend_from_slice(&o.events);
    }
}

/// When a load generator stops: at an instant, or once a flag is set (by
/// whoever knows when the action under test is over), and at the latest at
/// the flag's bound.
#[derive(Debug, Clone)]
pub enum Until {
    At(Instant),
    Flag(Arc<AtomicBool>, Instant),
}

impl Until {
    pub fn reached(&self) -> bool {
        match self {
            Until::At(t) => Instant::now() >= *t,
            Until::Flag(f, bound) => f.load(Ordering::Relaxed) || Instant::now() >= *bound,
        }
    }

    /// How long it may still run at most.
    fn remaining(&self) -> Duration {
        match self {
            Until::At(t) | Until::Flag(_, t) => t.saturating_duration_since(Instant::now()),
        }
    }
}

impl From<Instant> for Until {
    fn from(t: Instant) -> Until {
        Until::At(t)
    }
}

/// How a client of [`open_loop`] ends its one request's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Style {
    /// `Connection: close`, reading until NGINX closes: NGINX closes first
    /// and keeps the TIME_WAIT, which a census sees for a minute.
    #[default]
    ServerCloses,
    /// `GET / HTTP/1.0`, reading the answer, then closing: whichever side
    /// closes first (the client, mostly: NGINX's socket is gone within a
    /// millisecond, TIME_WAIT stays with the client).
    Http10,
    /// HTTP/1.1 with `Connection: close`, closed as soon as the answer is
    /// read, before NGINX's own close arrives when it wins the race.
    Http11Close,
    /// HTTP/1.1 keep-alive, one request, then the client closes: always
    /// first (NGINX would keep the connection).
    KeepAliveOnce,
}

/// Opens `rate` new connections per second, one `GET /` each
/// (`Connection: close`), from `from`, until `until` or `max` connections;
/// then waits for the answers.
pub async fn open_loop(
    addr: SocketAddr,
    rate: f64,
    from: Option<IpAddr>,
    until: impl Into<Until>,
    max: u64,
) -> LoadStats {
    open_loop_with(addr, rate, from, until, max, Style::ServerCloses).await
}

/// [`open_loop`] of `GET path` (through a proxy's location, say).
pub async fn open_loop_with_path(
    addr: SocketAddr,
    rate: f64,
    from: Option<IpAddr>,
    until: impl Into<Until>,
    max: u64,
    path: String,
) -> LoadStats {
    open_loop_inner(addr, rate, from, until, max, Style::ServerCloses, path).await
}

/// [`open_loop`], with clients that end their connections as `style` says.
pub async fn open_loop_with(
    addr: SocketAddr,
    rate: f64,
    from: Option<IpAddr>,
    until: impl Into<Until>,
    max: u64,
    style: Style,
) -> LoadStats {
    open_loop_inner(addr, rate, from, until, max, style, "/".into()).await
}

async fn open_loop_inner(
    addr: SocketAddr,
    rate: f64,
    from: Option<IpAddr>,
    until: impl Into<Until>,
    max: u64,
    style: Style,
    path: String,
) -> LoadStats {
    let path: Arc<str> = path.into();
    let until = until.into();
    let every = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = JoinSet::new();
    let mut stats = LoadStats::default();
    while stats.sent < max {
        tick.tick().await;
        if until.reached() {
            break;
        }
        stats.sent += 1;
        let started = Instant::now();
        stats.last_sent = Some(started);
        let path = path.clone();
        tasks.spawn(async move {
            let r = tokio::time::timeout(REQUEST_LIMIT, async {
                match style {
                    Style::ServerCloses => client::start_from(from, addr, "GET", &path, "")
                        .await?
                        .finish()
                        .await
                        .map(|f| f.status),
                    _ => close_first(from, addr, style).await,
                }
            })
            .await
            .unwrap_or_else(|_| Err(Failure::Other("request timed out".into())));
            (started, r)
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (started, r) =
            r.unwrap_or_else(|e| (Instant::now(), Err(Failure::Other(e.to_string()))));
        stats.events.push((started, matches!(r, Ok(200))));
        stats.count(r);
    }
    stats
}

/// One request whose client closes as soon as the answer is read.
async fn close_first(from: Option<IpAddr>, addr: SocketAddr, style: Style) -> Result<u16, Failure> {
    let mut stream = client::connect(from, addr).await?;
    let req = match style {
        Style::Http10 => format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n"),
        Style::Http11Close => {
            format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        }
        _ => format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    };
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|_| Failure::Reset)?;
    let (status, _) = read_answer(&mut stream).await?;
    drop(stream);
    Ok(status)
}

/// One keep-alive client: a request every `every` on one connection,
/// reconnecting when the server closes it, until `until`.
pub async fn keepalive(addr: SocketAddr, every: Duration, until: Instant) -> LoadStats {
    keepalive_client(addr, None, every, until, false).await
}

/// [`keepalive`] from `from`; with `retry`, a request written to a reused
/// connection that the server closed meanwhile (no byte of an answer came)
/// is sent once more on a new connection, as HTTP clients do for
/// idempotent requests (counted in `retried`, not as a failure). A
/// connection that closes during a drain is NGINX's graceful shutdown
/// closing an idle keep-alive; only a retry that fails too is a failure.
pub async fn keepalive_client(
    addr: SocketAddr,
    from: Option<IpAddr>,
    every: Duration,
    until: impl Into<Until>,
    retry: bool,
) -> LoadStats {
    let until = until.into();
    let mut stats = LoadStats::default();
    let mut conn: Option<tokio::net::TcpStream> = None;
    let max = (until.remaining().as_secs_f64() / every.as_secs_f64()) as u64 + 1;
    while !until.reached() && stats.sent < max {
        stats.sent += 1;
        stats.last_sent = Some(Instant::now());
        let mut attempts = if retry { 2 } else { 1 };
        loop {
            attempts -= 1;
            let reused = conn.is_some();
            if conn.is_none() {
                match client::connect(from, addr).await {
                    Ok(s) => conn = Some(s),
                    Err(e) => {
                        stats.count(Err(e));
                        break;
                    }
                }
            }
            let stream = conn.as_mut().expect("connected");
            match tokio::time::timeout(REQUEST_LIMIT, one_request(stream, addr)).await {
                Ok(Ok((status, close))) => {
                    stats.count(Ok(status));
                    if close {
                        conn = None;
                    }
                }
                Ok(Err(Failure::Reset)) if reused && attempts > 0 => {
                    stats.retried += 1;
                    conn = None;
                    continue;
                }
                Ok(Err(e)) => {
                    stats.count(Err(e));
                    conn = None;
                }
                Err(_) => {
                    stats.count(Err(Failure::Other("keep-alive request timed out".into())));
                    conn = None;
                }
            }
            break;
        }
        tokio::time::sleep(every).await;
    }
    stats
}

/// Downloads started one every `every` until `until`: `GET path` with
/// `Range: bytes=0-(bytes-1)`, each read to its end; the bytes each
/// received, or why it failed.
pub async fn downloads(
    addr: SocketAddr,
    from: Option<IpAddr>,
    path: &str,
    bytes: usize,
    every: Duration,
    until: impl Into<Until>,
) -> Vec<Result<usize, String>> {
    let until = until.into();
    let max = (until.remaining().as_secs_f64() / every.as_secs_f64()) as usize + 1;
    let mut tasks = Vec::new();
    while !until.reached() && tasks.len() < max {
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            let range = format!("Range: bytes=0-{}\r\n", bytes - 1);
            let fetched = tokio::time::timeout(REQUEST_LIMIT * 3, async {
                client::start_from(from, addr, "GET", &path, &range)
                    .await?
                    .finish()
                    .await
            })
            .await;
            match fetched {
                Ok(Ok(f)) => Ok(f.body.len()),
                Ok(Err(e)) => Err(format!("{e:?}")),
                Err(_) => Err("timed out".into()),
            }
        }));
        tokio::time::sleep(every).await;
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| Err(e.to_string())));
    }
    out
}

/// One request on an open connection; returns the status and whether the
/// server will close the connection.
async fn one_request(
    stream: &mut tokio::net::TcpStream,
    addr: SocketAddr,
) -> Result<(u16, bool), Failure> {
    let req =
        format!("GET / HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: nginx-drain-keepalive\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .await
        .map_err(|_| Failure::Reset)?;
    read_answer(stream).await
}

/// Reads one answer (head and Content-Length body); returns the status and
/// whether the server will close the connection.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> Result<(u16, bool), Failure> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Failure::Other("bad status line".into()))?;
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).await.map_err(|_| Failure::Reset)?;
                if n == 0 {
                    return Err(Failure::ShortRead {
                        expected: len as u64,
                        received: (buf.len() - end - 4) as u64,
                    });
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let close = head.contains("connection: close");
            return Ok((status, close));
        }
        let n = stream.read(&mut chunk).await.map_err(|_| Failure::Reset)?;
        if n == 0 {
            return Err(Failure::Reset);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A balancer's warm keep-alive pool to NGINX (an L7 cloud balancer's, an
/// ingress controller's upstream pool): connections opened once, each
/// carrying one request at a time, reused for as long as NGINX keeps them.
pub struct Pool {
    addr: SocketAddr,
    from: Option<IpAddr>,
    conns: Vec<tokio::net::TcpStream>,
}

impl Pool {
    /// Opens `n` connections to `addr` (from `from`) and sends one request
    /// on each, so that they are established and used before anything
    /// watches them.
    pub async fn open(addr: SocketAddr, from: Option<IpAddr>, n: usize) -> Result<Pool, Failure> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = client::connect(from, addr).await?;
            one_request(&mut s, addr).await?;
            conns.push(s);
        }
        Ok(Pool { addr, from, conns })
    }

    /// Takes `n` of the pool's connections out of its schedule: idle
    /// pooled connections, for requests of their own (a balancer sends a
    /// download on one of its pool's connections, not a new one).
    pub fn split_off(&mut self, n: usize) -> Vec<tokio::net::TcpStream> {
        let keep = self.conns.len().saturating_sub(n);
        self.conns.split_off(keep)
    }

    /// Sends `rate` requests a second over the pool until `until` (at most
    /// `rate` x the time left, plus one per connection): each connection
    /// its share, staggered. As a balancer does, a connection NGINX closed
    /// while idle is noticed before reuse and replaced by a new one, and a
    /// request is never retried: one written to a connection NGINX closed
    /// at that moment fails, and so does one whose new connection is
    /// refused.
    pub async fn run(self, rate: f64, until: impl Into<Until>) -> LoadStats {
        let until = until.into();
        let n = self.conns.len().max(1);
        let every = Duration::from_secs_f64(n as f64 / rate.max(0.001));
        let max = (until.remaining().as_secs_f64() / every.as_secs_f64()) as u64 + 1;
        let mut tasks = JoinSet::new();
        for (i, conn) in self.conns.into_iter().enumerate() {
            let (addr, from, until) = (self.addr, self.from, until.clone());
            let offset = every.mul_f64(i as f64 / n as f64);
            tasks.spawn(async move {
                tokio::time::sleep(offset).await;
                pooled_connection(addr, from, conn, every, until, max).await
            });
        }
        let mut stats = LoadStats::default();
        while let Some(r) = tasks.join_next().await {
            stats.merge(&r.unwrap_or_default());
        }
        stats
    }
}

/// One connection of a [`Pool`]: a request every `every` (open loop: the
/// next is due `every` after the last was due), until `until`.
async fn pooled_connection(
    addr: SocketAddr,
    from: Option<IpAddr>,
    conn: tokio::net::TcpStream,
    every: Duration,
    until: Until,
    max: u64,
) -> LoadStats {
    let mut stats = LoadStats::default();
    let mut conn = Some(conn);
    let mut due = Instant::now();
    while !until.reached() && stats.sent < max {
        // A balancer notices an idle connection that NGINX closed (its FIN
        // arrived) and does not send on it.
        if let Some(c) = &conn {
            let mut probe = [0u8; 1];
            match c.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                _ => conn = None,
            }
        }
        stats.sent += 1;
        stats.last_sent = Some(Instant::now());
        let r = async {
            if conn.is_none() {
                conn = Some(client::connect(from, addr).await?);
            }
            let stream = conn.as_mut().expect("connected");
            tokio::time::timeout(REQUEST_LIMIT, one_request(stream, addr))
                .await
                .unwrap_or_else(|_| Err(Failure::Other("pooled request timed out".into())))
        }
        .await;
        match r {
            Ok((status, close)) => {
                stats.count(Ok(status));
                if close {
                    conn = None;
                }
            }
            Err(e) => {
                stats.count(Err(e));
                conn = None;
            }
        }
        due += every;
        tokio::time::sleep_until(due).await;
    }
    stats
}
