//! Real WebSockets through NGINX: an echo backend that NGINX proxies to
//! (`proxy_http_version 1.1` with the Upgrade and Connection headers), and
//! clients that keep exchanging messages until the connection ends, so that
//! a test can tell who ended it and when.
//!
//! Loopback only; every loop ends by itself (a connection's end, or a limit).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// An echo WebSocket server on a loopback port.
pub struct EchoBackend {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EchoBackend {
    pub async fn start() -> io::Result<EchoBackend> {
        EchoBackend::start_on("127.0.0.1:0".parse().expect("an address")).await
    }

    /// The backend on `addr` (in a network namespace a test created).
    pub async fn start_on(addr: SocketAddr) -> io::Result<EchoBackend> {
        EchoBackend::serve(addr, None).await
    }

    /// A backend that also pushes a message every `every` on each
    /// WebSocket, unasked (a feed: prices, notifications, a subscription).
    pub async fn start_pushing(every: Duration) -> io::Result<EchoBackend> {
        EchoBackend::serve("127.0.0.1:0".parse().expect("an address"), Some(every)).await
    }

    async fn serve(addr: SocketAddr, push: Option<Duration>) -> io::Result<EchoBackend> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    let mut tick = tokio::time::interval(push.unwrap_or(Duration::from_secs(3600)));
                    let mut pushed = 0u64;
                    loop {
                        tokio::select! {
                            msg = ws.next() => match msg {
                                Some(Ok(msg)) if msg.is_text() || msg.is_binary() => {
                                    if ws.send(msg).await.is_err() {
                                        return;
                                    }
                                }
                                Some(Ok(_)) => {}
                                _ => return,
                            },
                            _ = tick.tick(), if push.is_some() => {
                                pushed += 1;
                                if ws.send(Message::text(format!("p{pushed}"))).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Ok(EchoBackend { addr, task })
    }

    /// The NGINX `server` block location that proxies `/ws` to this
    /// backend as WebSockets (for [`crate::NginxOptions::extra_server`]).
    pub fn location(&self) -> String {
        format!(
            "location /ws {{ proxy_pass http://{}; proxy_http_version 1.1; \
             proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\"; \
             proxy_read_timeout 1h; proxy_send_timeout 1h; }}",
            self.addr
        )
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a client's WebSocket ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsEnd {
    /// Messages sent and echoed back.
    pub exchanged: u32,
    /// `closed` (a close frame or EOF from NGINX), `error: ...`, or `limit`
    /// (still open when the client's own limit ran out).
    pub how: String,
    /// When it ended, since the client opened it.
    pub after: Duration,
    /// When it ended.
    pub at: std::time::Instant,
}

/// A WebSocket client through NGINX that sends a message every `every` and
/// reads its echo, until the connection ends or `limit` passes.
pub struct WsClient {
    /// The client's own address: NGINX's census sees it as the peer.
    pub local: SocketAddr,
    task: JoinHandle<WsEnd>,
}

impl WsClient {
    pub async fn open(nginx: SocketAddr, every: Duration, limit: Duration) -> io::Result<WsClient> {
        WsClient::open_from(None, nginx, every, limit).await
    }

    /// A client that only listens (to a [`EchoBackend::start_pushing`]
    /// feed): it sends nothing after the upgrade; `exchanged` counts the
    /// messages it received.
    pub async fn listen(nginx: SocketAddr, limit: Duration) -> io::Result<WsClient> {
        let (local, mut ws) = WsClient::upgrade(None, nginx).await?;
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut exchanged = 0u32;
            let how = loop {
                let Ok(next) = tokio::time::timeout_at(start + limit, ws.next()).await else {
                    break "limit".to_string();
                };
                match next {
                    Some(Ok(m)) if m.is_text() => exchanged += 1,
                    Some(Ok(Message::Close(_))) | None => break "closed".to_string(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("error: {e}"),
                }
            };
            WsEnd {
                exchanged,
                how,
                after: start.elapsed(),
                at: std::time::Instant::now(),
            }
        });
        Ok(WsClient { local, task })
    }

    /// Connects (from `from`) and upgrades `/ws` through NGINX.
    async fn upgrade(
        from: Option<IpAddr>,
        nginx: SocketAddr,
    ) -> io::Result<(
        SocketAddr,
        tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    )> {
        let stream = crate::client::connect(from, nginx)
            .await
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
        let local = stream.local_addr()?;
        let url = format!("ws://{nginx}/ws");
        let (ws, resp) = tokio_tungstenite::client_async(url, stream)
            .await
            .map_err(io::Error::other)?;
        if resp.status() != 101 {
            return Err(io::Error::other(format!(
                "upgrade answered {}",
                resp.status()
            )));
        }
        Ok((local, ws))
    }

    /// [`WsClient::open`] from the local address `from`.
    pub async fn open_from(
        from: Option<IpAddr>,
        nginx: SocketAddr,
        every: Duration,
        limit: Duration,
    ) -> io::Result<WsClient> {
        let (local, mut ws) = WsClient::upgrade(from, nginx).await?;
        let task = tokio::spawn(async move {
            let start = Instant::now();
            let mut exchanged = 0u32;
            let mut tick = tokio::time::interval(every);
            let how = loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(start + limit) => break "limit".to_string(),
                    _ = tick.tick() => {
                        if let Err(e) = ws.send(Message::text(format!("m{exchanged}"))).await {
                            break format!("error: {e}");
                        }
                        let Ok(next) = tokio::time::timeout_at(start + limit, ws.next()).await else {
                            break "limit".to_string();
                        };
                        match next {
                            Some(Ok(m)) if m.is_text() => exchanged += 1,
                            Some(Ok(Message::Close(_))) | None => break "closed".to_string(),
                            Some(Ok(_)) => {}
                            Some(Err(e)) => break format!("error: {e}"),
                        }
                    }
                }
            };
            WsEnd {
                exchanged,
                how,
                after: start.elapsed(),
                at: std::time::Instant::now(),
            }
        });
        Ok(WsClient { local, task })
    }

    /// Waits for the end.
    pub async fn end(self) -> WsEnd {
        self.task.await.unwrap_or_else(|e| WsEnd {
            exchanged: 0,
            how: format!("error: {e}"),
            after: Duration::ZERO,
            at: std::time::Instant::now(),
        })
    }
}
