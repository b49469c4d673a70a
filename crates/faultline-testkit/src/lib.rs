//! Test helpers for faultline's store crates (not published).
//!
//! [`TcpProxy`] sits between the code under test and a database engine (Redis, PostgreSQL, any
//! TCP service) so that a test can simulate an outage without touching the engine itself:
//! [`TcpProxy::cut`] drops every connection and refuses new ones, [`TcpProxy::stall`] keeps
//! connections open but forwards nothing, and [`TcpProxy::restore`] brings the path back.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio::net::{TcpListener, TcpStream};
//!
//! // An echo server stands in for the engine.
//! let engine = TcpListener::bind("127.0.0.1:0").await?;
//! let target = engine.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((mut socket, _)) = engine.accept().await {
//!         tokio::spawn(async move {
//!             let (mut read, mut write) = socket.split();
//!             let _ = tokio::io::copy(&mut read, &mut write).await;
//!         });
//!     }
//! });
//!
//! let proxy = faultline_testkit::TcpProxy::start(target).await?;
//! let mut client = TcpStream::connect(proxy.addr()).await?;
//! client.write_all(b"ping").await?;
//! let mut answer = [0; 4];
//! client.read_exact(&mut answer).await?;
//! assert_eq!(&answer, b"ping");
//!
//! proxy.cut();
//! assert!(TcpStream::connect(proxy.addr()).await.is_err());
//! proxy.restore()?;
//! assert!(TcpStream::connect(proxy.addr()).await.is_ok());
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes flow both ways.
    Open,
    /// Connections are accepted and kept, but no byte is forwarded either way.
    Stalled,
    /// No connection exists and new ones are refused.
    Cut,
}

/// A TCP proxy on `127.0.0.1` that forwards to one target and can simulate an outage.
///
/// Every method that changes the mode takes effect for connections already open and for new
/// ones. The proxy needs a tokio runtime with the `net` and `time` drivers (any test runtime);
/// dropping it closes its listener and every connection.
///
/// # A cut drops every connection and refuses new ones
///
/// After [`TcpProxy::cut`] a client's open connection reads end-of-file or a reset, and a new
/// connection attempt fails, until [`TcpProxy::restore`] listens again on the same address.
/// Meanwhile the port stays bound (not listening), so no other socket can take it and the
/// restore cannot fail for that reason.
///
/// # A stall forwards nothing and closes nothing
///
/// After [`TcpProxy::stall`] connections (old and new) stay open but no byte crosses in either
/// direction, as with an engine that hangs; [`TcpProxy::restore`] delivers what was held back.
///
/// Both are proved by this crate's tests (`tests/proxy.rs`).
#[derive(Debug)]
pub struct TcpProxy {
    shared: Arc<Shared>,
    acceptor: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    addr: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    /// A listener waiting for the accept loop (set at start and by `restore` after a cut).
    pending: Mutex<Option<TcpListener>>,
    /// While cut: the address bound but not listening, so connections are refused and no
    /// other socket (another test's outgoing connection, say) can take the port meanwhile.
    parked: Mutex<Option<TcpSocket>>,
    /// The listener the accept loop serves, so that a cut can stop it at once.
    listening: Mutex<Option<Arc<TcpListener>>>,
    connections: Mutex<JoinSet<()>>,
    accepted: AtomicU64,
}

impl Shared {
    /// Binds the address without listening, once its listener is closed.
    fn park(&self) {
        if let Ok(socket) = bind(self.addr) {
            *lock(&self.parked) = Some(socket);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A socket bound to `addr` (not listening yet), bound again while old connections linger in
/// TIME_WAIT.
fn bind(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// A listener on `addr`.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    bind(addr)?.listen(1024)
}

impl TcpProxy {
    /// A proxy listening on an ephemeral port of `127.0.0.1`, forwarding to `target`.
    ///
    /// # Errors
    /// When no local port can be bound.
    pub async fn start(target: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Open);
        let shared = Arc::new(Shared {
            addr,
            target,
            mode,
            pending: Mutex::new(Some(listener)),
            parked: Mutex::new(None),
            listening: Mutex::new(None),
            connections: Mutex::new(JoinSet::new()),
            accepted: AtomicU64::new(0),
        });
        let acceptor = tokio::spawn(accept_loop(Arc::clone(&shared)));
        Ok(TcpProxy { shared, acceptor })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The address traffic is forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.shared.mode.borrow()
    }

    /// How many client connections have been accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Drops every connection and stops listening: new connections are refused.
    pub fn cut(&self) {
        self.shared.mode.send_replace(Mode::Cut);
        lock(&self.shared.connections).abort_all();
        // The listener stops listening now (it stays bound until the accept loop drops it,
        // which then binds the port again without listening); one the loop has not taken yet
        // is closed here.
        if let Some(listener) = lock(&self.shared.listening).take() {
            let _ = socket2::SockRef::from(&*listener).shutdown(std::net::Shutdown::Both);
        }
        let waiting = lock(&self.shared.pending).take();
        if let Some(listener) = waiting {
            drop(listener);
            self.shared.park();
        }
    }

    /// Keeps every connection open but forwards nothing, in either direction, until
    /// [`TcpProxy::restore`]. New connections are accepted and held the same way. After a cut,
    /// listens again first.
    ///
    /// # Errors
    /// When the proxy's address cannot be bound again after a cut.
    pub fn stall(&self) -> std::io::Result<()> {
        self.relisten()?;
        self.shared.mode.send_replace(Mode::Stalled);
        Ok(())
    }

    /// Forwards again: after a stall, what was held back is delivered; after a cut, the proxy
    /// listens again on the same address.
    ///
    /// # Errors
    /// When the proxy's address cannot be bound again after a cut (another process took it).
    pub fn restore(&self) -> std::io::Result<()> {
        self.relisten()?;
        self.shared.mode.send_replace(Mode::Open);
        Ok(())
    }

    /// After a cut, binds the address again (so that connections queue from now on) and hands
    /// the listener to the accept loop.
    fn relisten(&self) -> std::io::Result<()> {
        if self.mode() == Mode::Cut {
            let listener = match lock(&self.shared.parked).take() {
                Some(socket) => socket.listen(1024)?,
                None => listen(self.shared.addr)?,
            };
            *lock(&self.shared.pending) = Some(listener);
        }
        Ok(())
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        lock(&self.shared.connections).abort_all();
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    let mut mode = shared.mode.subscribe();
    loop {
        // Wait for a listener: there is one at start, and after each restore from a cut.
        let listener = loop {
            if *mode.borrow_and_update() != Mode::Cut
                && let Some(listener) = lock(&shared.pending).take()
            {
                break Arc::new(listener);
            }
            if mode.changed().await.is_err() {
                return;
            }
        };
        *lock(&shared.listening) = Some(Arc::clone(&listener));
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((client, _)) = accepted else {
                        // A cut stopped the listener (it took it from `listening`); any
                        // other failure to accept is passing.
                        if lock(&shared.listening).is_none() {
                            break;
                        }
                        continue;
                    };
                    shared.accepted.fetch_add(1, Ordering::Relaxed);
                    let target = shared.target;
                    let mode = shared.mode.subscribe();
                    let mut connections = lock(&shared.connections);
                    // Reap finished connections so the set does not grow without bound.
                    while connections.try_join_next().is_some() {}
                    connections.spawn(forward(client, target, mode));
                }
                changed = mode.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *mode.borrow_and_update() == Mode::Cut {
                        break;
                    }
                }
            }
        }
        // New connections are refused from now on; while cut, the port stays this proxy's.
        lock(&shared.listening).take();
        drop(listener);
        if *mode.borrow() == Mode::Cut {
            shared.park();
        }
    }
}

/// One client connection: connects to the target and pumps both ways under the mode.
async fn forward(client: TcpStream, target: SocketAddr, mode: watch::Receiver<Mode>) {
    if *mode.borrow() == Mode::Cut {
        return;
    }
    let Ok(upstream) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    tokio::join!(
        pump(client_read, upstream_write, mode.clone()),
        pump(upstream_read, client_write, mode),
    );
}

/// Copies `from` to `to` while the mode is open; holds still while stalled; returns on a cut,
/// end-of-file or an error (shutting down `to`'s write side).
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Mode::Cut => return,
            Mode::Stalled => {
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Open => {}
        }
        tokio::select! {
            read = from.read(&mut buffer) => {
                let n = match read {
                    Ok(0) | Err(_) => {
                        let _ = to.shutdown().await;
                        return;
                    }
                    Ok(n) => n,
                };
                if to.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
