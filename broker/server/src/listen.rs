//! The listeners: a dual-stack TCP bind, accepting on each transport when it is on, and QUIC
//! connections, whose streams are AMQP connections or channel streams of one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use warren_core::ConnectionConfig;

use crate::alarms::Alarms;
use crate::channel_streams::ChannelStreams;
use crate::driver::drive;
use crate::node::NodeRef;

/// Binds a TCP listener; the IPv6 wildcard (`[::]`, the AMQP default as in RabbitMQ) takes
/// IPv4 clients too, whatever the host's `bindv6only`. On a host without IPv6 the wildcard
/// falls back to `0.0.0.0`.
pub(crate) fn bind_dual_stack(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = |addr: SocketAddr, dual: bool| -> std::io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        if dual {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        TcpListener::from_std(socket.into())
    };
    let wildcard_v6 = matches!(addr.ip(), std::net::IpAddr::V6(ip) if ip.is_unspecified());
    match bind(addr, wildcard_v6) {
        Err(e) if wildcard_v6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            warn!(%addr, %v4, "no IPv6 here: listening on IPv4 only");
            bind(v4, false)
        }
        r => r,
    }
}

/// The next QUIC connection attempt, when QUIC is on; never completes otherwise.
pub(crate) async fn accept_quic(
    quic: &Option<(quinn::Endpoint, std::path::PathBuf)>,
) -> Option<quinn::Incoming> {
    match quic {
        Some((endpoint, _)) => endpoint.accept().await,
        None => std::future::pending().await,
    }
}

/// One QUIC connection. A stream that starts with the AMQP protocol header is one AMQP
/// connection (mapping v1); a stream that starts with the channel-stream preamble joins the
/// AMQP connection whose stream id follows it, and carries channels of that connection.
pub(crate) async fn serve_quic(
    incoming: quinn::Incoming,
    node: NodeRef,
    alarms: Arc<Alarms>,
    config: ConnectionConfig,
    stop: watch::Receiver<bool>,
) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => return info!(error = %e, "QUIC handshake failed"),
    };
    let peer = conn.remote_address();
    let identity = crate::quic::peer_identity(&conn);
    debug!(%peer, "QUIC connection");
    let (classified_tx, mut classified) = tokio::sync::mpsc::unbounded_channel();
    let mut routes: HashMap<u64, tokio::sync::mpsc::UnboundedSender<crate::channel_streams::Opened>> =
        HashMap::new();
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                // Reading the first octets may wait on the client: do it off this loop.
                Ok((send, recv)) => {
                    let tx = classified_tx.clone();
                    tokio::spawn(async move {
                        if let Some(kind) = classify(send, recv).await {
                            let _ = tx.send(kind);
                        }
                    });
                }
                Err(_) => break,
            },
            Some(kind) = classified.recv() => match kind {
                Stream::Connection { id, prefix, send, recv } => {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    let channels = ChannelStreams::new(rx, config.write_timeout);
                    // AMQP connections that ended on this QUIC connection are forgotten.
                    routes.retain(|_, tx| !tx.is_closed());
                    routes.insert(id, tx);
                    let stream = tokio::io::join(std::io::Cursor::new(prefix).chain(recv), send);
                    streams.spawn(drive(stream, peer, None, node.clone(), alarms.clone(), config.clone(), stop.clone(), identity.clone(), Some(channels)));
                }
                Stream::Channel { of, send, recv } => {
                    // QUIC bounds the streams open at once, and with them this queue.
                    let refused = match routes.get(&of) {
                        Some(tx) => tx.send((recv, send)).err().map(|e| e.0),
                        None => Some((recv, send)),
                    };
                    if let Some((mut recv, _)) = refused {
                        let _ = recv.stop(1u32.into());
                        debug!(%peer, of, "channel stream for an unknown AMQP connection");
                    }
                }
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    while streams.join_next().await.is_some() {}
}

/// How long a new QUIC stream may take to send its first octets.
const STREAM_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A new QUIC stream, by its first octets.
enum Stream {
    Connection { id: u64, prefix: Vec<u8>, send: quinn::SendStream, recv: quinn::RecvStream },
    Channel { of: u64, send: quinn::SendStream, recv: quinn::RecvStream },
}

async fn classify(send: quinn::SendStream, mut recv: quinn::RecvStream) -> Option<Stream> {
    let id = u64::from(recv.id());
    // A stream that never says what it is holds one of the connection's stream slots: not
    // for longer than a TCP client may take over its protocol header.
    let head = async {
        let mut head = [0u8; 8];
        recv.read_exact(&mut head).await.ok()?;
        if &head != crate::channel_streams::PREAMBLE {
            return Some((head, None));
        }
        let mut of = [0u8; 8];
        recv.read_exact(&mut of).await.ok()?;
        Some((head, Some(u64::from_be_bytes(of))))
    };
    match tokio::time::timeout(STREAM_HEADER_TIMEOUT, head).await.ok()?? {
        (head, None) => Some(Stream::Connection { id, prefix: head.to_vec(), send, recv }),
        (_, Some(of)) => Some(Stream::Channel { of, send, recv }),
    }
}

/// The next plain TCP connection, when that listener is on; never completes otherwise.
pub(crate) async fn accept_tcp(listener: &Option<TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// The next TLS client, when AMQPS is on; never completes otherwise.
pub(crate) async fn accept_tls(
    amqps: &Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
) -> std::io::Result<(TcpStream, SocketAddr, tokio_rustls::TlsAcceptor)> {
    match amqps {
        Some((listener, acceptor)) => listener.accept().await.map(|(s, peer)| (s, peer, acceptor.clone())),
        None => std::future::pending().await,
    }
}
