//! Serving the HTTP endpoints (`/metrics`, the management API) with the bounds an open port
//! needs: a client must send its request headers within [`HEADER_TIMEOUT`], a connection lives
//! at most [`CONNECTION_LIFETIME`], and at most [`MAX_CONNECTIONS`] are open at once (past that
//! a new one is closed at once). A slow or idle client cannot hold file descriptors forever.
//!
//! Each request carries the peer's address as axum's `ConnectInfo`, for loopback-only users.

use std::net::SocketAddr;
use std::sync::Arc;
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

/// Serves `app` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, app: axum::Router, what: &'static str) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
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
        let app = app.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service =
                hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    app.clone().oneshot(req)
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, endpoint = what, error = %e, "HTTP connection ended"),
                Err(_) => debug!(%peer, endpoint = what, "HTTP connection closed at its lifetime"),
            }
        });
    }
}
