//! Clients and a broker in memory, on virtual time: what the driver in `broker/server` does
//! with sockets and a clock, done here with byte buffers and a `now` that moves only when a
//! test says so (quinn-proto's tests work this way). Protocol tests play a client's frames
//! and read the broker's; heartbeats, TTLs, retries and timeouts take no wall time and fire
//! exactly when due.
//!
//! Like the driver, the harness hands every input to the connection machine, then lets each
//! connection the broker woke pull its frames, and encodes everything into each client's
//! inbox. A client's inbox holds what the broker sent it, to be decoded frame by frame.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use warren_codec::{
    ChannelOpen, ConnectionClose, ConnectionCloseOk, ConnectionOpen, ConnectionStartOk, ConnectionTuneOk,
    Frame, Method, PROTOCOL_HEADER, decode_frame,
};

use crate::broker::{Broker, BrokerConfig};
use crate::connection::{Connection, ConnectionConfig};

/// A client of the harness, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client(usize);

#[derive(Debug)]
struct Peer {
    conn: Connection,
    /// What the broker sent, not yet read by the test.
    inbox: BytesMut,
}

/// A broker and its clients, in memory.
#[derive(Debug)]
pub struct Harness {
    /// The broker model; tests read its queues directly.
    pub broker: Broker,
    config: ConnectionConfig,
    peers: Vec<Peer>,
    now: Instant,
    /// Wall-clock milliseconds at `start`.
    unix_start: u64,
    start: Instant,
    woken: Vec<crate::ConnId>,
}

/// Wall-clock milliseconds the harness's time starts at: some fixed day, so tests agree.
const UNIX_START_MS: u64 = 1_700_000_000_000;

impl Harness {
    /// A broker with the default configuration, its clock starting at `start`.
    pub fn new(start: Instant) -> Self {
        Self::with(start, BrokerConfig::default(), ConnectionConfig::default())
    }

    /// A broker built from `broker`, whose connections get `connection`.
    pub fn with(start: Instant, broker: BrokerConfig, connection: ConnectionConfig) -> Self {
        let mut b = Broker::new(broker, start);
        b.set_time(start, UNIX_START_MS);
        Harness {
            broker: b,
            config: connection,
            peers: Vec::new(),
            now: start,
            unix_start: UNIX_START_MS,
            start,
            woken: Vec::new(),
        }
    }

    /// The harness's now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// A new client whose socket just opened (from loopback), nothing sent yet.
    pub fn connect(&mut self) -> Client {
        let conn = Connection::new(self.config.clone(), true, self.now);
        self.peers.push(Peer { conn, inbox: BytesMut::new() });
        Client(self.peers.len() - 1)
    }

    /// A client that sent the protocol header and a PLAIN start-ok with `response`
    /// (`\0user\0password`), having read connection.start.
    pub fn login(&mut self, response: &'static [u8]) -> Client {
        let c = self.connect();
        self.send(c, PROTOCOL_HEADER);
        assert!(matches!(self.method(c), Some(Method::ConnectionStart(_))), "expected connection.start");
        let start_ok = ConnectionStartOk {
            mechanism: "PLAIN".into(),
            response: Bytes::from_static(response),
            locale: "en_US".into(),
            ..Default::default()
        };
        self.send_method(c, 0, start_ok);
        c
    }

    /// A client through the handshake as guest into `vhost`, asking for `frame_max` and
    /// `heartbeat` (seconds).
    pub fn open_with(&mut self, vhost: &str, frame_max: u32, heartbeat: u16) -> Client {
        let c = self.login(b"\0guest\0guest");
        assert!(matches!(self.method(c), Some(Method::ConnectionTune(_))), "expected connection.tune");
        self.send_method(c, 0, ConnectionTuneOk { channel_max: 0, frame_max, heartbeat });
        self.send_method(c, 0, ConnectionOpen { virtual_host: vhost.into(), ..Default::default() });
        match self.method(c) {
            Some(Method::ConnectionOpenOk(_)) => c,
            other => panic!("expected connection.open-ok, got {other:?}"),
        }
    }

    /// A client through the handshake as guest into `/`, with no heartbeat.
    pub fn open(&mut self) -> Client {
        self.open_with("/", 131_072, 0)
    }

    /// Opens channel `ch` and reads its open-ok.
    pub fn open_channel(&mut self, c: Client, ch: u16) {
        self.send_method(c, ch, ChannelOpen::default());
        match self.method(c) {
            Some(Method::ChannelOpenOk(_)) => {}
            other => panic!("expected channel.open-ok, got {other:?}"),
        }
    }

    /// Client `c` sends `bytes`.
    pub fn send(&mut self, c: Client, bytes: &[u8]) {
        self.broker_time();
        let now = self.now;
        let peer = &mut self.peers[c.0];
        peer.conn.read_buf().extend_from_slice(bytes);
        peer.conn.handle_input(now, &mut self.broker);
        self.flush();
    }

    /// Client `c` sends one frame.
    pub fn send_frame(&mut self, c: Client, f: Frame) {
        let mut b = BytesMut::new();
        f.encode(&mut b);
        self.send(c, &b);
    }

    /// Client `c` sends a method on channel `ch`.
    pub fn send_method(&mut self, c: Client, ch: u16, m: impl Into<Method>) {
        self.send_frame(c, Frame::method(ch, m));
    }

    /// Client `c`'s socket closes.
    pub fn disconnect(&mut self, c: Client) {
        self.broker_time();
        self.peers[c.0].conn.handle_eof(&mut self.broker);
        self.flush();
    }

    /// The next frame the broker sent `c`, if it sent one.
    pub fn recv(&mut self, c: Client) -> Option<Frame> {
        decode_frame(&mut self.peers[c.0].inbox, 0).expect("the broker sent a bad frame")
    }

    /// The next method the broker sent `c`, past heartbeats; `None` when nothing is waiting.
    pub fn method(&mut self, c: Client) -> Option<Method> {
        loop {
            match self.recv(c)? {
                Frame::Method { method, .. } => return Some(method),
                Frame::Heartbeat { .. } => continue,
                other => panic!("expected a method, got {other:?}"),
            }
        }
    }

    /// Every frame waiting for `c`.
    pub fn drain(&mut self, c: Client) -> Vec<Frame> {
        std::iter::from_fn(|| self.recv(c)).collect()
    }

    /// The octets waiting for `c`, undecoded (a protocol header is not a frame).
    pub fn take_raw(&mut self, c: Client) -> BytesMut {
        std::mem::take(&mut self.peers[c.0].inbox)
    }

    /// Whether the broker is done with `c`: its socket would be closed now.
    pub fn is_closed(&self, c: Client) -> bool {
        self.peers[c.0].conn.is_closed()
    }

    /// Reads up to connection.close (anything before it is skipped), answers close-ok, and
    /// checks that the broker then lets the connection go.
    pub fn expect_connection_close(&mut self, c: Client) -> ConnectionClose {
        let close = loop {
            match self.recv(c) {
                Some(Frame::Method { channel: 0, method: Method::ConnectionClose(close) }) => break close,
                Some(_) => continue,
                None => panic!("no connection.close (closed: {})", self.is_closed(c)),
            }
        };
        self.send_method(c, 0, ConnectionCloseOk {});
        assert!(self.is_closed(c), "connection still open after close-ok");
        close
    }

    /// Moves time on by `d`, doing on the way everything that falls due (the broker's timers
    /// and each connection's), each at its own deadline.
    pub fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        loop {
            let broker_due = self.broker.poll_timeout();
            let conn_due = self.peers.iter().filter_map(|p| p.conn.poll_timeout()).min();
            let Some(next) = [broker_due, conn_due].into_iter().flatten().min().filter(|t| *t <= until)
            else {
                break;
            };
            self.now = self.now.max(next);
            self.broker_time();
            self.broker.handle_timeout();
            let now = self.now;
            for p in &mut self.peers {
                if p.conn.poll_timeout().is_some_and(|t| t <= now) {
                    p.conn.handle_timeout(now, &mut self.broker);
                }
            }
            self.flush();
        }
        self.now = until;
        self.broker_time();
    }

    fn broker_time(&mut self) {
        let elapsed = self.now.duration_since(self.start).as_millis() as u64;
        self.broker.set_time(self.now, self.unix_start + elapsed);
    }

    /// As the driver after each step: connections the broker woke pull their frames, and
    /// everything encoded goes to the clients' inboxes.
    fn flush(&mut self) {
        let now = self.now;
        // Bounded: a broker that kept waking connections with nothing to send would be a bug
        // the tests should see, not hang on.
        for _ in 0..10_000 {
            self.broker.take_wakeups(&mut self.woken);
            let mut pulled = false;
            for p in &mut self.peers {
                let woken = p.conn.id().is_some_and(|id| self.woken.contains(&id));
                if woken || p.conn.has_backlog() {
                    p.conn.pull_outbound(now, &mut self.broker);
                    pulled = true;
                }
                while p.conn.has_output() {
                    let out = p.conn.take_output();
                    p.inbox.extend_from_slice(&out);
                }
            }
            self.woken.clear();
            if !pulled {
                return;
            }
        }
        panic!("the broker keeps waking connections");
    }
}
