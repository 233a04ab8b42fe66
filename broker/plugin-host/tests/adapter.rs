//! The line-protocol adapter component driven sans-IO: bytes in, broker commands and reply
//! bytes out; broker events in, bytes out.

use warren_plugin_host::adapter::{Command, Event};
use warren_plugin_host::{AdapterPlugin, Limits, LoadError, Runtime, guests};

fn plugin() -> AdapterPlugin {
    let runtime = Runtime::new(Some(&guests::cache_dir())).expect("engine");
    AdapterPlugin::load(&runtime, "line", &guests::component("adapter-line"), Limits::default())
        .expect("loads")
}

#[test]
fn a_session_turns_lines_into_commands_and_events_into_lines() {
    let p = plugin();
    let mut s = p.session().expect("session");
    // A command split across reads is buffered until its newline.
    let out = s.receive(b"QUEUE jobs\nPUB - jobs hello world\nSU").expect("accepted");
    assert!(out.reply.is_empty());
    assert!(matches!(&out.commands[0], Command::DeclareQueue(q) if q.name == "jobs"));
    let Command::Publish(m) = &out.commands[1] else { panic!("{:?}", out.commands) };
    assert_eq!(
        (m.exchange.as_str(), m.routing_key.as_str(), m.body.as_slice()),
        ("", "jobs", &b"hello world"[..])
    );
    assert_eq!(m.confirm_id, Some(1));
    assert_eq!(out.commands.len(), 2);
    let out = s.receive(b"B jobs\n").expect("accepted");
    assert!(matches!(&out.commands[..], [Command::Consume(c)] if c.queue == "jobs" && !c.auto_ack));

    assert_eq!(s.handle(&Event::Confirmed(1)).expect("handled").reply, b"OK 1\n");
    assert_eq!(s.handle(&Event::QueueDeclared("jobs".into())).expect("handled").reply, b"QUEUE jobs\n");

    let out = s.receive(b"ACK 1\nQUIT\n").expect("accepted");
    assert!(matches!(&out.commands[..], [Command::Ack(1), Command::Close]), "{:?}", out.commands);
    assert_eq!(out.reply, b"BYE\n");

    let err = s.receive(b"DANCE\n").expect_err("not a command");
    assert!(err.to_string().contains("not a command: 'DANCE'"), "{err}");

    // Sessions are independent instances.
    let mut other = p.session().expect("second session");
    let out = other.receive(b"PUB amq.topic a.b x\n").expect("accepted");
    assert!(matches!(&out.commands[..], [Command::Publish(m)] if m.confirm_id == Some(1)));
    assert_eq!(p.stats().instances(), 2);
}

#[test]
fn a_component_of_another_world_is_not_an_adapter() {
    let runtime = Runtime::new(None).expect("engine");
    let err = AdapterPlugin::load(&runtime, "x", &guests::component("exchange-fanout"), Limits::default())
        .expect_err("wrong world");
    assert!(
        matches!(err, LoadError::WrongWorld { .. }) && err.to_string().contains("adapter-plugin"),
        "{err}"
    );
}
