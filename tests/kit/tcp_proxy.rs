//! A TCP proxy on 127.0.0.1 that tests put between a client and a server (the worker
//! and RabbitMQ) to cut connections and restore them.
//!
//! [`TcpProxy::cut`] resets every open connection at once, both directions (the sockets
//! are closed with `SO_LINGER` 0, so each side sees a reset, as after a network
//! failure), and refuses new ones until [`TcpProxy::restore`]. It only forwards to
//! 127.0.0.1. Its tasks never panic; it stops (and cuts what is open) when dropped.

#![warn(missing_docs)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy.
pub struct TcpProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

struct State {
    cut: AtomicBool,
    /// Bumped on every cut; open connections watch it.
    cuts: watch::Sender<u64>,
    connections: AtomicUsize,
    active: AtomicUsize,
    refused: AtomicUsize,
}

impl TcpProxy {
    /// Starts a proxy to `upstream` (which must be on 127.0.0.1) on a free port of
    /// 127.0.0.1.
    ///
    /// # Panics
    /// When `upstream` is not on 127.0.0.1, or no port can be bound: test set-up
    /// errors.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        assert_eq!(
            upstream.ip(),
            Ipv4Addr::LOCALHOST,
            "the test proxy only forwards to 127.0.0.1"
        );
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the test TCP proxy on 127.0.0.1");
        let addr = listener.local_addr().expect("the test proxy's address");
        let state = Arc::new(State {
            cut: AtomicBool::new(false),
            cuts: watch::Sender::new(0),
            connections: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        });
        let task = tokio::spawn({
            let state = state.clone();
            async move {
                loop {
                    match listener.accept().await {
                        Ok((client, _)) => {
                            tokio::spawn(serve(client, upstream, state.clone()));
                        }
                        Err(error) => {
                            // E.g. too many open files: wait a little, go on.
                            eprintln!("test TCP proxy: accept failed: {error}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        });
        TcpProxy {
            addr,
            upstream,
            state,
            task,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where it forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Resets every open connection, both directions, and refuses new ones until
    /// [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.cuts.send_modify(|n| *n += 1);
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    /// Whether it is cut.
    pub fn is_cut(&self) -> bool {
        self.state.cut.load(Ordering::SeqCst)
    }

    /// Connections forwarded so far (open or closed).
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }

    /// Connections refused (while cut, or when the upstream did not answer).
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// Closes `stream` with a reset rather than an orderly shutdown.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn serve(client: TcpStream, upstream: SocketAddr, state: Arc<State>) {
    if state.cut.load(Ordering::SeqCst) {
        state.refused.fetch_add(1, Ordering::SeqCst);
        reset(client);
        return;
    }
    let mut server = match TcpStream::connect(upstream).await {
        Ok(server) => server,
        Err(_) => {
            state.refused.fetch_add(1, Ordering::SeqCst);
            reset(client);
            return;
        }
    };
    // Subscribe before looking at the flag again: a cut in between is seen either way.
    let mut cuts = state.cuts.subscribe();
    if state.cut.load(Ordering::SeqCst) {
        state.refused.fetch_add(1, Ordering::SeqCst);
        reset(client);
        reset(server);
        return;
    }
    state.connections.fetch_add(1, Ordering::SeqCst);
    state.active.fetch_add(1, Ordering::SeqCst);
    let mut client = client;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cuts.changed() => {}
    }
    state.active.fetch_sub(1, Ordering::SeqCst);
    reset(client);
    reset(server);
}
