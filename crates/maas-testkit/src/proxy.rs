//! A TCP fault proxy for tests: it sits between the services and one of the
//! machine's shared dependencies (Postgres, Redis, RabbitMQ) and can cut
//! every connection and refuse new ones (from the services' side, the
//! dependency went down), restore it (it came back), or delay traffic. The
//! shared instance itself is never touched.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

struct State {
    upstream: String,
    up: AtomicBool,
    delay_ms: AtomicU64,
    conns: Mutex<Vec<JoinHandle<()>>>,
    accepted: AtomicU64,
}

/// A running proxy; dropping it stops it and cuts what passes through.
pub struct FaultProxy {
    port: u16,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            upstream: upstream.to_owned(),
            up: AtomicBool::new(true),
            delay_ms: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, state.clone()));
        Ok(Self {
            port,
            state,
            accept,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The dependency goes away: every open connection is dropped, and new
    /// ones are closed as soon as they are accepted, until [`Self::restore`].
    pub fn cut(&self) {
        self.state.up.store(false, Ordering::SeqCst);
        if let Ok(mut conns) = self.state.conns.lock() {
            for c in conns.drain(..) {
                c.abort();
            }
        }
    }

    /// The dependency is back.
    pub fn restore(&self) {
        self.state.up.store(true, Ordering::SeqCst);
    }

    /// Adds `ms` of latency to every chunk, in each direction.
    pub fn set_delay_ms(&self, ms: u64) {
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Connections accepted so far (a reconnect shows up here).
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    while let Ok((client, _)) = listener.accept().await {
        if !state.up.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        state.accepted.fetch_add(1, Ordering::SeqCst);
        let st = state.clone();
        let task = tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(&st.upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let up = pipe(cr, sw, st.clone());
            let down = pipe(sr, cw, st.clone());
            // Either side closing ends both (a broken link, as seen by both ends).
            tokio::select! {
                _ = up => {}
                _ = down => {}
            }
        });
        if let Ok(mut conns) = state.conns.lock() {
            conns.retain(|c| !c.is_finished());
            conns.push(task);
        }
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<State>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let delay = state.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
