//! Serving the HTTP endpoints (`/metrics`, the management API) with the bounds an open port
//! needs: a client must send its request headers within [`HEADER_TIMEOUT`], a response that
//! makes no progress for [`WRITE_TIMEOUT`] (a client that pipelines requests and reads no
//! answer) ends the connection, a connection lives at most [`CONNECTION_LIFETIME`], and at
//! most [`MAX_CONNECTIONS`] are open at once, [`MAX_CONNECTIONS_PER_IP`] from one address
//! (past that a new one is closed at once). A slow or idle client cannot hold file
//! descriptors forever, nor one address all of them.
//!
//! Each request carries the peer's address as axum's `ConnectInfo`, for loopback-only users.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tracing::{debug, warn};

/// Time from a connection's first byte (or the previous response) to the end of a request's
/// headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an HTTP connection stays open, however busy; clients reconnect.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// HTTP connections open at once, per listener.
pub const MAX_CONNECTIONS: usize = 256;
/// HTTP connections open at once from one IP address, per listener.
pub const MAX_CONNECTIONS_PER_IP: usize = 32;
/// Longest a response may wait for the client to take any of it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(15);

/// Connections open per peer address; a slot is given back when its [`IpSlot`] drops.
#[derive(Default)]
struct PerIp(Mutex<HashMap<IpAddr, usize>>);

struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = t.entry(ip).or_default();
        if *n >= MAX_CONNECTIONS_PER_IP {
            return None;
        }
        *n += 1;
        Some(IpSlot { table: self.clone(), ip })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut t = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

/// Whom a connection is counted against: an IPv4 address, or an IPv6 address's /64 (one
/// host is handed a whole /64, and could otherwise open 32 connections from each address).
fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// A stream whose writes fail with `TimedOut` once one has made no progress for `timeout`.
struct WriteTimeout<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteTimeout<S> {
    fn new(inner: S, timeout: Duration) -> Self {
        WriteTimeout { inner, timeout, stalled: None }
    }

    /// Turns a pending write into an error once it has been pending for the timeout.
    fn check<T>(&mut self, cx: &mut Context<'_>, r: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let timeout = self.timeout;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client took nothing for the write timeout",
        )))
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, r)
    }
}

/// Serves `app` on `listener` until the task is aborted; its connections end with it (they
/// hold the node, and with it the store, which a server started again on the same data
/// directory must be able to take).
pub async fn serve(listener: TcpListener, app: axum::Router, what: &'static str) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_ip = Arc::new(PerIp::default());
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, endpoint = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, endpoint = what, "too many HTTP connections: closed at once");
            continue;
        };
        let Some(slot) = per_ip.take(client_of(peer.ip())) else {
            debug!(%peer, endpoint = what, "too many HTTP connections from this address: closed at once");
            continue;
        };
        let app = app.clone();
        connections.spawn(async move {
            let _held = (permit, slot);
            let service =
                hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    app.clone().oneshot(req)
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(WriteTimeout::new(stream, WRITE_TIMEOUT)), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, endpoint = what, error = %e, "HTTP connection ended"),
                Err(_) => debug!(%peer, endpoint = what, "HTTP connection closed at its lifetime"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn an_ipv6_client_is_counted_by_its_64_and_an_ipv4_one_by_its_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("ip");
        assert_eq!(client_of(a), client_of(b));
        let mapped: IpAddr = "::ffff:10.0.0.7".parse().expect("ip");
        assert_eq!(client_of(mapped), "10.0.0.7".parse::<IpAddr>().expect("ip"));
    }

    #[tokio::test]
    async fn a_write_the_peer_never_takes_fails_after_the_timeout_and_one_it_takes_does_not() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut w = WriteTimeout::new(near, Duration::from_millis(100));
        let started = std::time::Instant::now();
        let e = w.write_all(&[7; 4096]).await.expect_err("nobody reads the far end");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(100));

        let (near, mut reader) = tokio::io::duplex(64);
        let mut w = WriteTimeout::new(near, Duration::from_millis(100));
        let drain = tokio::spawn(async move {
            let mut all = Vec::new();
            // Slowly, but never 100 ms without taking something.
            let mut buf = [0u8; 64];
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return all.len(),
                    Ok(n) => all.extend_from_slice(&buf[..n]),
                }
            }
        });
        w.write_all(&[7; 4096]).await.expect("a slow reader is not a stalled one");
        w.shutdown().await.expect("shutdown");
        drop(w);
        assert_eq!(drain.await.expect("drain"), 4096);
        let _ = far.read(&mut [0u8; 1]).await;
    }
}
