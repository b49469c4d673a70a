//! [`ContractListener`] and [`serve`]: catalog errors even for requests hyper refuses before
//! axum sees them, and connections that cannot be held open forever.
//!
//! When the bytes on a connection are not a readable HTTP/1 request (a bad header line, too
//! many headers, a URI too long), hyper answers by itself with an empty 400, 431 or 414: no
//! code, no request id. A server started with [`serve`] sends the catalog's error instead,
//! rendered by the same [`Contract`].
//!
//! ```no_run
//! # async fn run(contract: std::sync::Arc<faultline_axum::Contract>, app: axum::Router) {
//! use std::time::Duration;
//! let tcp = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
//! let listener = faultline_axum::ContractListener::new(tcp, contract)
//!     .header_read_timeout(Duration::from_secs(10))
//!     .idle_timeout(Duration::from_secs(60))
//!     .max_connections(512);
//! faultline_axum::serve(listener, app).await.unwrap();
//! # }
//! ```

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::{Ready, ready as ready_future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::Method;
use axum::response::Response;
use axum::serve::{IncomingStream, Listener};
use faultline::Situation;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::contract::Contract;
use crate::request_id::RequestId;

/// How long a client may take to send a request's head, by default.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a kept-alive connection may wait for its next request, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How many connections are served at once, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// The longest response head the framing tracker reads; anything longer is passed through.
const MAX_HEAD: usize = 64 * 1024;

/// Runs `router` on `listener` with axum's server, tracking every connection so that hyper's
/// own refusals become catalog errors and the listener's timeouts apply.
///
/// It returns axum's [`axum::serve::Serve`], so `.with_graceful_shutdown(...)` works as usual.
///
/// # Route layers are built once
///
/// The router is made eager (`with_state(())`) as `axum::serve` makes one, so a
/// `route_layer` wraps its handler once, not again for every request.
pub fn serve<L: Listener>(
    listener: ContractListener<L>,
    router: Router,
) -> axum::serve::Serve<ContractListener<L>, TrackConnections, TrackedRouter> {
    axum::serve(
        listener,
        TrackConnections {
            router: router.with_state(()),
        },
    )
}

/// Wraps an axum [`Listener`]: hyper's refusals become catalog errors, slow and idle
/// connections are closed, and the number of connections is capped. Serve with [`serve`].
#[derive(Debug)]
pub struct ContractListener<L> {
    inner: L,
    contract: Arc<Contract>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
    open: Arc<AtomicUsize>,
}

impl<L> ContractListener<L> {
    /// Accepts through `inner`, rendering refusals with `contract`, with the default limits.
    pub fn new(inner: L, contract: Arc<Contract>) -> Self {
        ContractListener {
            inner,
            contract,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            open: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// How long a client may take from its first byte (or from connecting) to the end of a
    /// request's head. A client that trickles its head is disconnected when it passes.
    #[must_use]
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// How long a kept-alive connection may wait, with no request in flight, for the first
    /// byte of its next request.
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How many connections are served at once. A connection over the cap is answered with
    /// the catalog's service-unavailable error (with `Retry-After`) and closed.
    #[must_use]
    pub fn max_connections(mut self, max: usize) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How many connections are open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl<L: Listener> Listener for ContractListener<L> {
    type Io = ContractIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
                self.open.fetch_sub(1, Ordering::AcqRel);
                tokio::spawn(refuse_connection(io, over_capacity(&self.contract)));
                continue;
            }
            let io = ContractIo {
                inner: io,
                contract: Arc::clone(&self.contract),
                conn: Arc::new(Conn::default()),
                framing: Framing::Head(Vec::new()),
                replacement: None,
                swallow: false,
                header_read_timeout: self.header_read_timeout,
                idle_timeout: self.idle_timeout,
                deadline: Box::pin(tokio::time::sleep(self.header_read_timeout)),
                phase: Phase::Head,
                since: Instant::now(),
                seen_generation: 0,
                read_waker: None,
                _open: OpenConnection(Arc::clone(&self.open)),
            };
            return (io, addr);
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The bytes of the answer to a connection over the cap.
fn over_capacity(contract: &Contract) -> Vec<u8> {
    let error = contract
        .bound(Situation::ServiceUnavailable)
        .with_header("Retry-After", "1");
    raw_response(contract, &error)
}

/// Writes `answer` and closes, reading (and dropping) what the client sent meanwhile so the
/// close does not reset the connection before the answer arrives.
async fn refuse_connection<I: AsyncRead + AsyncWrite + Unpin>(mut io: I, answer: Vec<u8>) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        io.write_all(&answer).await?;
        io.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < 64 * 1024 {
            let n = tokio::io::AsyncReadExt::read(&mut io, &mut sink).await?;
            if n == 0 {
                break;
            }
            drained += n;
        }
        Ok::<_, io::Error>(())
    })
    .await;
}

/// A whole HTTP/1.1 response for `error`, that closes the connection.
fn raw_response(contract: &Contract, error: &faultline::ApiError) -> Vec<u8> {
    let id = RequestId::generate(&contract.catalog().api.request_id_prefix);
    let mut headers = axum::http::HeaderMap::new();
    contract.count_error(error.code());
    let (status, body) = contract.render_into(error, &id, "/", &mut headers);
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("Error")
    )
    .into_bytes();
    for (name, value) in &headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(
        format!(
            "content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body);
    out
}

/// Counts an open connection until dropped.
#[derive(Debug)]
struct OpenConnection(Arc<AtomicUsize>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the connection's service and its IO share.
#[derive(Debug, Default)]
struct Conn {
    /// Set when the connection is served through [`serve`]; without it nothing is rewritten
    /// and no timeout applies (the IO cannot tell requests from responses).
    tracked: AtomicBool,
    state: Mutex<ConnState>,
}

#[derive(Debug, Default)]
struct ConnState {
    /// Requests handed to the service whose response has not started: whether each is HEAD.
    pending: VecDeque<bool>,
    /// A response of the service is being written.
    responding: bool,
    /// Bumped each time a response is finished.
    generation: u64,
}

impl Conn {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn request_started(&self, is_head: bool) {
        self.lock().pending.push_back(is_head);
    }
}

/// The make-service of [`serve`]: gives each connection a [`TrackedRouter`].
#[derive(Debug, Clone)]
pub struct TrackConnections {
    router: Router,
}

impl<L: Listener> Service<IncomingStream<'_, ContractListener<L>>> for TrackConnections {
    type Response = TrackedRouter;
    type Error = Infallible;
    type Future = Ready<Result<TrackedRouter, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, stream: IncomingStream<'_, ContractListener<L>>) -> Self::Future {
        let conn = Arc::clone(&stream.io().conn);
        conn.tracked.store(true, Ordering::Release);
        ready_future(Ok(TrackedRouter {
            router: self.router.clone(),
            conn,
        }))
    }
}

/// The router of one connection: tells the connection's IO which requests are in flight.
#[derive(Debug, Clone)]
pub struct TrackedRouter {
    router: Router,
    conn: Arc<Conn>,
}

impl Service<Request> for TrackedRouter {
    type Response = Response;
    type Error = Infallible;
    type Future = <Router as Service<Request>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        self.conn.request_started(request.method() == Method::HEAD);
        if request.extensions().is_empty() {
            *request.extensions_mut() = presized_extensions();
        }
        self.router.call(request)
    }
}

/// An empty extension map with room for what a request gathers on its way in, so that it
/// never has to grow.
///
/// # Why
///
/// A request through the stack collects five extensions: axum's `OriginalUri`, `MatchedPath`
/// and `UrlParams`, then the faultline layer's [`RequestId`] and the auth layer's principal.
/// The map hyper hands over is made by the first insert with room for three, so the fourth
/// grew it: a second table allocated, the three moved, the first freed, on every request.
/// A copy of an empty map made with room for seven costs one table allocation instead.
fn presized_extensions() -> axum::http::Extensions {
    static EMPTY_WITH_ROOM: std::sync::LazyLock<axum::http::Extensions> =
        std::sync::LazyLock::new(|| {
            #[derive(Clone)]
            struct Room<const N: usize>;
            let mut extensions = axum::http::Extensions::new();
            // Seven entries fit the map's eight-bucket table; removing them keeps the table.
            extensions.insert(Room::<0>);
            extensions.insert(Room::<1>);
            extensions.insert(Room::<2>);
            extensions.insert(Room::<3>);
            extensions.insert(Room::<4>);
            extensions.insert(Room::<5>);
            extensions.insert(Room::<6>);
            extensions.clear();
            extensions
        });
    EMPTY_WITH_ROOM.clone()
}

/// Which deadline the connection's reads are under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head: `header_read_timeout` from its start.
    Head,
    /// Kept alive between requests: `idle_timeout` from the last response.
    Idle,
}

/// A connection accepted by [`ContractListener`].
///
/// # A response the application produced is never changed
///
/// The connection follows HTTP/1 framing of what it writes (heads, `Content-Length` and
/// chunked bodies, HEAD requests, interim responses). Only a response head written at a
/// response boundary while no request is in the service, with hyper's own refusal statuses
/// (400, 414, 431), is replaced by the catalog's error; bytes that merely look like a status
/// line inside a body are passed through untouched. Anything the tracker cannot follow (an
/// upgrade, a body delimited by the close) turns rewriting off for the rest of the connection.
///
/// # Slow and idle connections are closed
///
/// With no request in flight, a connection must deliver a request head within the header
/// read timeout (counted from the connection or from the head's first byte), and a kept-alive
/// connection must start its next request within the idle timeout; otherwise it is closed.
pub struct ContractIo<I> {
    inner: I,
    contract: Arc<Contract>,
    conn: Arc<Conn>,
    framing: Framing,
    /// The catalog answer being written in place of hyper's, and how much of it is out.
    replacement: Option<(Vec<u8>, usize)>,
    /// After a replacement: hyper's further bytes on this connection are dropped.
    swallow: bool,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    /// When the connection is checked next: never earlier than where it was before (see
    /// `idle_since_response`).
    deadline: Pin<Box<Sleep>>,
    phase: Phase,
    /// When the current phase began: the connection's start or the head's first byte
    /// (`Head`), the end of the last response (`Idle`).
    since: Instant,
    /// The response generation the deadline was set for.
    seen_generation: u64,
    /// The task waiting to read, woken when a response that another task wrote ends, so that it
    /// reads on (hyper reads and writes from one task, which is never woken for this).
    read_waker: Option<Waker>,
    _open: OpenConnection,
}

impl<I> std::fmt::Debug for ContractIo<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContractIo")
            .field("framing", &self.framing)
            .finish_non_exhaustive()
    }
}

/// Where the writer is in the stream of responses.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Framing {
    /// Reading a response head; empty at a response boundary.
    Head(Vec<u8>),
    /// This many body bytes remain.
    Length(u64),
    /// Reading a chunk-size line.
    ChunkSize { size: u64, digits: bool, ext: bool },
    /// This many chunk data bytes remain, then CRLF.
    ChunkData(u64),
    /// The CRLF after chunk data: this many bytes remain.
    ChunkEnd(u8),
    /// Trailer lines after the last chunk; `line` bytes into the current one.
    Trailers { line: usize },
    /// Untrackable from here on (an upgrade, a close-delimited body, anything unexpected).
    Opaque,
}

/// What a finished response head says about the body that follows.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// A 1xx other than 101: another head follows for the same request.
    Interim,
    /// A final response and how its body is framed.
    Final(Framing),
}

impl<I> ContractIo<I> {
    /// The replacement for a write of `buf` that starts at a response boundary, if `buf` is
    /// hyper's own refusal.
    fn replacement_for(&self, buf: &[u8]) -> Option<Vec<u8>> {
        if !self.conn.tracked.load(Ordering::Acquire) || self.framing != Framing::Head(Vec::new()) {
            return None;
        }
        // The status first: it rules out nearly every response without taking the lock.
        let situation = match hyper_refusal_status(buf)? {
            431 => Situation::RequestHeadersTooLarge,
            _ => Situation::MalformedRequest,
        };
        {
            let state = self.conn.lock();
            if !state.pending.is_empty() || state.responding {
                return None;
            }
        }
        // A catalog without the binding keeps hyper's answer rather than mislabel it.
        self.contract.catalog().bound(situation)?;
        Some(raw_response(
            &self.contract,
            &self.contract.bound(situation),
        ))
    }

    /// Follows the framing over `bytes`, which the task of `writer` has just written.
    fn wrote(&mut self, mut bytes: &[u8], writer: &Waker) {
        while !bytes.is_empty() {
            let (used, event) = step(&mut self.framing, bytes);
            bytes = &bytes[used..];
            match event {
                None => {}
                Some(Event::HeadRead(head)) => self.head_done(head, writer),
                Some(Event::HeadGathered(head)) => self.head_done(parse_head(&head), writer),
                Some(Event::BodyDone) => {
                    self.framing = Framing::Head(Vec::new());
                    self.response_done(writer);
                }
            }
        }
    }

    fn head_done(&mut self, head: Option<Head>, writer: &Waker) {
        match head {
            Some(Head::Interim) => self.framing = Framing::Head(Vec::new()),
            Some(Head::Final(body)) => {
                let is_head_request = {
                    let mut state = self.conn.lock();
                    state.responding = true;
                    state.pending.pop_front().unwrap_or(false)
                };
                // The answer to a HEAD request has no body, whatever its headers say.
                let body = match body {
                    Framing::Opaque => Framing::Opaque,
                    _ if is_head_request => Framing::Head(Vec::new()),
                    body => body,
                };
                let done = body == Framing::Head(Vec::new());
                self.framing = body;
                if done {
                    self.response_done(writer);
                }
            }
            None => self.framing = Framing::Opaque,
        }
    }

    /// A response ended: the connection waits for the next request, whose read must start the
    /// idle timer.
    ///
    /// # No wake-up per request
    ///
    /// The idle timer is started here, by the writer, and the reading task is woken only when
    /// it is not the one writing. hyper polls both halves of a connection from one task, and
    /// waking that task from inside its own poll made tokio wake another worker thread for
    /// nothing: a futex and an eventfd write per request.
    fn response_done(&mut self, writer: &Waker) {
        // `waiting_for_request`, under the same lock.
        let trackable =
            self.conn.tracked.load(Ordering::Acquire) && self.framing != Framing::Opaque;
        let waiting = {
            let mut state = self.conn.lock();
            state.responding = false;
            state.generation += 1;
            (trackable && state.pending.is_empty()).then_some(state.generation)
        };
        if let Some(generation) = waiting {
            self.idle_since_response(generation);
        }
        if let Some(waker) = self.read_waker.take()
            && !waker.will_wake(writer)
        {
            waker.wake();
        }
    }

    /// Once per response `generation`: the connection is idle from now until the next
    /// request, and the timer must fire no later than the shorter of the two timeouts from
    /// now; the phase is checked when it fires.
    ///
    /// A timer still due earlier is left alone: it fires early and the read moves it on then.
    /// Resetting it on every response re-registered it with tokio's timer driver (a lock) per
    /// request; a timer moved earlier than every other one also wakes the driver, a system
    /// call. A busy connection now moves its timer once per timeout.
    fn idle_since_response(&mut self, generation: u64) {
        if generation == self.seen_generation {
            return;
        }
        self.seen_generation = generation;
        self.phase = Phase::Idle;
        self.since = Instant::now();
        let at = self.since + self.idle_timeout.min(self.header_read_timeout);
        if self.deadline.deadline() > at {
            self.deadline.as_mut().reset(at);
        }
    }

    /// Whether the connection waits for a request (no request in the service, no response
    /// being written), and so is under a read deadline.
    fn waiting_for_request(&self) -> Option<u64> {
        if !self.conn.tracked.load(Ordering::Acquire) || self.framing == Framing::Opaque {
            return None;
        }
        let state = self.conn.lock();
        (state.pending.is_empty() && !state.responding).then_some(state.generation)
    }
}

/// What a step of the framing tracker completed.
enum Event {
    /// A whole response head gathered over several writes: its bytes.
    HeadGathered(Vec<u8>),
    /// A whole response head that lay in one write, read as it was found: what it says
    /// (`None`: unreadable).
    HeadRead(Option<Head>),
    /// The end of a response body.
    BodyDone,
}

/// Advances `framing` over the start of `bytes`; returns how many bytes it used.
fn step(framing: &mut Framing, bytes: &[u8]) -> (usize, Option<Event>) {
    match framing {
        Framing::Head(head) => {
            // The terminator may straddle two writes: look from up to 3 bytes back.
            let kept = head.len().min(3);
            let look = &bytes[..bytes.len().min(MAX_HEAD + 4)];
            // The usual case: the whole head in one write, found and read in one pass.
            if head.is_empty()
                && let Some((at, read)) = scan_head(look)
            {
                return (at + 4, Some(Event::HeadRead(read)));
            }
            let found = if kept == 0 {
                head_end(look)
            } else {
                let mut window = head[head.len() - kept..].to_vec();
                window.extend_from_slice(&look[..look.len().min(4)]);
                head_end(&window).or_else(|| head_end(look).map(|at| at + kept))
            };
            match found {
                Some(at) => {
                    let used = at + 4 - kept;
                    head.extend_from_slice(&bytes[..used]);
                    let head = std::mem::take(head);
                    (used, Some(Event::HeadGathered(head)))
                }
                None if head.len() + bytes.len() > MAX_HEAD => {
                    *framing = Framing::Opaque;
                    (bytes.len(), None)
                }
                None => {
                    head.extend_from_slice(bytes);
                    (bytes.len(), None)
                }
            }
        }
        Framing::Length(left) => {
            let used = usize::try_from(*left)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            *left -= used as u64;
            if *left == 0 {
                (used, Some(Event::BodyDone))
            } else {
                (used, None)
            }
        }
        Framing::ChunkSize { size, digits, ext } => {
            for (i, &b) in bytes.iter().enumerate() {
                match b {
                    b'\n' => {
                        *framing = if !*digits {
                            Framing::Opaque
                        } else if *size == 0 {
                            Framing::Trailers { line: 0 }
                        } else {
                            Framing::ChunkData(*size)
                        };
                        return (i + 1, None);
                    }
                    b'\r' => {}
                    _ if *ext => {}
                    b';' => *ext = true,
                    _ => match (b as char).to_digit(16) {
                        Some(d) if *size <= u64::MAX >> 4 => {
                            *size = (*size << 4) | u64::from(d);
                            *digits = true;
                        }
                        _ => {
                            *framing = Framing::Opaque;
                            return (i + 1, None);
                        }
                    },
                }
            }
            (bytes.len(), None)
        }
        Framing::ChunkData(left) => {
            let used = usize::try_from(*left)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            *left -= used as u64;
            if *left == 0 {
                *framing = Framing::ChunkEnd(2);
            }
            (used, None)
        }
        Framing::ChunkEnd(left) => {
            let used = usize::from(*left).min(bytes.len());
            *left -= used as u8;
            if *left == 0 {
                *framing = Framing::ChunkSize {
                    size: 0,
                    digits: false,
                    ext: false,
                };
            }
            (used, None)
        }
        Framing::Trailers { line } => {
            for (i, &b) in bytes.iter().enumerate() {
                match b {
                    b'\n' if *line == 0 => return (i + 1, Some(Event::BodyDone)),
                    b'\n' => *line = 0,
                    b'\r' => {}
                    _ => *line += 1,
                }
            }
            (bytes.len(), None)
        }
        Framing::Opaque => (bytes.len(), None),
    }
}

/// Where the first `\r\n\r\n` (the end of a head) in `haystack` starts. The searcher is built
/// once: building one per call cost more than the search itself.
fn head_end(haystack: &[u8]) -> Option<usize> {
    static END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
    END.find(haystack)
}

/// Reads a complete response head: interim, or final with its body's framing. Only the status
/// and the two framing headers matter, so the head is scanned rather than fully parsed.
fn parse_head(head: &[u8]) -> Option<Head> {
    if let Some(decided) = read_status(head) {
        return decided;
    }
    let mut length = None;
    // Line by line, and only the lines that can be one of the two framing headers are read: a
    // response carries several long ones (rate limits, request id) that need no more than a
    // look at their first byte.
    let mut at = memchr::memchr(b'\n', head)? + 1;
    while at < head.len() {
        let end = memchr::memchr(b'\n', &head[at..]).map_or(head.len(), |i| at + i);
        let line = &head[at..end];
        at = end + 1;
        match read_line(line, &mut length) {
            Line::Next => {}
            Line::Decided(head) => return head,
            Line::Empty => break,
        }
    }
    Some(final_head(length))
}

/// The head at the start of `bytes`, found and read in one pass over its lines: where its
/// `\r\n\r\n` starts and what it says, as [`head_end`] then [`parse_head`] of the head would
/// give; `None` when no head ends within `bytes`.
///
/// # The same answer as finding the end, then reading the head
///
/// A property test holds it to `head_end` followed by `parse_head` for any bytes.
fn scan_head(bytes: &[u8]) -> Option<(usize, Option<Head>)> {
    // `Some`: decided (by the status line or a header line); the lines after it only matter
    // for finding the end.
    let mut decided = read_status(bytes);
    let mut length = None;
    // The start of the current line, once past the status line.
    let mut line_start = None;
    for end in memchr::memchr_iter(b'\n', bytes) {
        if end >= 3 && &bytes[end - 3..=end] == b"\r\n\r\n" {
            return Some((end - 3, decided.unwrap_or_else(|| Some(final_head(length)))));
        }
        if let Some(start) = line_start
            && decided.is_none()
        {
            match read_line(&bytes[start..end], &mut length) {
                Line::Next => {}
                Line::Decided(head) => decided = Some(head),
                Line::Empty => decided = Some(Some(final_head(length))),
            }
        }
        line_start = Some(end + 1);
    }
    None
}

/// What the status line alone decides: `Some(None)` unreadable, `Some(head)` a status whose
/// framing no header changes, `None` when the framing headers decide.
fn read_status(head: &[u8]) -> Option<Option<Head>> {
    let Some(rest) = head.strip_prefix(b"HTTP/1.") else {
        return Some(None);
    };
    let Some(digits) = rest.get(2..5).filter(|_| rest.get(1) == Some(&b' ')) else {
        return Some(None);
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return Some(None);
    }
    let status = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match status {
        101 => Some(Some(Head::Final(Framing::Opaque))),
        100..200 => Some(Some(Head::Interim)),
        204 | 304 => Some(Some(Head::Final(Framing::Head(Vec::new())))),
        _ => None,
    }
}

/// What one header line (up to its `\n`) does to the framing.
enum Line {
    /// Nothing decided yet.
    Next,
    /// The framing is decided (`None`: the head is unreadable).
    Decided(Option<Head>),
    /// An empty line: the headers end here.
    Empty,
}

/// Reads one header line; a `Content-Length` is kept in `length`.
///
/// Inlined, so that the many lines which cannot be a framing header cost one look at their
/// first byte; the others are read by [`read_framing_line`].
#[inline(always)]
fn read_line(line: &[u8], length: &mut Option<u64>) -> Line {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line.first().map(u8::to_ascii_lowercase) {
        None => Line::Empty,
        Some(b't' | b'c') => read_framing_line(line, length),
        Some(_) => Line::Next,
    }
}

/// Reads a header line that may be `Transfer-Encoding` or `Content-Length` (without its line
/// end).
fn read_framing_line(line: &[u8], length: &mut Option<u64>) -> Line {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Line::Decided(None);
    };
    let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
    if name.eq_ignore_ascii_case(b"transfer-encoding") {
        let chunked = value
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Line::Decided(Some(Head::Final(if chunked {
            Framing::ChunkSize {
                size: 0,
                digits: false,
                ext: false,
            }
        } else {
            Framing::Opaque
        })));
    }
    if name.eq_ignore_ascii_case(b"content-length") {
        match std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            Some(n) => *length = Some(n),
            None => return Line::Decided(None),
        }
    }
    Line::Next
}

/// A final head with no transfer coding: framed by its `Content-Length`, else by the close.
fn final_head(length: Option<u64>) -> Head {
    Head::Final(match length {
        Some(0) => Framing::Head(Vec::new()),
        Some(n) => Framing::Length(n),
        // A body that runs to the close: nothing after it can be told apart.
        None => Framing::Opaque,
    })
}

/// The status of an HTTP/1 response head in `buf` that hyper writes by itself.
fn hyper_refusal_status(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.")?;
    match rest.get(1..6)? {
        b" 400 " => Some(400),
        b" 414 " => Some(414),
        b" 431 " => Some(431),
        _ => None,
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ContractIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let waiting = this.waiting_for_request();
        if let Some(generation) = waiting {
            this.idle_since_response(generation);
            this.read_waker = Some(cx.waker().clone());
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if waiting.is_none() {
            return polled;
        }
        match polled {
            Poll::Ready(Ok(())) if buf.filled().len() > before && this.phase == Phase::Idle => {
                // The first byte of a request: its head must now arrive in time, checked
                // when the timer fires. It is due no later than that unless the idle wait
                // moved it on (to the idle timeout's end): then it is brought back.
                this.phase = Phase::Head;
                this.since = Instant::now();
                let end = this.since + this.header_read_timeout;
                if this.deadline.deadline() > end {
                    this.deadline.as_mut().reset(end);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => loop {
                if this.deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let end = this.since
                    + match this.phase {
                        Phase::Head => this.header_read_timeout,
                        Phase::Idle => this.idle_timeout,
                    };
                if Instant::now() < end {
                    // Fired early for this phase: wait for the rest (a later time).
                    this.deadline.as_mut().reset(end);
                    continue;
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    match this.phase {
                        Phase::Head => "the request head took too long",
                        Phase::Idle => "the connection was idle too long",
                    },
                )));
            },
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> ContractIo<I> {
    /// Writes the replacement out, then reports the `claimed` bytes of hyper's answer as
    /// written: hyper keeps offering the same buffers until told they all went.
    fn write_replacement(
        &mut self,
        cx: &mut Context<'_>,
        claimed: usize,
    ) -> Poll<io::Result<usize>> {
        if let Some((bytes, written)) = &mut self.replacement {
            while *written < bytes.len() {
                let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
        }
        self.replacement = None;
        self.swallow = true;
        self.framing = Framing::Opaque;
        Poll::Ready(Ok(claimed))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ContractIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.swallow {
            return Poll::Ready(Ok(buf.len()));
        }
        if this.replacement.is_none() {
            match this.replacement_for(buf) {
                Some(bytes) => this.replacement = Some((bytes, 0)),
                None => {
                    let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
                    this.wrote(&buf[..n], cx.waker());
                    return Poll::Ready(Ok(n));
                }
            }
        }
        this.write_replacement(cx, buf.len())
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let claimed = bufs.iter().map(|b| b.len()).sum();
        if this.swallow {
            return Poll::Ready(Ok(claimed));
        }
        if this.replacement.is_none() {
            // hyper queues a response head as the first slice; its own refusals have no body.
            match bufs.first().and_then(|head| this.replacement_for(head)) {
                Some(bytes) => this.replacement = Some((bytes, 0)),
                None => {
                    let mut n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
                    let written = n;
                    for slice in bufs {
                        let take = n.min(slice.len());
                        this.wrote(&slice[..take], cx.waker());
                        n -= take;
                        if n == 0 {
                            break;
                        }
                    }
                    return Poll::Ready(Ok(written));
                }
            }
        }
        this.write_replacement(cx, claimed)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a broken fixture is the test failing

    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Bytes shaped like the start of a response stream: a status line, header lines (the
    /// framing ones in several spellings, some broken), mixed line ends, maybe the blank line
    /// that ends a head, then anything.
    fn response_like() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let status = prop::sample::select(vec![
            "HTTP/1.1 200 OK",
            "HTTP/1.1 101 Switching Protocols",
            "HTTP/1.1 100 Continue",
            "HTTP/1.1 204 No Content",
            "HTTP/1.0 304 Not Modified",
            "HTTP/1.1 2x0 Bad",
            "HTTP/1.1 404",
            "HTTP/2 200",
            "",
        ]);
        let line = prop::sample::select(vec![
            "content-length: 5",
            "Content-Length: 0",
            "content-length: abc",
            "content-length:  12 ",
            "transfer-encoding: chunked",
            "Transfer-Encoding: gzip, chunked",
            "transfer-encoding: gzip",
            "connection: close",
            "cache-control without a colon",
            "x-other: content-length: 5",
            "ratelimit: \"a\";r=1;t=2",
            "",
            "\r",
        ]);
        let end = prop::sample::select(vec!["\r\n", "\r\n", "\r\n", "\n", "\r"]);
        let rest = prop::collection::vec(
            prop::sample::select(vec![b'\r', b'\n', b'a', b'c', b'T', b':', b' ', b'5']),
            0..12,
        );
        (
            status,
            prop::collection::vec((line, end.clone()), 0..8),
            end,
            any::<bool>(),
            rest,
        )
            .prop_map(|(status, lines, status_end, blank, rest)| {
                let mut bytes = format!("{status}{status_end}").into_bytes();
                for (line, end) in lines {
                    bytes.extend_from_slice(line.as_bytes());
                    bytes.extend_from_slice(end.as_bytes());
                }
                if blank {
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes.extend_from_slice(&rest);
                bytes
            })
    }

    /// The edges where a one-pass reader could part from finding, then reading: an empty line
    /// before the end of the head (the headers stop there, the search for the end does not),
    /// a decision before the end, a head cut off, and a body that holds a terminator.
    #[test]
    fn one_pass_reads_edge_heads_as_finding_then_parsing_does() {
        for bytes in [
            &b"HTTP/1.1 200 OK\n\ncontent-length: 5\r\n\r\nhello"[..],
            b"HTTP/1.1 200 OK\r\nx: 1\n\r\ntransfer-encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncache-control no colon\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n\r\n\r\nbody",
            b"\r\n\r\n",
        ] {
            let expected = head_end(bytes).map(|at| (at, parse_head(&bytes[..at + 4])));
            assert_eq!(
                scan_head(bytes),
                expected,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    proptest::proptest! {
        // A pure function of a few dozen bytes: many cases cost little, and the empty-line
        // edge only shows when a bare line end meets a later framing header.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        #[test]
        fn one_pass_reads_heads_as_finding_then_parsing_does(
            bytes in proptest::prop_oneof![
                response_like(),
                proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            ]
        ) {
            let expected = head_end(&bytes).map(|at| (at, parse_head(&bytes[..at + 4])));
            proptest::prop_assert_eq!(scan_head(&bytes), expected);
        }
    }

    #[test]
    fn presized_extensions_are_empty_and_independent() {
        let mut first = presized_extensions();
        assert!(first.is_empty());
        first.insert(7u8);
        first.insert("a");
        let second = presized_extensions();
        assert!(
            second.is_empty(),
            "a copy never sees another request's extensions"
        );
        assert_eq!(first.get::<u8>(), Some(&7));
        assert_eq!(first.len(), 2);
    }

    /// An IO that accepts at most `per_write` bytes per call and records them.
    struct Scripted {
        per_write: usize,
        vectored: bool,
        out: Vec<u8>,
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            _buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.per_write);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut left = self.per_write;
            let mut n = 0;
            for slice in bufs {
                let take = slice.len().min(left);
                self.out.extend_from_slice(&slice[..take]);
                left -= take;
                n += take;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn contract() -> Arc<Contract> {
        static CONTRACT: std::sync::OnceLock<Arc<Contract>> = std::sync::OnceLock::new();
        Arc::clone(CONTRACT.get_or_init(|| {
            let path = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../examples/catalogs/chatbots.toml"
            );
            let source = std::fs::read_to_string(path).unwrap();
            let catalog = faultline::Catalog::from_toml_str(&source).unwrap();
            Arc::new(Contract::new(catalog).unwrap())
        }))
    }

    fn io(per_write: usize, vectored: bool) -> ContractIo<Scripted> {
        ContractIo {
            inner: Scripted {
                per_write,
                vectored,
                out: Vec::new(),
            },
            contract: contract(),
            conn: Arc::new(Conn {
                tracked: AtomicBool::new(true),
                state: Mutex::default(),
            }),
            framing: Framing::Head(Vec::new()),
            replacement: None,
            swallow: false,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            deadline: Box::pin(tokio::time::sleep(DEFAULT_HEADER_READ_TIMEOUT)),
            phase: Phase::Head,
            since: Instant::now(),
            seen_generation: 0,
            read_waker: None,
            _open: OpenConnection(Arc::new(AtomicUsize::new(1))),
        }
    }

    /// A waker counting its wakes.
    struct Counting(AtomicUsize);

    impl std::task::Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_ends_without_waking_the_task_writing_it() {
        let reader = Arc::new(Counting(AtomicUsize::new(0)));
        let other = Arc::new(Counting(AtomicUsize::new(0)));
        let (reader_waker, other_waker) = (
            Waker::from(Arc::clone(&reader)),
            Waker::from(Arc::clone(&other)),
        );
        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]";
        let mut io = io(1024, false);
        let mut buf = [0u8; 16];
        for (writer, round) in [(&reader_waker, 1), (&other_waker, 2)] {
            // The reader waits for a request, one arrives and is answered by `writer`.
            let mut cx = Context::from_waker(&reader_waker);
            assert!(
                Pin::new(&mut io)
                    .poll_read(&mut cx, &mut ReadBuf::new(&mut buf))
                    .is_pending()
            );
            io.conn.request_started(false);
            let mut cx = Context::from_waker(writer);
            let written = Pin::new(&mut io).poll_write(&mut cx, response);
            assert!(matches!(written, Poll::Ready(Ok(n)) if n == response.len()));
            // The idle deadline starts at the response's end, whoever wrote it.
            assert_eq!(io.seen_generation, round);
            assert_eq!(io.phase, Phase::Idle);
        }
        // Written by the reading task itself: not woken (hyper reads on in the same poll).
        // Written by another task: the reader is woken, once.
        assert_eq!(reader.0.load(Ordering::Relaxed), 1);
        assert_eq!(other.0.load(Ordering::Relaxed), 0);
    }

    const LOOKALIKE: &str = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";

    /// Responses as the application could produce them, with bodies full of status lines.
    fn responses() -> Vec<(bool, Vec<u8>)> {
        let body = LOOKALIKE.repeat(3);
        let fixed = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let chunked = format!(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{LOOKALIKE}\r\n{:x};ext=1\r\n{body}\r\n0\r\n\r\n",
            LOOKALIKE.len(),
            body.len()
        );
        // A HEAD answer announces a length but carries no body: the next head follows at once.
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 12345\r\n\r\n".to_owned();
        let interim = format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 400 Bad Request\r\nx-request-id: req_1\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        vec![
            (false, fixed.into_bytes()),
            (false, chunked.into_bytes()),
            (true, head.into_bytes()),
            (false, interim.into_bytes()),
        ]
    }

    #[tokio::test]
    async fn application_bytes_are_delivered_exactly_over_every_split() {
        let stream: Vec<u8> = responses().into_iter().flat_map(|(_, r)| r).collect();
        for vectored in [false, true] {
            for per_write in [1, 2, 3, 4, 5, 7, 11, 16, 29, 64, 4096] {
                for split in 0..=stream.len() {
                    let mut io = io(per_write, vectored);
                    for (is_head, _) in responses() {
                        io.conn.request_started(is_head);
                    }
                    // Two writes, cut at `split`; each is retried until all of it went.
                    for part in [&stream[..split], &stream[split..]] {
                        let mut rest = part;
                        while !rest.is_empty() {
                            let n = if vectored {
                                let (a, b) = rest.split_at(rest.len() / 2);
                                io.write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)])
                                    .await
                                    .unwrap()
                            } else {
                                io.write(rest).await.unwrap()
                            };
                            rest = &rest[n..];
                        }
                    }
                    assert_eq!(
                        io.inner.out, stream,
                        "vectored {vectored}, {per_write} bytes per write, split at {split}"
                    );
                    let state = io.conn.lock();
                    assert!(state.pending.is_empty() && !state.responding);
                    assert_eq!(
                        state.generation, 4,
                        "every response was followed to its end"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn only_a_refusal_with_no_request_in_flight_is_rewritten() {
        let refusal = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        // No request in the service: hyper's own answer becomes the catalog's.
        let mut idle = io(1024, false);
        idle.write_all(refusal).await.unwrap();
        let out = String::from_utf8(idle.inner.out.clone()).unwrap();
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(out.contains("\"error\":\"malformed_request\""), "{out}");
        // The same bytes while a request is in the service are the application's.
        let mut busy = io(1024, false);
        busy.conn.request_started(false);
        busy.write_all(refusal).await.unwrap();
        assert_eq!(busy.inner.out, refusal);
        // An untracked connection is never rewritten.
        let mut untracked = io(1024, false);
        untracked.conn.tracked.store(false, Ordering::Release);
        untracked.write_all(refusal).await.unwrap();
        assert_eq!(untracked.inner.out, refusal);
    }

    #[tokio::test]
    async fn an_upgrade_or_a_close_delimited_body_turns_rewriting_off() {
        for head in [
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            "HTTP/1.0 200 OK\r\n\r\n",
        ] {
            let mut io = io(1024, false);
            io.conn.request_started(false);
            let stream = format!("{head}{LOOKALIKE}");
            io.write_all(stream.as_bytes()).await.unwrap();
            assert_eq!(io.inner.out, stream.as_bytes());
            assert_eq!(io.framing, Framing::Opaque);
        }
    }

    #[test]
    fn heads_are_read_for_their_status_and_framing_only() {
        let framing = |head: &str| match parse_head(head.as_bytes()) {
            Some(Head::Final(framing)) => Some(framing),
            Some(Head::Interim) => Some(Framing::ChunkEnd(0)),
            None => None,
        };
        let chunked = Some(Framing::ChunkSize {
            size: 0,
            digits: false,
            ext: false,
        });
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"),
            Some(Framing::Length(12))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length:0\r\n\r\n"),
            Some(Framing::Head(Vec::new()))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
            chunked
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"),
            Some(Framing::Opaque)
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n"),
            Some(Framing::Head(Vec::new()))
        );
        assert_eq!(
            framing("HTTP/1.1 100 Continue\r\n\r\n"),
            Some(Framing::ChunkEnd(0))
        );
        assert_eq!(
            framing("HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Some(Framing::Opaque)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n"),
            Some(Framing::Opaque),
            "close-delimited"
        );
        // Anything that does not read as a head stops the tracker rather than guess.
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n"),
            None
        );
        assert_eq!(framing("HTTP/1.1 2x0 OK\r\n\r\n"), None);
        assert_eq!(framing("HTTP/1.1 200 OK\r\nContent-Length 3\r\n\r\n"), None);
        // Only the two framing headers are read; other lines are passed over at their first
        // byte, whatever they hold.
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nx-note: content-length: 5\r\nratelimit: \"a\";r=1\r\nContent-Length: 3\r\n\r\n"
            ),
            Some(Framing::Length(3))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-type: a/b\r\n\r\n"),
            Some(Framing::Opaque)
        );
        assert_eq!(framing("HTTP/2 200\r\n\r\n"), None);
    }
}
