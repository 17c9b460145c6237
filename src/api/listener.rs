//! The HTTP server's front door: an accept loop over hyper's HTTP/1.1
//! connections with limits an idle flood cannot exhaust.
//!
//! - A request head must arrive within `header_read_timeout` of the
//!   connection opening (or, on a kept-alive connection, of the next
//!   request's first byte); a kept-alive connection with no request for
//!   `idle_timeout` is closed. Idle means: no request in flight and not
//!   upgraded to a WebSocket (sockets have their own pings and timeouts).
//! - At most `max_connections` connections at once, and at most
//!   `max_connections_per_address` from one client address (trusted
//!   proxies exempt). At a cap the oldest *idle* connection (of that
//!   address, for the per-address cap) is closed to make room; only when
//!   none is idle is the new connection refused (503). Accepting never
//!   stops, so an idle flood cannot starve `/healthz` or the admin.

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{ApiConfig, Cidr};
use crate::task::TaskScope;

/// The peer's address, as `ConnectInfo<PeerAddr>` in request extensions.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// The connection limits of [`serve`].
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Peers exempt from the per-address cap (`api.trusted_proxies`).
    pub exempt: Vec<Cidr>,
}

impl Limits {
    pub fn from_config(api: &ApiConfig) -> Self {
        Self {
            max_connections: api.max_connections,
            max_connections_per_address: api.max_connections_per_address,
            header_read_timeout: api.header_read_timeout,
            idle_timeout: api.idle_timeout,
            exempt: api.trusted_proxies.clone(),
        }
    }
}

/// Serves `app` on `listener` until `scope` is cancelled, then lets every
/// connection finish its request (graceful) and returns once all HTTP
/// connections are closed. Upgraded connections (WebSockets) are closed by
/// their own handlers.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    scope: TaskScope,
) -> io::Result<()> {
    let registry = Arc::new(Registry::default());
    let limits = Arc::new(limits);
    let service = TowerToHyperService::new(app);
    // The HTTP connections, in a tracker of their own to wait for.
    let connections = scope.subsystem();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = scope.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors: make room by closing the oldest
                // idle connection. Either way, back off briefly.
                use rustix::io::Errno;
                let errno = Errno::from_io_error(&e);
                if errno == Some(Errno::MFILE) || errno == Some(Errno::NFILE) {
                    registry.evict_oldest_idle(None);
                }
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let ip = peer.ip().to_canonical();
        let exempt = limits.exempt.iter().any(|c| c.contains(ip));
        let Some(conn) = registry.admit(ip, exempt, &limits) else {
            tracing::debug!(%ip, "connection refused: at the connection cap, none idle");
            refuse(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(TrackedStream {
            stream,
            conn: Arc::clone(&conn),
        });
        let service = Tracking {
            inner: service.clone(),
            conn: Arc::clone(&conn),
            peer,
        };
        let limits = Arc::clone(&limits);
        let shutdown = scope.token();
        connections.spawn(serve_connection(io, service, conn, limits, shutdown));
    }
    // Refuse new connections at once while the open ones finish.
    drop(listener);
    connections.ended().await;
    Ok(())
}

/// Answers a connection there is no room for, without waiting on it.
fn refuse(stream: TcpStream) {
    const BODY: &str = r#"{"error":{"code":"too_many_connections","message":"the server holds as many connections as it may; retry later"}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = stream.try_write(answer.as_bytes());
}

async fn serve_connection(
    io: TokioIo<TrackedStream>,
    service: Tracking,
    conn: Arc<Conn>,
    limits: Arc<Limits>,
    shutdown: CancellationToken,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    // Our own timers below replace hyper's (which has no idle timeout).
    builder.header_read_timeout(None);
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    let mut graceful = false;
    loop {
        let deadline = conn.deadline(&limits);
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::trace!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = conn.changed.notified() => {}
            _ = sleep => {
                if conn.deadline(&limits).is_some_and(|at| at <= Instant::now()) {
                    tracing::debug!(peer = %conn.ip, "closing a connection that sent no request in time");
                    return;
                }
            }
            _ = conn.evict.notified() => {
                if conn.is_idle() {
                    tracing::debug!(peer = %conn.ip, "closing an idle connection to make room");
                    return;
                }
            }
            _ = shutdown.cancelled(), if !graceful => {
                graceful = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// What a connection is doing, for its timers and for eviction.
struct Activity {
    /// Requests whose response has not been fully written.
    in_flight: usize,
    /// Handed over to a WebSocket: never idle again.
    upgraded: bool,
    /// Whether a request was ever answered (kept alive since).
    served: bool,
    /// Since when no request has been in flight.
    idle_since: Instant,
    /// First byte of the next request on a kept-alive connection.
    first_byte: Option<Instant>,
}

/// One open connection, shared by its I/O, its service and its task.
struct Conn {
    id: u64,
    ip: IpAddr,
    registry: Arc<Registry>,
    activity: Mutex<Activity>,
    /// Wakes the connection's task when its deadline may have moved.
    changed: Notify,
    /// Asks the connection's task to close it, if it is still idle.
    evict: Notify,
}

impl Conn {
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let a = self.activity.lock().ok()?;
        if a.in_flight > 0 || a.upgraded {
            return None;
        }
        Some(match (a.served, a.first_byte) {
            (false, _) => a.idle_since + limits.header_read_timeout,
            (true, Some(first)) => first + limits.header_read_timeout,
            (true, None) => a.idle_since + limits.idle_timeout,
        })
    }

    fn is_idle(&self) -> bool {
        self.activity
            .lock()
            .map(|a| a.in_flight == 0 && !a.upgraded)
            .unwrap_or(false)
    }

    fn on_read(&self) {
        let Ok(mut a) = self.activity.lock() else {
            return;
        };
        if a.in_flight == 0 && !a.upgraded && a.first_byte.is_none() {
            a.first_byte = Some(Instant::now());
            drop(a);
            self.changed.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>) -> RequestGuard {
        if let Ok(mut a) = self.activity.lock() {
            a.in_flight += 1;
            a.first_byte = None;
            self.registry.set_busy(self.id);
        }
        self.changed.notify_one();
        RequestGuard(Arc::clone(self))
    }

    fn upgraded(&self) {
        if let Ok(mut a) = self.activity.lock() {
            a.upgraded = true;
        }
    }

    fn request_finished(&self) {
        if let Ok(mut a) = self.activity.lock() {
            a.in_flight = a.in_flight.saturating_sub(1);
            if a.in_flight == 0 && !a.upgraded {
                let now = Instant::now();
                a.served = true;
                a.idle_since = now;
                a.first_byte = None;
                self.registry.set_idle(self.id, now);
            }
        }
        self.changed.notify_one();
    }
}

/// Held from a request's head until its response body is written.
struct RequestGuard(Arc<Conn>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

struct Entry {
    ip: IpAddr,
    conn: std::sync::Weak<Conn>,
    /// Key in the idle sets while idle.
    idle_since: Option<Instant>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    /// Idle connections, oldest first.
    idle: BTreeSet<(Instant, u64)>,
    per_ip: HashMap<IpAddr, PerAddress>,
}

#[derive(Default)]
struct PerAddress {
    open: usize,
    idle: BTreeSet<(Instant, u64)>,
}

/// Every open connection, by id.
#[derive(Default)]
struct Registry {
    table: Mutex<Table>,
}

impl Registry {
    /// Registers a new connection, making room at the caps by evicting
    /// the oldest idle one; `None` when there is no room.
    fn admit(self: &Arc<Self>, ip: IpAddr, exempt: bool, limits: &Limits) -> Option<Arc<Conn>> {
        let mut table = self.table.lock().ok()?;
        if !exempt {
            let open = table.per_ip.get(&ip).map_or(0, |p| p.open);
            if open >= limits.max_connections_per_address && !table.evict_oldest(Some(ip)) {
                return None;
            }
        }
        if table.conns.len() >= limits.max_connections && !table.evict_oldest(None) {
            return None;
        }
        let id = table.next_id;
        table.next_id += 1;
        let now = Instant::now();
        let conn = Arc::new(Conn {
            id,
            ip,
            registry: Arc::clone(self),
            activity: Mutex::new(Activity {
                in_flight: 0,
                upgraded: false,
                served: false,
                idle_since: now,
                first_byte: None,
            }),
            changed: Notify::new(),
            evict: Notify::new(),
        });
        table.conns.insert(
            id,
            Entry {
                ip,
                conn: Arc::downgrade(&conn),
                idle_since: None,
            },
        );
        table.per_ip.entry(ip).or_default().open += 1;
        table.mark_idle(id, now);
        Some(conn)
    }

    fn evict_oldest_idle(&self, ip: Option<IpAddr>) {
        if let Ok(mut table) = self.table.lock() {
            table.evict_oldest(ip);
        }
    }

    fn set_idle(&self, id: u64, since: Instant) {
        if let Ok(mut table) = self.table.lock() {
            table.mark_idle(id, since);
        }
    }

    fn set_busy(&self, id: u64) {
        if let Ok(mut table) = self.table.lock() {
            table.mark_busy(id);
        }
    }

    fn remove(&self, id: u64) {
        let Ok(mut table) = self.table.lock() else {
            return;
        };
        table.mark_busy(id);
        if let Some(entry) = table.conns.remove(&id)
            && let Some(per) = table.per_ip.get_mut(&entry.ip)
        {
            per.open = per.open.saturating_sub(1);
            if per.open == 0 {
                table.per_ip.remove(&entry.ip);
            }
        }
    }
}

impl Table {
    fn mark_idle(&mut self, id: u64, since: Instant) {
        self.mark_busy(id);
        let Some(entry) = self.conns.get_mut(&id) else {
            return;
        };
        entry.idle_since = Some(since);
        let ip = entry.ip;
        self.idle.insert((since, id));
        self.per_ip.entry(ip).or_default().idle.insert((since, id));
    }

    fn mark_busy(&mut self, id: u64) {
        let Some(entry) = self.conns.get_mut(&id) else {
            return;
        };
        if let Some(since) = entry.idle_since.take() {
            let ip = entry.ip;
            self.idle.remove(&(since, id));
            if let Some(per) = self.per_ip.get_mut(&ip) {
                per.idle.remove(&(since, id));
            }
        }
    }

    /// Asks the oldest idle connection (of `ip`, if given) to close. It
    /// leaves the idle sets at once, so it is asked only once.
    fn evict_oldest(&mut self, ip: Option<IpAddr>) -> bool {
        loop {
            let oldest = match ip {
                Some(ip) => self.per_ip.get(&ip).and_then(|p| p.idle.first().copied()),
                None => self.idle.first().copied(),
            };
            let Some((_, id)) = oldest else {
                return false;
            };
            self.mark_busy(id);
            let conn = self.conns.get(&id).and_then(|e| e.conn.upgrade());
            if let Some(conn) = conn {
                conn.evict.notify_one();
                return true;
            }
        }
    }
}

/// A connection's socket: reports reads to its [`Conn`] and leaves the
/// registry when dropped (for a WebSocket, when the socket closes).
struct TrackedStream {
    stream: TcpStream,
    conn: Arc<Conn>,
}

impl Drop for TrackedStream {
    fn drop(&mut self) {
        self.conn.registry.remove(self.conn.id);
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.conn.on_read();
        }
        polled
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The router as hyper's service, marking requests in flight and giving
/// handlers the peer address (`ConnectInfo<PeerAddr>`).
#[derive(Clone)]
struct Tracking {
    inner: TowerToHyperService<Router>,
    conn: Arc<Conn>,
    peer: SocketAddr,
}

impl hyper::service::Service<Request<Incoming>> for Tracking {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let guard = self.conn.request_started();
        request
            .extensions_mut()
            .insert(ConnectInfo(PeerAddr(self.peer)));
        let conn = Arc::clone(&self.conn);
        let answer = hyper::service::Service::call(&self.inner, request);
        Box::pin(async move {
            let response = answer.await?;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                conn.upgraded();
            }
            Ok(response.map(|body| {
                Body::new(TrackedBody {
                    inner: body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// A response body that ends its request's time in flight when dropped
/// (hyper drops it once written, or when the connection goes).
struct TrackedBody {
    inner: Body,
    _guard: RequestGuard,
}

impl hyper::body::Body for TrackedBody {
    type Data = hyper::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_address: usize) -> Limits {
        Limits {
            max_connections: total,
            max_connections_per_address: per_address,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    /// Whether `conn` was asked to close (consumes the request).
    fn evicted(conn: &Conn) -> bool {
        use futures_util::FutureExt;
        conn.evict.notified().now_or_never().is_some()
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let registry = Arc::new(Registry::default());
        let limits = limits(3, 10);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = registry.admit(a, false, &limits).unwrap();
        let second = registry.admit(a, false, &limits).unwrap();
        let third = registry.admit(a, false, &limits).unwrap();
        // The oldest is busy: the next oldest idle one goes.
        let _busy = first.request_started();
        let _fourth = registry.admit(a, false, &limits).unwrap();
        assert!(!evicted(&first));
        assert!(evicted(&second));
        assert!(!evicted(&third));
        registry.remove(second.id);
        // Everything busy: refused.
        let _b3 = third.request_started();
        let _b4 = _fourth.request_started();
        assert!(registry.admit(a, false, &limits).is_none());
    }

    #[test]
    fn the_per_address_cap_evicts_within_the_address_only() {
        let registry = Arc::new(Registry::default());
        let limits = limits(100, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let other = registry.admit(b, false, &limits).unwrap();
        let a1 = registry.admit(a, false, &limits).unwrap();
        let _a2 = registry.admit(a, false, &limits).unwrap();
        let _a3 = registry.admit(a, false, &limits).unwrap();
        assert!(evicted(&a1));
        assert!(!evicted(&other), "another address is left alone");
        // Trusted proxies are exempt from the per-address cap.
        let proxied: Vec<_> = (0..5)
            .map(|_| registry.admit(proxy, true, &limits).unwrap())
            .collect();
        assert!(proxied.iter().all(|c| !evicted(c)));
    }

    #[test]
    fn deadlines_follow_the_connection_state() {
        let registry = Arc::new(Registry::default());
        let limits = limits(10, 10);
        let conn = registry
            .admit("192.0.2.1".parse().unwrap(), false, &limits)
            .unwrap();
        let opened = conn.activity.lock().unwrap().idle_since;
        assert_eq!(
            conn.deadline(&limits),
            Some(opened + limits.header_read_timeout)
        );
        let guard = conn.request_started();
        assert_eq!(
            conn.deadline(&limits),
            None,
            "no timer while a request runs"
        );
        drop(guard);
        let idle = conn.activity.lock().unwrap().idle_since;
        assert_eq!(conn.deadline(&limits), Some(idle + limits.idle_timeout));
        conn.on_read();
        let first = conn.activity.lock().unwrap().first_byte.unwrap();
        assert_eq!(
            conn.deadline(&limits),
            Some(first + limits.header_read_timeout)
        );
        let _ws = conn.request_started();
        conn.upgraded();
        drop(_ws);
        assert_eq!(
            conn.deadline(&limits),
            None,
            "WebSockets have their own timers"
        );
        assert!(!conn.is_idle());
    }
}
