//! Loopback proxies for fault injection:
//! - [`TcpProxy`] forwards bytes and can be cut (every connection dropped, new ones
//!   refused) and restored: a lost route between one agent and the API server;
//! - [`AwsFaultProxy`] sits in front of moto, understands just enough HTTP/1.1 to see each
//!   request's `Action`, and answers with injected faults (`Throttling`, HTTP 500) while
//!   told to, counting every request by action.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP forwarder to `target` on a free loopback port.
pub struct TcpProxy {
    /// `127.0.0.1:PORT` the proxy listens on.
    pub addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (cut, cut_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if *cut_rx.borrow() {
                    drop(inbound);
                    continue;
                }
                let mut cut_rx = cut_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Self { addr, cut, task }
    }

    /// Drops every connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the AWS proxy does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward to moto.
    Pass,
    /// Answer 400 with error code `Throttling`.
    Throttle,
    /// Answer 500 `InternalFailure`.
    ServerError,
}

/// One request the AWS proxy saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The query-protocol `Action` (e.g. `SetDesiredCapacity`).
    pub action: String,
    /// The form body.
    pub body: String,
    /// What was done with it.
    pub fault: Fault,
}

/// An HTTP proxy in front of moto that injects faults.
pub struct AwsFaultProxy {
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
    fault: Arc<Mutex<Fault>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Reads one HTTP/1.1 request (head and a Content-Length body); `None` at EOF.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Vec<u8>, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = buf[..end + 4].to_vec();
            let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 8192];
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            return Some((head, body));
        }
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads one HTTP/1.1 response (Content-Length bodies only, as moto sends).
async fn read_response(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 8192];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return (!buf.is_empty()).then_some(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if let Some(len) = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                && buf.len() >= end + 4 + len
            {
                buf.truncate(end + 4 + len);
                return Some(buf);
            }
        }
    }
}

fn action_of(body: &str) -> String {
    body.split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("?")
        .to_owned()
}

fn injected(fault: Fault) -> Vec<u8> {
    let (status, code, msg) = match fault {
        Fault::Throttle => ("400 Bad Request", "Throttling", "Rate exceeded"),
        _ => (
            "500 Internal Server Error",
            "InternalFailure",
            "injected server error",
        ),
    };
    let body = format!(
        "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{msg}</Message></Error><RequestId>fault</RequestId></ErrorResponse>"
    );
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl AwsFaultProxy {
    /// Starts in front of `moto` (`http://127.0.0.1:PORT`), passing everything.
    pub async fn start(moto: &str) -> Self {
        let target: SocketAddr = moto
            .trim_start_matches("http://")
            .parse()
            .expect("moto address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let fault = Arc::new(Mutex::new(Fault::Pass));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (f, s) = (fault.clone(), seen.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let (f, s) = (f.clone(), s.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some((head, body)) = read_request(&mut inbound, &mut buf).await {
                        let text = String::from_utf8_lossy(&body).into_owned();
                        let now = f.lock().map_or(Fault::Pass, |g| *g);
                        if let Ok(mut s) = s.lock() {
                            s.push(Seen {
                                action: action_of(&text),
                                body: text,
                                fault: now,
                            });
                        }
                        let reply = if now == Fault::Pass {
                            let Ok(mut out) = TcpStream::connect(target).await else {
                                return;
                            };
                            let head = String::from_utf8_lossy(&head)
                                .replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
                            if out.write_all(head.as_bytes()).await.is_err()
                                || out.write_all(&body).await.is_err()
                            {
                                return;
                            }
                            match read_response(&mut out).await {
                                Some(r) => r,
                                None => return,
                            }
                        } else {
                            injected(now)
                        };
                        if inbound.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            endpoint: format!("http://{addr}"),
            fault,
            seen,
            task,
        }
    }

    /// From now on, does `fault` with every request.
    pub fn set(&self, fault: Fault) {
        if let Ok(mut f) = self.fault.lock() {
            *f = fault;
        }
    }

    /// Every request seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Requests seen, by action and fault.
    pub fn counts(&self) -> BTreeMap<(String, String), usize> {
        let mut out = BTreeMap::new();
        for s in self.seen() {
            *out.entry((s.action, format!("{:?}", s.fault))).or_default() += 1;
        }
        out
    }
}

impl Drop for AwsFaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
