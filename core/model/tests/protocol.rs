//! The AMQP machine and the broker played frame by frame in memory, on virtual time
//! ([`warren_core::harness`]): malformed and hostile input gets RabbitMQ's close code,
//! the handshake's limits hold, and heartbeats, TTLs and queue expiry fire at their
//! deadlines without a test sleeping. Socket-level behaviour (TCP, TLS, QUIC, the driver's
//! write timeouts and linger) stays in `broker/server/tests`.
#![allow(clippy::disallowed_methods)] // one real Instant to start the virtual clock from

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use warren_codec::*;
use warren_core::ConnectionConfig;
use warren_core::broker::BrokerConfig;
use warren_core::broker::Limits;
use warren_core::harness::{Client, Harness};

fn harness() -> Harness {
    Harness::new(Instant::now())
}

fn raw_frame(ty: u8, ch: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(ty);
    b.put_u16(ch);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.put_u8(end);
    b.to_vec()
}

/// The close an open connection with channel 1 gets for `bytes`.
fn close_code_after(h: &mut Harness, bytes: &[u8]) -> ConnectionClose {
    let c = h.open();
    h.open_channel(c, 1);
    h.send(c, bytes);
    h.expect_connection_close(c)
}

/// The broker still completes a handshake and answers a declare.
fn still_serving(h: &mut Harness) {
    let c = h.open();
    h.open_channel(c, 1);
    h.send_method(c, 1, QueueDeclare { queue: "alive".into(), ..Default::default() });
    assert!(matches!(h.method(c), Some(Method::QueueDeclareOk(_))));
}

fn ready(h: &Harness, queue: &str) -> Option<(usize, usize, usize)> {
    h.broker.queue_counts(queue)
}

/// basic.publish of `body` on channel `ch`, as frames.
fn publish_body(ch: u16, key: &str, body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    let m = BasicPublish { routing_key: key.into(), ..Default::default() };
    encode_content(&mut buf, ch, m, &BasicProperties::default(), &Bytes::copy_from_slice(body), 131_072);
    buf
}

fn declare(h: &mut Harness, c: Client, queue: &str, arguments: FieldTable) {
    h.send_method(c, 1, QueueDeclare { queue: queue.into(), arguments, ..Default::default() });
    assert!(matches!(h.method(c), Some(Method::QueueDeclareOk(_))));
}

fn args(pairs: &[(&str, FieldValue)]) -> FieldTable {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

#[test]
fn bad_protocol_header_gets_ours_back_and_the_connection_closed() {
    let mut h = harness();
    let c = h.connect();
    h.send(c, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(&h.take_raw(c)[..], PROTOCOL_HEADER);
    assert!(h.is_closed(c));
    still_serving(&mut h);
}

#[test]
fn truncated_method_fields_are_frame_error() {
    let mut h = harness();
    // queue.declare cut after its ticket: no queue name, no bits, no table.
    let c = close_code_after(&mut h, &raw_frame(1, 1, &[0, 50, 0, 10, 0, 0], FRAME_END));
    assert_eq!((c.reply_code, c.class_id, c.method_id), (reply_code::FRAME_ERROR, 50, 10), "{c:?}");
    still_serving(&mut h);
}

#[test]
fn oversize_frame_is_frame_error_before_its_payload_arrives() {
    let mut h = harness();
    // Announce 1 MiB and send none of it: the header alone must be refused.
    let c = close_code_after(&mut h, &[3, 0, 1, 0, 0x10, 0, 0]);
    assert_eq!(c.reply_code, reply_code::FRAME_ERROR, "{c:?}");
}

#[test]
fn bad_frame_end_octet_and_unknown_frame_types_are_frame_error() {
    let mut h = harness();
    for bytes in [raw_frame(8, 0, &[], 0xCD), raw_frame(7, 1, &[1, 2, 3], FRAME_END)] {
        let c = close_code_after(&mut h, &bytes);
        assert_eq!(c.reply_code, reply_code::FRAME_ERROR, "{c:?}");
    }
}

#[test]
fn unknown_class_or_method_is_command_invalid() {
    let mut h = harness();
    let c = close_code_after(&mut h, &raw_frame(1, 1, &[0, 77, 0, 1], FRAME_END));
    assert_eq!(c.reply_code, reply_code::COMMAND_INVALID, "{c:?}");
}

#[test]
fn methods_on_channels_not_open_are_channel_error() {
    let mut h = harness();
    let c = h.open();
    h.send_method(c, 5, QueueDeclare { queue: "q".into(), ..Default::default() });
    let close = h.expect_connection_close(c);
    // Attributed to the method that arrived, as RabbitMQ does.
    assert_eq!((close.reply_code, close.class_id, close.method_id), (reply_code::CHANNEL_ERROR, 50, 10));
    // A channel closed by the client.
    let c = h.open();
    h.open_channel(c, 1);
    h.send_method(c, 1, ChannelClose { reply_code: 200, ..Default::default() });
    assert!(matches!(h.method(c), Some(Method::ChannelCloseOk(_))));
    h.send_method(c, 1, BasicQos { prefetch_count: 1, ..Default::default() });
    assert_eq!(h.expect_connection_close(c).reply_code, reply_code::CHANNEL_ERROR);
    // A second channel.open.
    let c = h.open();
    h.open_channel(c, 1);
    h.send_method(c, 1, ChannelOpen::default());
    let close = h.expect_connection_close(c);
    assert_eq!((close.reply_code, close.class_id, close.method_id), (reply_code::CHANNEL_ERROR, 20, 10));
}

#[test]
fn content_out_of_place_is_unexpected_frame() {
    let mut h = harness();
    let header = Frame::Header { channel: 1, header: ContentHeader::basic(3, BasicProperties::default()) };
    let body = Frame::Body { channel: 1, payload: Bytes::from_static(b"abc") };
    for frame in [header, body] {
        let mut bytes = BytesMut::new();
        frame.encode(&mut bytes);
        let c = close_code_after(&mut h, &bytes);
        assert_eq!(c.reply_code, reply_code::UNEXPECTED_FRAME, "{c:?}");
    }
    // A method in the middle of content: attributed to basic.publish, as RabbitMQ does.
    let c = h.open();
    h.open_channel(c, 1);
    h.send_method(c, 1, BasicPublish { routing_key: "x".into(), ..Default::default() });
    h.send_method(c, 1, BasicQos::default());
    let close = h.expect_connection_close(c);
    assert_eq!((close.reply_code, close.class_id, close.method_id), (reply_code::UNEXPECTED_FRAME, 60, 40));
    // A heartbeat on a channel: RabbitMQ 3.10 answers 505 here (checked against it).
    let close = close_code_after(&mut h, &raw_frame(8, 1, &[], FRAME_END));
    assert_eq!(close.reply_code, reply_code::UNEXPECTED_FRAME);
    still_serving(&mut h);
}

#[test]
fn body_longer_than_announced_is_unexpected_frame_and_nothing_is_queued() {
    let mut h = harness();
    let c = h.open();
    h.open_channel(c, 1);
    declare(&mut h, c, "long", FieldTable::new());
    h.send_method(c, 1, BasicPublish { routing_key: "long".into(), ..Default::default() });
    h.send_frame(
        c,
        Frame::Header { channel: 1, header: ContentHeader::basic(3, BasicProperties::default()) },
    );
    h.send_frame(c, Frame::Body { channel: 1, payload: Bytes::from_static(b"abcdef") });
    assert_eq!(h.expect_connection_close(c).reply_code, reply_code::UNEXPECTED_FRAME);
    assert_eq!(ready(&h, "long"), Some((0, 0, 0)));
}

#[test]
fn after_a_channel_error_frames_are_discarded_until_close_ok() {
    let mut h = harness();
    let c = h.open();
    h.open_channel(c, 1);
    h.send_method(c, 1, QueueDeclare { queue: "ghost".into(), passive: true, ..Default::default() });
    let Some(Method::ChannelClose(close)) = h.method(c) else { panic!("expected channel.close") };
    assert_eq!((close.reply_code, close.class_id, close.method_id), (404, 50, 10));
    assert_eq!(close.reply_text, "NOT_FOUND - no queue 'ghost' in vhost '/'");
    // Ignored: the channel is closing.
    h.send_method(c, 1, QueueDeclare { queue: "ignored".into(), ..Default::default() });
    h.send_method(c, 1, ChannelCloseOk {});
    h.open_channel(c, 1);
    assert_eq!(ready(&h, "ignored"), None);
}

#[test]
fn an_unknown_delivery_tag_closes_the_channel_with_406() {
    let mut h = harness();
    let c = h.open();
    h.open_channel(c, 1);
    h.send_method(c, 1, BasicAck { delivery_tag: 99, multiple: false });
    let Some(Method::ChannelClose(close)) = h.method(c) else { panic!("expected channel.close") };
    assert_eq!((close.reply_code, close.class_id, close.method_id), (406, 60, 80));
    assert_eq!(close.reply_text, "PRECONDITION_FAILED - unknown delivery tag 99");
}

#[test]
fn the_handshake_refuses_bad_credentials_limits_and_vhosts() {
    let mut h = harness();
    let c = h.login(b"\0guest\0bad");
    let close = h.expect_connection_close(c);
    assert_eq!(close.reply_code, reply_code::ACCESS_REFUSED);
    assert!(close.reply_text.starts_with("ACCESS_REFUSED - Login was refused"), "{}", close.reply_text);
    // tune-ok above the server's frame_max.
    let c = h.login(b"\0guest\0guest");
    let Some(Method::ConnectionTune(tune)) = h.method(c) else { panic!("expected tune") };
    assert_eq!((tune.frame_max, tune.channel_max, tune.heartbeat), (131_072, 2047, 60));
    h.send_method(c, 0, ConnectionTuneOk { channel_max: 0, frame_max: 1 << 20, heartbeat: 0 });
    assert_eq!(h.expect_connection_close(c).reply_code, reply_code::NOT_ALLOWED);
    // A vhost that does not exist.
    let c = h.login(b"\0guest\0guest");
    h.method(c);
    h.send_method(c, 0, ConnectionTuneOk { channel_max: 0, frame_max: 0, heartbeat: 0 });
    h.send_method(c, 0, ConnectionOpen { virtual_host: "/other".into(), ..Default::default() });
    let close = h.expect_connection_close(c);
    assert_eq!(close.reply_code, reply_code::NOT_ALLOWED);
    assert_eq!(close.reply_text, "NOT_ALLOWED - vhost /other not found");
    // A method out of its turn.
    let c = h.login(b"\0guest\0guest");
    h.method(c);
    h.send_method(c, 0, ConnectionOpen { virtual_host: "/".into(), ..Default::default() });
    let close = h.expect_connection_close(c);
    assert_eq!(close.reply_code, reply_code::COMMAND_INVALID);
    assert!(close.reply_text.contains("expected 'connection.tune-ok', got 'connection.open'"), "{close:?}");
}

#[test]
fn deliveries_respect_the_negotiated_frame_max() {
    let mut h = harness();
    let c = h.open_with("/", 4096, 0);
    h.open_channel(c, 1);
    declare(&mut h, c, "small-frames", FieldTable::new());
    let body = Bytes::from(vec![b'x'; 10_000]);
    let mut out = BytesMut::new();
    let publish = BasicPublish { routing_key: "small-frames".into(), ..Default::default() };
    encode_content(&mut out, 1, publish, &BasicProperties::default(), &body, 4096);
    h.send(c, &out);
    h.send_method(c, 1, BasicGet { queue: "small-frames".into(), no_ack: true, ..Default::default() });
    assert!(matches!(h.method(c), Some(Method::BasicGetOk(_))));
    let mut total = 0;
    for f in h.drain(c) {
        match f {
            Frame::Header { header, .. } => assert_eq!(header.body_size, 10_000),
            Frame::Body { payload, .. } => {
                assert!(payload.len() + FRAME_OVERHEAD <= 4096, "body frame of {} octets", payload.len());
                total += payload.len();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(total, body.len());
}

#[test]
fn the_server_sends_heartbeats_and_drops_a_silent_client_after_two_intervals() {
    let mut h = harness();
    let c = h.open_with("/", 131_072, 1);
    // Half an interval of silence from the server: a heartbeat.
    h.advance(Duration::from_millis(499));
    assert_eq!(h.drain(c), []);
    h.advance(Duration::from_millis(1));
    assert_eq!(h.drain(c), [Frame::Heartbeat { channel: 0 }]);
    // Two intervals of silence from the client: the connection goes, without a close frame
    // (as RabbitMQ does), at that instant and not before.
    h.advance(Duration::from_millis(1499));
    assert!(!h.is_closed(c));
    assert_eq!(h.drain(c), [Frame::Heartbeat { channel: 0 }, Frame::Heartbeat { channel: 0 }]);
    h.advance(Duration::from_millis(1));
    assert!(h.is_closed(c));
    // A client that talks keeps its connection.
    let c = h.open_with("/", 131_072, 1);
    for _ in 0..10 {
        h.advance(Duration::from_millis(1500));
        h.send_frame(c, Frame::Heartbeat { channel: 0 });
    }
    assert!(!h.is_closed(c));
}

#[test]
fn a_client_that_never_finishes_the_handshake_is_dropped_at_the_timeout() {
    let config = ConnectionConfig { handshake_timeout: Duration::from_millis(300), ..Default::default() };
    let mut h = Harness::with(Instant::now(), BrokerConfig::default(), config);
    let c = h.connect();
    h.send(c, b"AMQP");
    h.advance(Duration::from_millis(299));
    assert!(!h.is_closed(c));
    h.advance(Duration::from_millis(1));
    assert!(h.is_closed(c));
}

#[test]
fn a_client_that_never_answers_our_close_is_let_go_at_the_close_timeout() {
    let mut h = harness();
    let c = h.open();
    h.open_channel(c, 1);
    h.send(c, &raw_frame(7, 1, &[], FRAME_END));
    let close = h.recv(c);
    assert!(matches!(close, Some(Frame::Method { method: Method::ConnectionClose(_), .. })), "{close:?}");
    let timeout = ConnectionConfig::default().close_timeout;
    h.advance(timeout - Duration::from_millis(1));
    assert!(!h.is_closed(c));
    h.advance(Duration::from_millis(1));
    assert!(h.is_closed(c));
}

/// Logs in with `consumer_cancel_notify` (as lapin and pika do) and opens the connection.
fn open_notified(h: &mut Harness, channel_max: u16) -> Client {
    let c = h.connect();
    h.send(c, PROTOCOL_HEADER);
    assert!(matches!(h.method(c), Some(Method::ConnectionStart(_))));
    let caps = args(&[("consumer_cancel_notify", FieldValue::Bool(true))]);
    let start_ok = ConnectionStartOk {
        client_properties: args(&[("capabilities", FieldValue::Table(caps))]),
        mechanism: "PLAIN".into(),
        response: Bytes::from_static(b"\0guest\0guest"),
        locale: "en_US".into(),
    };
    h.send_method(c, 0, start_ok);
    assert!(matches!(h.method(c), Some(Method::ConnectionTune(_))));
    h.send_method(c, 0, ConnectionTuneOk { channel_max, frame_max: 131_072, heartbeat: 0 });
    h.send_method(c, 0, ConnectionOpen { virtual_host: "/".into(), ..Default::default() });
    assert!(matches!(h.method(c), Some(Method::ConnectionOpenOk(_))));
    c
}

#[test]
fn channel_max_counts_open_channels_not_channel_numbers() {
    let mut h = harness();
    let c = open_notified(&mut h, 2);
    // Any number, as in RabbitMQ.
    h.open_channel(c, 65_535);
    h.open_channel(c, 7);
    h.send_method(c, 9, ChannelOpen::default());
    let close = h.expect_connection_close(c);
    assert_eq!(close.reply_code, reply_code::NOT_ALLOWED);
    let text = "number of channels opened (2) has reached the negotiated channel_max (2)";
    assert!(close.reply_text.contains(text), "{close:?}");
}

#[test]
fn a_close_from_both_sides_at_once_leaves_the_connection_and_other_channels_working() {
    let mut h = harness();
    let c = open_notified(&mut h, 2047);
    h.open_channel(c, 1);
    h.open_channel(c, 2);
    // The server closes channel 1 for the 404 while the client is closing it too.
    let passive = QueueDeclare { queue: "missing".into(), passive: true, ..Default::default() };
    let mut both = BytesMut::new();
    Frame::method(1, passive).encode(&mut both);
    Frame::method(1, ChannelClose { reply_code: 200, ..Default::default() }).encode(&mut both);
    h.send(c, &both);
    let Some(Method::ChannelClose(close)) = h.method(c) else { panic!("the server's channel.close") };
    assert_eq!(close.reply_code, reply_code::NOT_FOUND);
    assert!(matches!(h.method(c), Some(Method::ChannelCloseOk(_))), "the client's close is answered");
    h.send_method(c, 1, ChannelCloseOk {});
    // Channel 2, and channel 1 opened again, work: no connection error.
    h.send_method(c, 2, QueueDeclare { queue: "still".into(), ..Default::default() });
    assert!(matches!(h.method(c), Some(Method::QueueDeclareOk(_))));
    h.open_channel(c, 1);
    declare(&mut h, c, "again", FieldTable::new());
}

#[test]
fn deleting_a_queue_one_consumes_from_answers_delete_ok_before_the_cancel() {
    let mut h = harness();
    let c = open_notified(&mut h, 0);
    h.open_channel(c, 1);
    declare(&mut h, c, "gone", FieldTable::new());
    h.send_method(
        c,
        1,
        BasicConsume { queue: "gone".into(), consumer_tag: "mine".into(), ..Default::default() },
    );
    assert!(matches!(h.method(c), Some(Method::BasicConsumeOk(_))));
    h.send_method(c, 1, QueueDelete { queue: "gone".into(), ..Default::default() });
    assert!(matches!(h.method(c), Some(Method::QueueDeleteOk(_))), "delete-ok first");
    let Some(Method::BasicCancel(cancel)) = h.method(c) else { panic!("then the cancel") };
    assert_eq!(cancel.consumer_tag, "mine");
}

#[test]
fn confirms_ready_together_go_out_as_one_multiple_ack() {
    let mut h = harness();
    let c = h.open();
    h.open_channel(c, 1);
    declare(&mut h, c, "confirmed", FieldTable::new());
    h.send_method(c, 1, ConfirmSelect { no_wait: false });
    assert!(matches!(h.method(c), Some(Method::ConfirmSelectOk(_))));
    let mut burst = BytesMut::new();
    for _ in 0..100 {
        burst.extend_from_slice(&publish_body(1, "confirmed", b"x"));
    }
    h.send(c, &burst);
    let (mut frames, mut covered) = (0, 0);
    while covered < 100 {
        let Some(Method::BasicAck(a)) = h.method(c) else { panic!("an ack") };
        frames += 1;
        assert!(a.delivery_tag > covered, "tag {} covered twice", a.delivery_tag);
        // A single ack must be the next tag; a multiple one covers everything up to its tag.
        assert!(a.multiple || a.delivery_tag == covered + 1, "{a:?} after {covered}");
        covered = a.delivery_tag;
    }
    assert_eq!(covered, 100);
    assert!(frames < 100, "{frames} ack frames for 100 publishes in one write");
}

#[test]
fn a_transaction_over_its_limits_closes_the_channel_with_406() {
    let limits = Limits { max_tx_operations: Some(3), max_tx_bytes: Some(1000), ..Default::default() };
    let config = BrokerConfig { limits, ..Default::default() };
    let mut h = Harness::with(Instant::now(), config, ConnectionConfig::default());
    let c = h.open();
    for (ch, bodies, text) in [
        (1, vec![&b"a"[..]; 4], "transaction holds 3"),
        (2, vec![&[0u8; 600][..]; 2], "more than 1000 octets"),
    ] {
        h.open_channel(c, ch);
        h.send_method(c, ch, TxSelect {});
        assert!(matches!(h.method(c), Some(Method::TxSelectOk(_))));
        for body in bodies {
            h.send(c, &publish_body(ch, "nowhere", body));
        }
        let Some(Method::ChannelClose(close)) = h.method(c) else { panic!("channel.close") };
        assert_eq!(close.reply_code, reply_code::PRECONDITION_FAILED, "{close:?}");
        assert!(close.reply_text.contains(text), "{close:?}");
        h.send_method(c, ch, ChannelCloseOk {});
    }
}

#[test]
fn an_automatic_dead_letter_loop_ends_at_its_first_turn() {
    let mut h = harness();
    let c = h.open();
    h.open_channel(c, 1);
    // `loop` dead-letters expired messages through a fanout that reaches it and `seen`:
    // the copy for `loop` would go round for ever, the one for `seen` shows the message
    // was dead-lettered at all.
    h.send_method(
        c,
        1,
        ExchangeDeclare { exchange: "dlx".into(), kind: "fanout".into(), ..Default::default() },
    );
    assert!(matches!(h.method(c), Some(Method::ExchangeDeclareOk(_))));
    let loop_args =
        args(&[("x-message-ttl", FieldValue::I32(50)), ("x-dead-letter-exchange", FieldValue::str("dlx"))]);
    declare(&mut h, c, "loop", loop_args);
    declare(&mut h, c, "seen", FieldTable::new());
    for q in ["loop", "seen"] {
        h.send_method(c, 1, QueueBind { queue: q.into(), exchange: "dlx".into(), ..Default::default() });
        assert!(matches!(h.method(c), Some(Method::QueueBindOk(_))));
    }
    h.send(c, &publish_body(1, "loop", b"round"));
    h.advance(Duration::from_millis(49));
    assert_eq!(ready(&h, "loop"), Some((1, 0, 0)), "not expired before its TTL");
    h.advance(Duration::from_millis(1));
    assert_eq!(ready(&h, "seen"), Some((1, 0, 0)), "dead-lettered at its TTL");
    assert_eq!(ready(&h, "loop"), Some((0, 0, 0)), "and not back in the queue it died in");
    h.advance(Duration::from_secs(1));
    assert_eq!((ready(&h, "loop"), ready(&h, "seen")), (Some((0, 0, 0)), Some((1, 0, 0))));
}

#[test]
fn an_unused_queue_with_x_expires_goes_at_its_deadline_and_a_consumer_keeps_it() {
    let mut h = harness();
    let c = h.open();
    h.open_channel(c, 1);
    declare(&mut h, c, "temp", args(&[("x-expires", FieldValue::I32(150))]));
    h.send_method(
        c,
        1,
        BasicConsume { queue: "temp".into(), consumer_tag: "c".into(), ..Default::default() },
    );
    assert!(matches!(h.method(c), Some(Method::BasicConsumeOk(_))));
    h.advance(Duration::from_secs(10));
    assert!(ready(&h, "temp").is_some(), "a queue with a consumer is in use");
    h.send_method(c, 1, BasicCancel { consumer_tag: "c".into(), no_wait: false });
    assert!(matches!(h.method(c), Some(Method::BasicCancelOk(_))));
    h.advance(Duration::from_millis(149));
    assert!(ready(&h, "temp").is_some(), "unused for less than x-expires");
    h.advance(Duration::from_millis(1));
    assert_eq!(ready(&h, "temp"), None, "deleted once unused for x-expires");
}

#[test]
fn a_direct_reply_never_crosses_vhosts() {
    let mut h = harness();
    h.broker.add_vhost("a");
    // A requester in vhost `a` with a reply consumer, and its request in a queue there.
    let req = h.open_with("a", 131_072, 0);
    h.open_channel(req, 1);
    let reply_to = "amq.rabbitmq.reply-to";
    h.send_method(req, 1, BasicConsume { queue: reply_to.into(), no_ack: true, ..Default::default() });
    assert!(matches!(h.method(req), Some(Method::BasicConsumeOk(_))));
    declare(&mut h, req, "requests", FieldTable::new());
    let mut request = BytesMut::new();
    let props = BasicProperties { reply_to: Some(reply_to.into()), ..Default::default() };
    let publish = BasicPublish { routing_key: "requests".into(), ..Default::default() };
    encode_content(&mut request, 1, publish, &props, &Bytes::from_static(b"?"), 131_072);
    h.send(req, &request);
    h.send_method(req, 1, BasicGet { queue: "requests".into(), no_ack: true, ..Default::default() });
    assert!(matches!(h.method(req), Some(Method::BasicGetOk(_))));
    let Some(Frame::Header { header, .. }) = h.recv(req) else { panic!("the request's header") };
    let token = header.properties.reply_to.expect("a reply token");
    h.drain(req);
    // A replier in `/` holding the token reaches nothing: a mandatory reply comes back.
    let other = h.open();
    h.open_channel(other, 1);
    let mut reply = BytesMut::new();
    let publish = BasicPublish { routing_key: token.clone(), mandatory: true, ..Default::default() };
    encode_content(&mut reply, 1, publish, &BasicProperties::default(), &Bytes::from_static(b"!"), 131_072);
    h.send(other, &reply);
    assert!(matches!(h.method(other), Some(Method::BasicReturn(_))), "returned, not delivered");
    assert_eq!(h.drain(req), [], "nothing crossed into vhost a");
    // The same reply from inside `a` is delivered.
    let replier = h.open_with("a", 131_072, 0);
    h.open_channel(replier, 1);
    h.send(replier, &reply);
    assert!(matches!(h.method(req), Some(Method::BasicDeliver(_))), "delivered within the vhost");
}

/// A quorum declare is checked as RabbitMQ checks it (its words for a bad one); a node that
/// is told not to serve quorum queues (a cluster member, until they replicate) refuses a
/// good one with a 406 that says why, and nothing is declared.
#[test]
fn a_quorum_queue_is_checked_then_refused_where_it_is_not_served() {
    let why = "quorum queues are not replicated across a cluster yet";
    let config = BrokerConfig { quorum_refused: Some(why.into()), ..Default::default() };
    let mut h = Harness::with(Instant::now(), config, ConnectionConfig::default());
    let c = h.open();
    let quorum = args(&[("x-queue-type", FieldValue::str("quorum"))]);
    for (durable, want) in [
        (
            false,
            "PRECONDITION_FAILED - invalid property 'non-durable' for queue 'qq' in vhost '/'".to_string(),
        ),
        (true, format!("PRECONDITION_FAILED - queue 'qq' in vhost '/': {why}")),
    ] {
        h.open_channel(c, 1);
        let m = QueueDeclare { queue: "qq".into(), durable, arguments: quorum.clone(), ..Default::default() };
        h.send_method(c, 1, m);
        let Some(Method::ChannelClose(close)) = h.method(c) else { panic!("expected channel.close") };
        assert_eq!((close.reply_code, close.reply_text.as_str()), (406, want.as_str()));
        h.send_method(c, 1, ChannelCloseOk {});
        assert_eq!(ready(&h, "qq"), None);
    }
    still_serving(&mut h);
}
