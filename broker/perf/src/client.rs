//! Just enough AMQP 0-9-1 client for load: frames from `warren-codec` over a split TCP
//! stream, writes batched in a buffer the caller flushes, so the tool is not the bottleneck.

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use warren_codec::*;

/// Where and as whom to connect: `amqp://user:password@host:port/vhost`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// `host:port`.
    pub addr: String,
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
    /// Virtual host.
    pub vhost: String,
}

impl std::str::FromStr for Uri {
    type Err = String;

    fn from_str(s: &str) -> Result<Uri, String> {
        let rest =
            s.strip_prefix("amqp://").ok_or_else(|| format!("'{s}': only amqp:// URIs are supported"))?;
        let (auth, rest) = rest.rsplit_once('@').unwrap_or(("guest:guest", rest));
        let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
        let (host, vhost) = rest.split_once('/').unwrap_or((rest, ""));
        let addr = if host.contains(':') { host.to_string() } else { format!("{host}:5672") };
        let vhost = match vhost {
            "" => "/".to_string(),
            v => v.replace("%2f", "/").replace("%2F", "/"),
        };
        Ok(Uri { addr, user: user.into(), password: password.into(), vhost })
    }
}

/// The receiving half of a connection.
pub struct Reader {
    half: OwnedReadHalf,
    buf: BytesMut,
}

/// The sending half: frames are encoded into a buffer and go out on [`Writer::flush`].
pub struct Writer {
    half: OwnedWriteHalf,
    buf: BytesMut,
    frame_max: u32,
}

/// Connects, logs in with PLAIN and opens channel 1.
pub async fn connect(uri: &Uri) -> anyhow::Result<(Reader, Writer)> {
    let stream = TcpStream::connect(&uri.addr).await.with_context(|| format!("connect to {}", uri.addr))?;
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let mut r = Reader { half: r, buf: BytesMut::with_capacity(1 << 16) };
    let mut w = Writer { half: w, buf: BytesMut::with_capacity(1 << 16), frame_max: FRAME_MIN_SIZE };
    w.half.write_all(PROTOCOL_HEADER).await?;
    let Method::ConnectionStart(_) = r.method().await? else { bail!("expected connection.start") };
    let response = Bytes::from(format!("\0{}\0{}", uri.user, uri.password));
    let start_ok = ConnectionStartOk {
        mechanism: "PLAIN".into(),
        response,
        locale: "en_US".into(),
        ..Default::default()
    };
    w.method(0, start_ok);
    w.flush().await?;
    let Method::ConnectionTune(t) = r.method().await? else { bail!("login refused") };
    // No heartbeats: runs are short, and the tool must not stall on its own timers.
    w.method(0, ConnectionTuneOk { channel_max: t.channel_max, frame_max: t.frame_max, heartbeat: 0 });
    w.frame_max = if t.frame_max == 0 { 131_072 } else { t.frame_max };
    w.method(0, ConnectionOpen { virtual_host: uri.vhost.clone(), ..Default::default() });
    w.method(1, ChannelOpen::default());
    w.flush().await?;
    let Method::ConnectionOpenOk(_) = r.method().await? else { bail!("expected connection.open-ok") };
    let Method::ChannelOpenOk(_) = r.method().await? else { bail!("expected channel.open-ok") };
    Ok((r, w))
}

impl Reader {
    /// The next frame, whatever its channel.
    pub async fn frame(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(f) = decode_frame(&mut self.buf, 0)? {
                return Ok(f);
            }
            if self.half.read_buf(&mut self.buf).await? == 0 {
                bail!("the broker closed the connection");
            }
        }
    }

    /// The next method; a connection.close or channel.close from the broker is an error.
    pub async fn method(&mut self) -> anyhow::Result<Method> {
        loop {
            match self.frame().await? {
                Frame::Method { method: Method::ConnectionClose(c), .. } => {
                    bail!("connection closed by the broker: {} {}", c.reply_code, c.reply_text)
                }
                Frame::Method { method: Method::ChannelClose(c), .. } => {
                    bail!("channel closed by the broker: {} {}", c.reply_code, c.reply_text)
                }
                Frame::Method { method, .. } => return Ok(method),
                Frame::Heartbeat { .. } => continue,
                other => bail!("expected a method, got {other:?}"),
            }
        }
    }
}

impl Writer {
    /// Queues a method frame.
    pub fn method(&mut self, channel: u16, m: impl Into<Method>) {
        Frame::method(channel, m).encode(&mut self.buf);
    }

    /// Queues a publish: method, header and body frames.
    pub fn publish(&mut self, m: BasicPublish, properties: &BasicProperties, body: &Bytes) {
        encode_content(&mut self.buf, 1, m, properties, body, self.frame_max);
    }

    /// Octets queued and not yet sent.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Sends everything queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.buf.is_empty() {
            self.half.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Closes the connection politely (the broker's close-ok is not awaited).
    pub async fn close(mut self) -> anyhow::Result<()> {
        self.method(0, ConnectionClose { reply_code: 200, reply_text: "bye".into(), ..Default::default() });
        self.flush().await?;
        self.half.shutdown().await?;
        Ok(())
    }
}

/// Sends `m` and waits for its reply (the next method on the connection).
pub async fn call(r: &mut Reader, w: &mut Writer, m: impl Into<Method>) -> anyhow::Result<Method> {
    w.method(1, m);
    w.flush().await?;
    r.method().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_as_rabbitmq_tools_take_them() {
        let u: Uri = "amqp://guest:guest@127.0.0.1:5673/%2f".parse().expect("uri");
        assert_eq!(
            u,
            Uri {
                addr: "127.0.0.1:5673".into(),
                user: "guest".into(),
                password: "guest".into(),
                vhost: "/".into()
            }
        );
        let u: Uri = "amqp://localhost".parse().expect("uri");
        assert_eq!((u.addr.as_str(), u.user.as_str(), u.vhost.as_str()), ("localhost:5672", "guest", "/"));
        assert!("http://x".parse::<Uri>().is_err());
    }
}
