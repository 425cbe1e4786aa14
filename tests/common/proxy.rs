//! A TCP proxy inside the test process for injecting network faults between a client and a server,
//! in the spirit of Toxiproxy: `sever()` (connections reset, new ones closed at once), `stall()` (a
//! black hole: connections stay open but no byte moves) and `heal()`.
//!
//! It runs on its own single-threaded tokio runtime on its own thread, so it keeps forwarding while a
//! test blocks on a sync client, and it works the same from `#[test]` and `#[tokio::test]`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    Stall,
    Sever,
}

#[derive(Debug, Clone, Copy)]
struct State {
    mode: Mode,
    /// Bumped by every `sever()`. A connection dies when this differs from the value it started with,
    /// so a `sever()` quickly followed by `heal()` still kills it, even if it never saw `Mode::Sever`.
    severings: u64,
}

/// A proxy from `addr()` to one upstream address. Drop stops it and closes every connection.
///
/// A connection stalled by `stall()` resumes on `heal()`: bytes held back are then delivered late, as
/// after a long network hiccup. A connection accepted while stalled connects upstream only once healed.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    state: watch::Sender<State>,
    open: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Listens on a free 127.0.0.1 port and forwards every connection to `upstream`.
    pub fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy port");
        listener.set_nonblocking(true).expect("non-blocking proxy listener");
        let addr = listener.local_addr().expect("proxy address");
        let (state, receiver) = watch::channel(State { mode: Mode::Forward, severings: 0 });
        let open = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = oneshot::channel::<()>();
        let counter = open.clone();
        let thread = std::thread::Builder::new()
            .name(format!("tcp-proxy-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).expect("register the proxy listener");
                    tokio::select! {
                        _ = accept_loop(listener, upstream, receiver, counter) => {}
                        _ = stopped => {}
                    }
                });
                // Dropping the runtime drops every connection task, which closes their sockets.
            })
            .expect("start the proxy thread");
        TcpProxy { addr, state, open, stop: Some(stop), thread: Some(thread) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Closes every current connection and, until `heal()`, closes new ones as soon as they are
    /// accepted. Returns once the current connections are closed.
    pub fn sever(&self) {
        self.state.send_modify(|s| {
            s.mode = Mode::Sever;
            s.severings += 1;
        });
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.open_connections() > 0 {
            assert!(Instant::now() < deadline, "proxy connections still open 2 s after sever()");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops moving bytes in both directions on every connection, current and new; connections stay
    /// open and new ones are accepted, so clients hang instead of failing.
    pub fn stall(&self) {
        self.state.send_modify(|s| s.mode = Mode::Stall);
    }

    /// Back to forwarding: stalled connections resume, new connections work.
    pub fn heal(&self) {
        self.state.send_modify(|s| s.mode = Mode::Forward);
    }

    /// Connections currently held open (stalled ones included).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Counts a connection task while it lives.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(counter: Arc<AtomicUsize>) -> OpenGuard {
        counter.fetch_add(1, Ordering::SeqCst);
        OpenGuard(counter)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    state: watch::Receiver<State>,
    open: Arc<AtomicUsize>,
) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of descriptors and the like: back off rather than spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let now = *state.borrow();
        if now.mode == Mode::Sever {
            drop(client);
            continue;
        }
        let guard = OpenGuard::new(open.clone());
        tokio::spawn(connection(client, upstream, state.clone(), now.severings, guard));
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    state: watch::Receiver<State>,
    severings: u64,
    _guard: OpenGuard,
) {
    let mut watcher = state.clone();
    tokio::select! {
        _ = watcher.wait_for(|s| s.severings != severings) => {}
        _ = relay(client, upstream, state) => {}
    }
    // Returning drops both sockets: that is the close.
}

async fn relay(client: TcpStream, upstream: SocketAddr, mut state: watch::Receiver<State>) {
    if !wait_forwarding(&mut state).await {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(pump(client_read, server_write, state.clone()), pump(server_read, client_write, state));
}

/// Copies one direction while forwarding. On end of input it passes the half-close on; on an error it
/// returns, and dropping the write half closes that side too.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut state: watch::Receiver<State>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !wait_forwarding(&mut state).await {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            changed = state.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        // The mode may have changed while reading: bytes read just before a stall wait for the heal.
        if !wait_forwarding(&mut state).await || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

/// Waits while stalled; false once severed or the proxy is going away.
async fn wait_forwarding(state: &mut watch::Receiver<State>) -> bool {
    loop {
        match state.borrow_and_update().mode {
            Mode::Forward => return true,
            Mode::Sever => return false,
            Mode::Stall => {}
        }
        if state.changed().await.is_err() {
            return false;
        }
    }
}
