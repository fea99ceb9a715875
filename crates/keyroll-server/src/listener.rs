//! The HTTP listener: our own accept loop over hyper's HTTP/1 connections, with what one
//! client may hold of the server bounded — a header-read timeout, an idle keep-alive timeout,
//! a body-read timeout and a connection cap (`[http]`) — and every limit that bites, and every
//! request hyper rejects before any handler sees it, logged.
//!
//! The two connection timeouts are enforced here rather than with hyper's
//! `header_read_timeout`, because hyper restarts that timer the moment a response is written:
//! it would close an idle keep-alive connection (nginx's pool) after the header timeout,
//! whereas a pooled connection should live for the idle timeout and a slow request head be
//! cut off much sooner. One timer per connection, re-armed from two atomics the request path
//! writes, costs the hot path no timer per request.
//!
//! At the cap, new connections are *shed* (a 503 written without waiting, then closed), not
//! left waiting in the kernel's accept queue: waiting would make every caller hang behind the
//! connections that filled the server — typically the slow ones — and a gateway cannot tell
//! hanging from down; a fast 503 lets it fail or retry at once, while the connections already
//! open (nginx's keep-alive pool, where forward-auth traffic lives) are served as before.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::config::HttpLimits;
use crate::tls::{Acceptor, ConnectionTls};

/// Lines of `http.bad_request` written one by one per `log_interval`; the rest are counted.
const BAD_REQUEST_LINES: u64 = 20;

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, lets every
/// connection finish its request in flight (idle ones close at once) and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    tls: Option<Acceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let stats = Arc::new(Stats::default());
    let (close_tx, close_rx) = watch::channel(false);
    let reporter = tokio::spawn(report(Arc::clone(&stats), limits, close_rx.clone()));
    warn_if_fd_limit_below(limits.max_connections);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        // Ours, below: see the module comment.
        .header_read_timeout(None)
        .max_header_size(limits.max_header_bytes);
    // hyper parses up to 100 headers in a stack array; setting any limit moves it to the heap.
    if limits.max_headers != 100 {
        builder.max_headers(limits.max_headers);
    }
    let builder = Arc::new(builder);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(&e, &stats).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // A plaintext 503 means nothing to a TLS client: there, closing is the answer.
            if tls.is_none() {
                shed(stream, peer, &stats);
            } else {
                stats.bite(Limit::Connections, peer);
            }
            continue;
        };
        // Answers are one small write each: do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            router: router.clone(),
            builder: Arc::clone(&builder),
            limits,
            stats: Arc::clone(&stats),
            close: close_rx.clone(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => conn.run(stream, peer, None).await,
                // The handshake runs here, in the connection's task, so a slow one holds
                // only its own slot and never the accept loop.
                Some(tls) => match tls.accept(stream, peer).await {
                    Ok((stream, info)) => conn.run(stream, peer, Some(info)).await,
                    Err(e) => {
                        tracing::debug!(event = "tls.handshake_failed", peer = %peer, error = %e, "{e} (from {peer})");
                    }
                },
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = close_tx.send(true);
    // Every connection holds a slot until it is done: having them all back means all are.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    let _ = reporter.await;
}

/// The accept loop's half of one connection.
struct Connection {
    router: Router,
    builder: Arc<hyper::server::conn::http1::Builder>,
    limits: HttpLimits,
    stats: Arc<Stats>,
    close: watch::Receiver<bool>,
}

impl Connection {
    async fn run<S>(mut self, stream: S, peer: SocketAddr, tls: Option<ConnectionTls>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let opened = Instant::now();
        let activity = Arc::new(Activity::default());
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: Arc::clone(&activity),
            opened,
        });
        let service = Handler {
            router: self.router.clone(),
            peer,
            activity: Arc::clone(&activity),
            opened,
            body_timeout: self.limits.body_read_timeout,
            stats: Arc::clone(&self.stats),
            tls: tls.map(Arc::new),
        };
        let conn = self.builder.serve_connection(io, service);
        let mut conn = std::pin::pin!(conn);
        let timer = tokio::time::sleep_until(opened + self.limits.recheck());
        let mut timer = std::pin::pin!(timer);
        let mut closing = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        self.stats.connection_error(&e, peer);
                    }
                    return;
                }
                () = timer.as_mut() => {
                    match activity.verdict(opened, Instant::now(), &self.limits) {
                        Verdict::Wait(until) => timer.as_mut().reset(until),
                        // Dropping the connection closes the socket: nothing is in flight.
                        Verdict::Close(limit) => {
                            self.stats.bite(limit, peer);
                            return;
                        }
                    }
                }
                changed = self.close.changed(), if !closing => {
                    closing = true;
                    if changed.is_ok() {
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// What the request path tells the connection's timer. Times are milliseconds since the
/// connection was accepted, plus one, so that 0 means "not yet".
#[derive(Debug, Default)]
struct Activity {
    /// A request is being handled (its head was read, its response not yet produced).
    busy: AtomicBool,
    /// When the last response was produced (0: no request yet).
    last_response: AtomicU64,
    /// When the first byte of the next request head arrived (0: none since the last response).
    head_started: AtomicU64,
}

/// What a connection's timer found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Nothing expired: look again then.
    Wait(Instant),
    /// This limit expired: close.
    Close(Limit),
}

fn stamp(opened: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(opened).as_millis())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

fn at(opened: Instant, stamp: u64) -> Instant {
    opened + Duration::from_millis(stamp.saturating_sub(1))
}

trait Recheck {
    /// How long the timer may sleep at most. A request that ends, or a head that starts, can
    /// move the deadline earlier than the one the timer sleeps towards; it is not re-armed
    /// then (that would cost every request a timer operation), so it wakes at least this often.
    fn recheck(&self) -> Duration;
}

impl Recheck for HttpLimits {
    fn recheck(&self) -> Duration {
        self.header_read_timeout.min(self.idle_timeout)
    }
}

impl Activity {
    fn verdict(&self, opened: Instant, now: Instant, limits: &HttpLimits) -> Verdict {
        let next = now + limits.recheck();
        if self.busy.load(Ordering::Acquire) {
            // A request's body has its own deadline; the handlers bound the rest.
            return Verdict::Wait(next);
        }
        let last = self.last_response.load(Ordering::Acquire);
        let head = self.head_started.load(Ordering::Acquire);
        let (deadline, limit) = if last == 0 {
            (opened + limits.header_read_timeout, Limit::HeaderRead)
        } else if head != 0 {
            (
                at(opened, head) + limits.header_read_timeout,
                Limit::HeaderRead,
            )
        } else {
            (at(opened, last) + limits.idle_timeout, Limit::Idle)
        };
        if now >= deadline {
            Verdict::Close(limit)
        } else {
            Verdict::Wait(deadline.min(next))
        }
    }
}

/// The socket (or the TLS stream over it), noting when the first byte of a request head
/// arrives.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    opened: Instant,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before
            && !self.activity.busy.load(Ordering::Relaxed)
            && self.activity.head_started.load(Ordering::Relaxed) == 0
        {
            let now = stamp(self.opened, Instant::now());
            self.activity.head_started.store(now, Ordering::Release);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The hyper service of one connection: the router, with the peer address as
/// `ConnectInfo<SocketAddr>` (handlers extract it) and a deadline on request bodies.
#[derive(Clone)]
struct Handler {
    router: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
    opened: Instant,
    body_timeout: Duration,
    stats: Arc<Stats>,
    /// The connection's TLS, handed to handlers as a request extension.
    tls: Option<Arc<ConnectionTls>>,
}

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Handled;

    fn call(&self, mut req: Request<Incoming>) -> Handled {
        self.activity.busy.store(true, Ordering::Release);
        req.extensions_mut().insert(ConnectInfo(self.peer));
        if let Some(tls) = &self.tls {
            req.extensions_mut().insert(Arc::clone(tls));
            // The dashboard marks its cookies Secure on this.
            req.extensions_mut()
                .insert(crate::ui::session::ServedOverTls);
        }
        // Bodyless requests (every forward-auth subrequest) get no timer.
        let timed_out = if http_body::Body::is_end_stream(req.body()) {
            None
        } else {
            Some(Arc::new(AtomicBool::new(false)))
        };
        let req = match &timed_out {
            None => req.map(Body::new),
            Some(flag) => {
                let deadline = Box::pin(tokio::time::sleep(self.body_timeout));
                let flag = Arc::clone(flag);
                let limit = self.body_timeout;
                req.map(|inner| {
                    Body::new(TimedBody {
                        inner,
                        deadline,
                        flag,
                        limit,
                    })
                })
            }
        };
        let mut router = self.router.clone();
        Handled {
            inner: router.call(req),
            activity: Arc::clone(&self.activity),
            opened: self.opened,
            timed_out,
            peer: self.peer,
            stats: Arc::clone(&self.stats),
            limit: self.body_timeout,
        }
    }
}

/// The router's answer, replaced by a 408 when the body did not arrive in time.
struct Handled {
    inner: axum::routing::future::RouteFuture<Infallible>,
    activity: Arc<Activity>,
    opened: Instant,
    timed_out: Option<Arc<AtomicBool>>,
    peer: SocketAddr,
    stats: Arc<Stats>,
    limit: Duration,
}

impl Future for Handled {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Poll::Ready(result) = Pin::new(&mut self.inner).poll(cx) else {
            return Poll::Pending;
        };
        let Ok(response) = result;
        let now = stamp(self.opened, Instant::now());
        self.activity.head_started.store(0, Ordering::Relaxed);
        self.activity.last_response.store(now, Ordering::Release);
        self.activity.busy.store(false, Ordering::Release);
        let response = match &self.timed_out {
            Some(flag) if flag.load(Ordering::Acquire) => {
                self.stats.bite(Limit::BodyRead, self.peer);
                body_timeout_response(&response, self.limit)
            }
            _ => response,
        };
        Poll::Ready(Ok(response))
    }
}

/// 408 problem+json, keeping the request id the handler already answered with. The rest of
/// the body is still on the wire, so the connection cannot be reused.
fn body_timeout_response(answered: &Response<Body>, limit: Duration) -> Response<Body> {
    let request_id = answered
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(crate::request_id::new_request_id);
    // problem+json like every other error of the API (`http::problem`), built here: the listener
    // sits below the HTTP layer and does not import it.
    let status = StatusCode::REQUEST_TIMEOUT;
    let body = keyroll_proto::Problem {
        type_uri: "https://keyroll.dev/problems/request_timeout".into(),
        title: "Request Timeout".into(),
        status: status.as_u16(),
        detail: format!(
            "the request body did not arrive within {} (http.body_read_timeout)",
            humantime::format_duration(limit)
        ),
        code: "request_timeout".into(),
        kid: None,
        fingerprint: None,
        consumer: None,
        version: None,
        request_id: request_id.clone(),
    };
    let mut response = Response::new(Body::from(serde_json::to_vec(&body).unwrap_or_default()));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-request-id", v);
    }
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request body that fails once its deadline has passed.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<Sleep>>,
    flag: Arc<AtomicBool>,
    limit: Duration,
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Not complete within `http.body_read_timeout`.
    #[error("request body not received within {0:?} (http.body_read_timeout)")]
    Timeout(Duration),
    /// The connection failed.
    #[error(transparent)]
    Read(#[from] hyper::Error),
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(_))) | Poll::Pending if this.deadline.is_elapsed() => {
                this.flag.store(true, Ordering::Release);
                Poll::Ready(Some(Err(BodyError::Timeout(this.limit))))
            }
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    this.flag.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(BodyError::Timeout(this.limit))));
                }
                Poll::Pending
            }
            other => other.map_err(BodyError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Answers a connection beyond the cap without waiting: 503 if the socket takes it at once,
/// then close. What the client already sent is read first (without waiting), so that closing
/// does not reset the connection before it sees the answer.
fn shed(stream: TcpStream, peer: SocketAddr, stats: &Stats) {
    stats.bite(Limit::Connections, peer);
    const BODY: &str = "{\"type\":\"https://keyroll.dev/problems/too_many_connections\",\"title\":\"Service Unavailable\",\"status\":503,\"detail\":\"the server has reached http.max_connections open connections; retry shortly\",\"code\":\"too_many_connections\"}";
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let mut scratch = [0u8; 4096];
    for _ in 0..4 {
        match stream.try_read(&mut scratch) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let _ = stream.try_write(head.as_bytes());
}

async fn accept_failed(e: &io::Error, stats: &Stats) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    // Out of file descriptors, typically: accepting again at once would spin.
    stats.accept_error(e);
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The limits whose bites are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    HeaderRead,
    Idle,
    BodyRead,
    Connections,
}

const LIMITS: [Limit; 4] = [
    Limit::HeaderRead,
    Limit::Idle,
    Limit::BodyRead,
    Limit::Connections,
];

impl Limit {
    fn index(self) -> usize {
        match self {
            Limit::HeaderRead => 0,
            Limit::Idle => 1,
            Limit::BodyRead => 2,
            Limit::Connections => 3,
        }
    }

    fn setting(self) -> &'static str {
        match self {
            Limit::HeaderRead => "http.header_read_timeout",
            Limit::Idle => "http.idle_timeout",
            Limit::BodyRead => "http.body_read_timeout",
            Limit::Connections => "http.max_connections",
        }
    }

    fn value(self, limits: &HttpLimits) -> String {
        let d = |x: Duration| humantime::format_duration(x).to_string();
        match self {
            Limit::HeaderRead => d(limits.header_read_timeout),
            Limit::Idle => d(limits.idle_timeout),
            Limit::BodyRead => d(limits.body_read_timeout),
            Limit::Connections => limits.max_connections.to_string(),
        }
    }

    fn what(self) -> &'static str {
        match self {
            Limit::HeaderRead => "connections closed: no complete request head in time",
            Limit::Idle => "idle keep-alive connections closed",
            Limit::BodyRead => "requests answered 408: body not received in time",
            Limit::Connections => "connections refused with 503: at the connection limit",
        }
    }
}

/// Counts since the last report.
#[derive(Debug, Default)]
struct Stats {
    bites: [AtomicU64; 4],
    last_peer: [Mutex<Option<SocketAddr>>; 4],
    accept_errors: AtomicU64,
    last_accept_error: Mutex<Option<String>>,
    bad_requests: AtomicU64,
}

impl Stats {
    fn bite(&self, limit: Limit, peer: SocketAddr) {
        self.bites[limit.index()].fetch_add(1, Ordering::Relaxed);
        *self.last_peer[limit.index()].lock() = Some(peer);
    }

    fn accept_error(&self, e: &io::Error) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
        *self.last_accept_error.lock() = Some(e.to_string());
    }

    /// A connection ended in an error of hyper's. Requests it could not parse never reach a
    /// handler, so this line is their only trace; disconnects are not worth one.
    fn connection_error(&self, e: &hyper::Error, peer: SocketAddr) {
        let Some((kind, status)) = parse_error_kind(e) else {
            tracing::debug!(event = "http.connection_error", peer = %peer, error = %e, "connection ended: {e}");
            return;
        };
        if self.bad_requests.fetch_add(1, Ordering::Relaxed) >= BAD_REQUEST_LINES {
            return;
        }
        tracing::warn!(
            event = "http.bad_request",
            peer = %peer,
            kind,
            status,
            error = %e,
            "answered {status} before any handler: {e} (from {peer})"
        );
    }
}

/// The kind of a request hyper rejected, and the status hyper answered it with.
fn parse_error_kind(e: &hyper::Error) -> Option<(&'static str, u16)> {
    if !e.is_parse() {
        return None;
    }
    let text = e.to_string();
    let known = [
        ("message head is too large", "head_too_large", 431),
        ("URI too long", "uri_too_long", 414),
        ("invalid content-length", "invalid_content_length", 400),
        (
            "invalid transfer-encoding",
            "invalid_transfer_encoding",
            400,
        ),
        (
            "unexpected transfer-encoding",
            "invalid_transfer_encoding",
            400,
        ),
        ("invalid HTTP header", "invalid_header", 400),
        ("invalid URI", "invalid_uri", 400),
        ("invalid HTTP method", "invalid_method", 400),
        ("invalid HTTP version", "invalid_version", 505),
    ];
    Some(
        known
            .iter()
            .find(|(prefix, _, _)| text.starts_with(prefix))
            .map_or(("invalid_request", 400), |&(_, kind, status)| {
                (kind, status)
            }),
    )
}

/// Every `log_interval`, one line per limit that bit, with the count; at shutdown a last one.
async fn report(stats: Arc<Stats>, limits: HttpLimits, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(limits.log_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        write_report(&stats, &limits);
        if last {
            return;
        }
    }
}

fn write_report(stats: &Stats, limits: &HttpLimits) {
    let window_ms = u64::try_from(limits.log_interval.as_millis()).unwrap_or(u64::MAX);
    for limit in LIMITS {
        let count = stats.bites[limit.index()].swap(0, Ordering::Relaxed);
        if count == 0 {
            continue;
        }
        let peer = stats.last_peer[limit.index()].lock().take();
        let peer = peer.map(|p| p.to_string());
        let setting = limit.setting();
        let value = limit.value(limits);
        let what = limit.what();
        // Idle keep-alive connections closing is the normal end of a keep-alive connection.
        if limit == Limit::Idle {
            tracing::info!(
                event = "http.limit",
                limit = setting,
                value = value.as_str(),
                count,
                window_ms,
                last_peer = peer.as_deref(),
                "{count} {what} ({setting} = {value})"
            );
        } else {
            tracing::warn!(
                event = "http.limit",
                limit = setting,
                value = value.as_str(),
                count,
                window_ms,
                last_peer = peer.as_deref(),
                "{count} {what} ({setting} = {value})"
            );
        }
    }
    let errors = stats.accept_errors.swap(0, Ordering::Relaxed);
    if errors > 0 {
        let error = stats.last_accept_error.lock().take().unwrap_or_default();
        tracing::error!(
            event = "http.accept_failed",
            count = errors,
            window_ms,
            error = error.as_str(),
            "{errors} connections could not be accepted: {error} (is the open-files limit below http.max_connections?)"
        );
    }
    let bad = stats.bad_requests.swap(0, Ordering::Relaxed);
    if bad > BAD_REQUEST_LINES {
        let suppressed = bad - BAD_REQUEST_LINES;
        tracing::warn!(
            event = "http.bad_request.suppressed",
            count = suppressed,
            window_ms,
            "{suppressed} more requests rejected before any handler were not logged one by one"
        );
    }
}

/// Each connection is a file descriptor: a cap above the process's limit would never be
/// reached, accepting would fail instead.
fn warn_if_fd_limit_below(max_connections: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(soft) = soft
        && soft < max_connections.saturating_add(64)
    {
        tracing::warn!(
            event = "http.fd_limit",
            open_files = soft,
            max_connections,
            "the open-files limit ({soft}) is below http.max_connections ({max_connections}) plus headroom: raise it (ulimit -n, LimitNOFILE=) or lower http.max_connections"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 10,
            max_headers: 200,
            max_header_bytes: 128 * 1024,
            log_interval: Duration::from_secs(10),
        }
    }

    #[test]
    fn timers_follow_the_connection_phase() {
        let l = limits();
        let t0 = Instant::now();
        let a = Activity::default();
        let s = Duration::from_secs;
        // New connection: the header timeout counts from the accept.
        assert_eq!(a.verdict(t0, t0 + s(1), &l), Verdict::Wait(t0 + s(10)));
        assert_eq!(
            a.verdict(t0, t0 + s(10), &l),
            Verdict::Close(Limit::HeaderRead)
        );
        // In flight: nothing of ours applies.
        a.busy.store(true, Ordering::Relaxed);
        assert!(matches!(a.verdict(t0, t0 + s(500), &l), Verdict::Wait(_)));
        // Answered at 2 s: idle from then.
        a.busy.store(false, Ordering::Relaxed);
        a.last_response
            .store(stamp(t0, t0 + s(2)), Ordering::Relaxed);
        assert_eq!(a.verdict(t0, t0 + s(20), &l), Verdict::Wait(t0 + s(30)));
        assert_eq!(a.verdict(t0, t0 + s(70), &l), Verdict::Wait(t0 + s(77)));
        assert_eq!(a.verdict(t0, t0 + s(77), &l), Verdict::Close(Limit::Idle));
        // A byte of the next head at 30 s: the header timeout from then.
        a.head_started
            .store(stamp(t0, t0 + s(30)), Ordering::Relaxed);
        assert_eq!(a.verdict(t0, t0 + s(31), &l), Verdict::Wait(t0 + s(40)));
        assert_eq!(
            a.verdict(t0, t0 + s(40), &l),
            Verdict::Close(Limit::HeaderRead)
        );
    }
}
