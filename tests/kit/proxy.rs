//! A minimal HTTP CONNECT proxy, as corporate networks put between the worker and
//! D-Trust: optional Basic authentication (407 otherwise), tunnels only to 127.0.0.1,
//! and counts of tunnels opened and requests refused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running proxy; it stops when dropped.
pub struct ConnectProxy {
    addr: SocketAddr,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Counts {
    tunnels: AtomicUsize,
    refused: AtomicUsize,
}

impl ConnectProxy {
    /// Starts on a free port of 127.0.0.1; with `auth`, clients must send those
    /// Basic credentials.
    pub async fn start(auth: Option<(&str, &str)>) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let expected = auth.map(|(user, pass)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
            )
        });
        let counts = Arc::new(Counts::default());
        let task = tokio::spawn({
            let counts = counts.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(handle(stream, expected.clone(), counts.clone()));
                }
            }
        });
        ConnectProxy { addr, counts, task }
    }

    /// Host and port, for `proxyHost` / `proxyPort`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Tunnels opened so far.
    pub fn tunnels(&self) -> usize {
        self.counts.tunnels.load(Ordering::SeqCst)
    }

    /// Requests refused so far (407, 403, bad requests).
    pub fn refused(&self) -> usize {
        self.counts.refused.load(Ordering::SeqCst)
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(mut client: TcpStream, expected: Option<String>, counts: Arc<Counts>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 16 * 1024 {
            return refuse(client, "400 Bad Request", &counts).await;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
        return refuse(client, "405 Method Not Allowed", &counts).await;
    };
    if let Some(expected) = expected {
        let given = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("proxy-authorization"))
            .map(|(_, value)| value.trim().to_string());
        if given.as_deref() != Some(expected.as_str()) {
            counts.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
                .await;
            return;
        }
    }
    let local = target.starts_with("127.0.0.1:") || target.starts_with("localhost:");
    if !local {
        return refuse(client, "403 Forbidden", &counts).await;
    }
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        return refuse(client, "502 Bad Gateway", &counts).await;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    counts.tunnels.fetch_add(1, Ordering::SeqCst);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

async fn refuse(mut client: TcpStream, status: &str, counts: &Counts) {
    counts.refused.fetch_add(1, Ordering::SeqCst);
    let _ = client
        .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
        .await;
}
