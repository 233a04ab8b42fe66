//! A minimal AMQP 0-9-1 client over any byte stream (TCP, TLS, QUIC), built from `warren-codec` frames: the handshake, a
//! channel, declare, publish, get and consume. [`AmqpOverQuic::open`] makes one AMQP
//! connection on its own stream (several can share one QUIC connection);
//! [`AmqpOverQuic::open_channel_stream`] adds a stream that carries one more channel of that
//! connection, so a slow channel does not hold up the others (see `broker/server/QUIC.md`).

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use warren_codec::*;

/// An AMQP client on any byte stream (TCP, TLS, a QUIC stream) with one open channel.
pub struct AmqpClient<R, W> {
    send: W,
    recv: R,
    buf: BytesMut,
    channel: u16,
}

/// The client on a QUIC stream: either an AMQP connection's own stream (channel 1) or one of
/// its channel streams.
pub type AmqpOverQuic = AmqpClient<quinn::RecvStream, quinn::SendStream>;

impl AmqpOverQuic {
    /// Opens a stream on `conn`, logs in as `user`/`password` with PLAIN, opens channel 1.
    pub async fn open(conn: &quinn::Connection, user: &str, password: &str) -> anyhow::Result<Self> {
        let (send, recv) = conn.open_bi().await.context("open a QUIC stream")?;
        AmqpClient::handshake(recv, send, user, password).await
    }

    /// The id of this stream, which channel streams of this AMQP connection name.
    pub fn stream_id(&self) -> u64 {
        u64::from(self.send.id())
    }

    /// Opens another stream on `conn` for channel `channel` of this AMQP connection.
    pub async fn open_channel_stream(&self, conn: &quinn::Connection, channel: u16) -> anyhow::Result<Self> {
        let (mut send, recv) = conn.open_bi().await.context("open a QUIC stream")?;
        send.write_all(warren::channel_streams::PREAMBLE).await?;
        send.write_all(&self.stream_id().to_be_bytes()).await?;
        let mut c = AmqpClient { send, recv, buf: BytesMut::new(), channel };
        c.send_method(channel, ChannelOpen::default()).await?;
        let Method::ChannelOpenOk(_) = c.method().await? else { bail!("expected channel.open-ok") };
        Ok(c)
    }

    /// Ends this stream without an AMQP close (a channel stream: its channels are released).
    pub fn close_stream(mut self) {
        let _ = self.send.finish();
        let _ = self.recv.stop(0u32.into());
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> AmqpClient<R, W> {
    /// Logs in on a fresh byte stream as `user`/`password` with PLAIN and opens channel 1.
    pub async fn handshake(recv: R, send: W, user: &str, password: &str) -> anyhow::Result<Self> {
        let mut c = AmqpClient { send, recv, buf: BytesMut::new(), channel: 1 };
        c.send.write_all(PROTOCOL_HEADER).await?;
        let Method::ConnectionStart(_) = c.method().await? else { bail!("expected connection.start") };
        let response = Bytes::from(format!("\0{user}\0{password}"));
        c.send_method(
            0,
            ConnectionStartOk {
                mechanism: "PLAIN".into(),
                response,
                locale: "en_US".into(),
                ..Default::default()
            },
        )
        .await?;
        let Method::ConnectionTune(t) = c.method().await? else { bail!("login refused") };
        c.send_method(
            0,
            ConnectionTuneOk { channel_max: t.channel_max, frame_max: t.frame_max, heartbeat: 0 },
        )
        .await?;
        c.send_method(0, ConnectionOpen { virtual_host: "/".into(), ..Default::default() }).await?;
        let Method::ConnectionOpenOk(_) = c.method().await? else { bail!("expected connection.open-ok") };
        c.send_method(1, ChannelOpen::default()).await?;
        let Method::ChannelOpenOk(_) = c.method().await? else { bail!("expected channel.open-ok") };
        Ok(c)
    }

    /// Opens channel `channel` on this same stream and makes it the one this client uses.
    pub async fn open_channel(&mut self, channel: u16) -> anyhow::Result<()> {
        self.send_method(channel, ChannelOpen::default()).await?;
        let Method::ChannelOpenOk(_) = self.method().await? else { bail!("expected channel.open-ok") };
        self.channel = channel;
        Ok(())
    }

    /// Starts an auto-ack consumer on `queue`; deliveries come from [`AmqpOverQuic::next_delivery`].
    pub async fn consume(&mut self, queue: &str) -> anyhow::Result<()> {
        let m = BasicConsume { queue: queue.into(), no_ack: true, ..Default::default() };
        self.send_method(self.channel, m).await?;
        match self.method().await? {
            Method::BasicConsumeOk(_) => Ok(()),
            other => bail!("consume: {other:?}"),
        }
    }

    /// The body of the next delivery to a consumer on this stream.
    pub async fn next_delivery(&mut self) -> anyhow::Result<Bytes> {
        let Method::BasicDeliver(_) = self.method().await? else { bail!("expected basic.deliver") };
        self.content().await
    }

    /// Declares a queue.
    pub async fn declare(&mut self, queue: &str) -> anyhow::Result<()> {
        self.send_method(self.channel, QueueDeclare { queue: queue.into(), ..Default::default() }).await?;
        match self.method().await? {
            Method::QueueDeclareOk(_) => Ok(()),
            other => bail!("declare: {other:?}"),
        }
    }

    /// Publishes `body` to `queue` through the default exchange.
    pub async fn publish(&mut self, queue: &str, body: &[u8]) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        let publish = BasicPublish { routing_key: queue.into(), ..Default::default() };
        encode_content(
            &mut out,
            self.channel,
            publish,
            &BasicProperties::default(),
            &Bytes::copy_from_slice(body),
            131_072,
        );
        self.send.write_all(&out).await?;
        self.send.flush().await?;
        Ok(())
    }

    /// Takes one message from `queue` (auto-ack), or None when it is empty.
    pub async fn get(&mut self, queue: &str) -> anyhow::Result<Option<Bytes>> {
        self.send_method(self.channel, BasicGet { queue: queue.into(), no_ack: true, ..Default::default() })
            .await?;
        match self.method().await? {
            Method::BasicGetEmpty(_) => Ok(None),
            Method::BasicGetOk(_) => self.content().await.map(Some),
            other => bail!("get: {other:?}"),
        }
    }

    /// A content header and its body frames.
    async fn content(&mut self) -> anyhow::Result<Bytes> {
        let Frame::Header { header, .. } = self.frame().await? else { bail!("expected a content header") };
        let mut body = BytesMut::new();
        while (body.len() as u64) < header.body_size {
            match self.frame().await? {
                Frame::Body { payload, .. } => body.extend_from_slice(&payload),
                other => bail!("expected a body frame, got {other:?}"),
            }
        }
        Ok(body.freeze())
    }

    /// Sends this stream's frames for channel `channel` from now on (to test a broker's checks).
    pub fn retarget(&mut self, channel: u16) {
        self.channel = channel;
    }

    /// Closes the AMQP connection and finishes the stream.
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.send_method(
            0,
            ConnectionClose { reply_code: 200, reply_text: "bye".into(), ..Default::default() },
        )
        .await?;
        let _ = self.method().await;
        self.send.shutdown().await?;
        Ok(())
    }

    /// Sends one method frame on `channel`.
    pub async fn send_method(&mut self, channel: u16, m: impl Into<Method>) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        Frame::method(channel, m).encode(&mut out);
        self.send.write_all(&out).await?;
        self.send.flush().await?;
        Ok(())
    }

    /// The next frame from the broker, whatever its channel.
    pub async fn frame(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(f) = decode_frame(&mut self.buf, 0)? {
                return Ok(f);
            }
            if self.recv.read_buf(&mut self.buf).await? == 0 {
                bail!("the broker closed the stream");
            }
        }
    }

    async fn method(&mut self) -> anyhow::Result<Method> {
        loop {
            match self.frame().await? {
                Frame::Method { method: Method::ConnectionClose(c), .. } => {
                    bail!("connection closed: {}", c.reply_text)
                }
                Frame::Method { method, .. } => return Ok(method),
                Frame::Heartbeat { .. } => continue,
                other => bail!("expected a method, got {other:?}"),
            }
        }
    }
}

/// Connects to a broker's QUIC listener, trusting the certificate file `ca`.
pub async fn connect(url: &str, ca: &std::path::Path) -> anyhow::Result<quinn::Connection> {
    let (host, addr) = warren::bridge::resolve(url).await?;
    let endpoint = warren::quic::client_endpoint(ca)?;
    Ok(endpoint.connect(addr, &host)?.await?)
}
