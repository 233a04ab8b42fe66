//! One AMQP connection's task: reads the socket into the sans-IO connection machine, lets it
//! act on the shared broker under the lock, writes what it produced, and wakes the tasks of
//! the other connections the broker queued frames for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use warren_core::connection::code_name;
use warren_core::{ConnId, Connection, ConnectionConfig, Event};

use crate::alarms::Alarms;
use crate::channel_streams::{ChannelStreams, Input, StreamEvent};
use crate::node::NodeRef;
use crate::shared::{SharedRef, lock};

/// Holds back or lets go the deliveries of channels whose streams' clients stopped or started
/// reading again (see [`crate::channel_streams`]); what is let go is pulled next.
fn hold_deliveries(streams: &mut ChannelStreams, id: ConnId, shared: &SharedRef, notify: &Notify) {
    let changes = streams.holds();
    if changes.is_empty() {
        return;
    }
    let mut s = lock(shared);
    for (channel, held) in changes {
        s.broker.hold_deliveries(id, channel, held);
    }
    s.wake_others(Some(id));
    notify.notify_one();
}

/// Completes when a held channel stream may take deliveries again; never without streams.
async fn stream_released(released: &Option<crate::channel_streams::Released>) {
    match released {
        Some(r) => r.wait().await,
        None => std::future::pending().await,
    }
}

/// The next channel-stream event of a QUIC connection; never completes without them.
async fn next_stream_event(streams: &mut Option<ChannelStreams>) -> Option<StreamEvent> {
    match streams {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs one AMQP connection over any byte stream: TCP, TLS, or a QUIC stream.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    node: NodeRef,
    alarms: Arc<Alarms>,
    config: ConnectionConfig,
    mut stop: watch::Receiver<bool>,
    external: Option<String>,
    mut channel_streams: Option<ChannelStreams>,
) {
    let write_timeout = config.write_timeout;
    // An IPv4 client of the dual-stack listener arrives as ::ffff:a.b.c.d: it is a.b.c.d
    // (loopback for guest, and in the logs).
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    // RabbitMQ's name for a connection, which the management API lists and closes it by.
    let name = match local {
        Some(l) => format!("{peer} -> {}", SocketAddr::new(l.ip().to_canonical(), l.port())),
        // Several AMQP connections share one QUIC connection's address: numbered apart.
        None => {
            static QUIC_STREAMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
            format!("{peer} -> quic#{}", QUIC_STREAMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
        }
    };
    let mut conn = Connection::new(config, peer.ip().is_loopback(), Instant::now().into_std())
        .with_name(name)
        .with_external_identity(external);
    let notify = Arc::new(Notify::new());
    // The broker of the vhost the connection opens; `/`'s until its handshake names one.
    let mut shared = node.default_broker().clone();
    let mut read_size = MIN_READ;
    let mut registered: Option<ConnId> = None;
    let mut release = ReleaseOnPanic { shared: shared.clone(), peer, id: None };
    let mut user: Option<String> = None;
    let released = channel_streams.as_ref().map(ChannelStreams::released);
    debug!(%peer, "accepted");
    loop {
        let deadline = conn.poll_timeout().map(Instant::from_std);
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        // Under a resource alarm a publishing connection is not read from: TCP backpressure
        // holds its publishes, as in RabbitMQ.
        // Nor is one that waits for the cluster to answer a change it asked for.
        let may_read = !(alarms.any() || node.is_clustered()) || conn.may_read(&lock(&shared).broker);
        let mut woke = false;
        tokio::select! {
            read = read_some(&mut stream, conn.read_buf(), &mut read_size), if may_read => {
                // Decoding needs no broker: outside the lock, in parallel with other connections.
                conn.decode_input();
                // Until it is open (not after: a connection the broker closed has no id either,
                // and must unregister from the broker it registered with).
                if registered.is_none() && conn.id().is_none() {
                    shared = node.for_handshake(&conn).clone();
                    release.shared = shared.clone();
                }
                let now = Instant::now().into_std();
                let mut s = lock(&shared);
                // A panic in the same input that opened the session (frames pipelined behind
                // connection.open) must still release it: its id is known only to `conn`.
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match read {
                    Ok(n) if n > 0 => conn.handle_input(now, &mut s.broker),
                    _ => conn.handle_eof(&mut s.broker),
                }));
                if let Err(panic) = handled {
                    release.id = conn.id();
                    drop(s);
                    std::panic::resume_unwind(panic);
                }
                woke = s.wake_others(conn.id());
            }
            () = notify.notified() => {
                let mut s = lock(&shared);
                if conn.has_pending_input() {
                    // Frames held behind a change the cluster has answered now.
                    conn.resume_input(Instant::now().into_std(), &mut s.broker);
                } else {
                    conn.pull_outbound(Instant::now().into_std(), &mut s.broker);
                }
                // A pull can dispatch held-back deliveries, some to other connections.
                woke = s.wake_others(conn.id());
            }
            () = sleep => {
                let now = Instant::now().into_std();
                let mut s = lock(&shared);
                conn.handle_timeout(now, &mut s.broker);
                conn.pull_outbound(now, &mut s.broker);
                s.wake_others(conn.id());
            }
            Ok(()) = stop.changed() => {
                let now = Instant::now().into_std();
                let mut s = lock(&shared);
                conn.shutdown(now, &mut s.broker);
                s.wake_others(conn.id());
            }
            () = stream_released(&released) => {
                // Handled below, with the holds of every stream.
            }
            // Not read from under an alarm either (see `channel_streams`).
            Some(event) = next_stream_event(&mut channel_streams), if may_read => {
                let Some(streams) = channel_streams.as_mut() else { continue };
                let input = streams.handle(event, conn.frame_max());
                let now = Instant::now().into_std();
                let mut s = lock(&shared);
                match input {
                    Input::Frames(frames) => conn.handle_frames(now, frames, &mut s.broker),
                    Input::Error(e) => conn.handle_codec_error(now, e, &mut s.broker),
                    Input::Violation(code, text) => conn.close(now, code, &text, &mut s.broker),
                    Input::Ended(channels) => conn.drop_channels(&channels, &mut s.broker),
                    Input::Nothing => {}
                }
                s.wake_others(conn.id());
            }
        }
        if registered.is_none()
            && let Some(id) = conn.id()
        {
            lock(&shared).register(id, notify.clone());
            registered = Some(id);
            release.id = Some(id);
        }
        while let Some(event) = conn.poll_event() {
            log_event(peer, &mut user, event);
        }
        // Encodes what was taken from the broker under the lock, now without it, a chunk at a
        // time, and writes it all before reading more: the client's reading paces its input.
        let mut write_failed = false;
        while conn.has_output() {
            let mut out = conn.take_output();
            let room = match channel_streams.as_mut() {
                Some(streams) => {
                    out = streams.route(out);
                    streams.wait_for_room(write_timeout).await
                }
                None => Ok(()),
            };
            let written = match room {
                Ok(()) => write_out(&mut stream, &out, write_timeout).await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    warn!(%peer, user = user.as_deref().unwrap_or(""), error = %e, "closing a connection that does not read");
                } else {
                    debug!(%peer, error = %e, "write failed");
                }
                let mut s = lock(&shared);
                conn.handle_eof(&mut s.broker);
                s.wake_others(None);
                write_failed = true;
                break;
            }
        }
        if write_failed || conn.is_closed() {
            break;
        }
        if let (Some(streams), Some(id)) = (channel_streams.as_mut(), conn.id()) {
            hold_deliveries(streams, id, &shared, &notify);
        }
        // Tokio runs a task woken from this one next on this worker, in a slot other workers
        // cannot steal from, but only once this task yields. A publisher whose socket always
        // has more to read would hold its consumers off until its cooperative budget ran out
        // (hundreds of thousands of messages); yielding lets them take their deliveries now.
        if woke {
            tokio::task::yield_now().await;
        }
        // Deliveries are waiting for room in this connection's window: pull them next.
        if conn.has_backlog() {
            notify.notify_one();
        }
    }
    {
        let mut s = lock(&shared);
        conn.handle_eof(&mut s.broker);
        if let Some(id) = registered {
            s.unregister(id);
        }
        s.wake_others(None);
    }
    while let Some(event) = conn.poll_event() {
        log_event(peer, &mut user, event);
    }
    let _ = stream.shutdown().await;
    linger(&mut stream).await;
}

/// How long, and how much, a closed connection's late frames are read and dropped.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_MAX: usize = 64 << 20;

/// Reads and drops what the client still sends after the close, until it closes its side
/// (or [`LINGER`], or [`LINGER_MAX`] octets): a client that queued frames behind its
/// connection.close would otherwise get a reset instead of its close-ok, as RabbitMQ avoids.
async fn linger<S: AsyncRead + Unpin>(stream: &mut S) {
    let drain = async {
        let mut buf = vec![0u8; 8192];
        let mut read = 0;
        while read < LINGER_MAX {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => read += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Releases a connection's session when its task unwinds. A panic in a connection's handling
/// is a bug; it costs that connection (its unacked messages requeued, its consumers cancelled,
/// its exclusive queues deleted, as at a disconnect) and a log line, while every other
/// connection carries on: the broker lock ignores the poison (see [`lock`]).
struct ReleaseOnPanic {
    shared: SharedRef,
    peer: SocketAddr,
    id: Option<ConnId>,
}

impl Drop for ReleaseOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        tracing::error!(peer = %self.peer, "a connection's handling panicked: its session is released");
        // Not here, during the unwind: a second panic in broker code would abort the process.
        // A task of its own costs only itself if it panics too.
        if let (Some(id), Ok(runtime)) = (self.id, tokio::runtime::Handle::try_current()) {
            let shared = self.shared.clone();
            runtime.spawn(async move {
                let mut s = lock(&shared);
                s.broker.disconnect(id);
                s.unregister(id);
                s.wake_all();
            });
        }
    }
}

/// Writes all of `buf` and flushes (a TLS stream may hold records back after accepting the
/// bytes), failing with `TimedOut` when one step makes no progress for `timeout`. Progress,
/// not the whole write, is timed: a large delivery to a slow but reading client is fine.
pub(crate) async fn write_out<S: AsyncWrite + Unpin>(
    stream: &mut S,
    mut buf: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    let stalled =
        || std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no write progress in {timeout:?}"));
    while !buf.is_empty() {
        match tokio::time::timeout(timeout, stream.write(buf)).await {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => buf = &buf[n..],
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(stalled()),
        }
    }
    tokio::time::timeout(timeout, stream.flush()).await.map_err(|_| stalled())?
}

/// Socket reads start this large...
const MIN_READ: usize = 8 << 10;
/// ...and grow to this for a connection whose reads fill the buffer (a busy publisher): one
/// read, and one turn of the broker lock, then covers hundreds of publishes. Idle connections
/// keep the small buffer.
const MAX_READ: usize = 128 << 10;

/// Reads into `buf` with room for `size` octets, adapting `size` to how full reads come back.
async fn read_some<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut bytes::BytesMut,
    size: &mut usize,
) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < *size {
        buf.reserve(*size);
    }
    let room = buf.capacity() - buf.len();
    let n = stream.read_buf(buf).await?;
    *size = if n == room {
        (*size * 2).min(MAX_READ)
    } else if n < *size / 8 {
        (*size / 2).max(MIN_READ)
    } else {
        *size
    };
    Ok(n)
}

fn log_event(peer: SocketAddr, user: &mut Option<String>, event: Event) {
    let who = user.clone().unwrap_or_default();
    match event {
        Event::Opened { user: u, vhost } => {
            info!(%peer, user = %u, %vhost, "connection opened");
            *user = Some(u);
        }
        Event::AuthFailed { reason } => warn!(%peer, %reason, "login refused"),
        Event::Closed { code: 0, text, by_peer } => {
            info!(%peer, user = %who, reason = %text, by_peer, "connection closed")
        }
        Event::Closed { code: 200, by_peer, .. } => info!(%peer, user = %who, by_peer, "connection closed"),
        Event::Closed { code, text, by_peer } => {
            warn!(%peer, user = %who, code, name = code_name(code), reason = %text, by_peer, "connection closed with error")
        }
    }
}
