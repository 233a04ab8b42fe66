//! A text protocol for shell scripts and `nc`, one command per line:
//!
//! ```text
//! QUEUE <name>                    declare a queue        → QUEUE <name>
//! PUB <exchange|-> <key> <body>   publish (confirmed)    → OK <n>
//! SUB <queue>                     consume, manual acks   → MSG <tag> <routing-key> <body>
//! ACK <tag>                       acknowledge a delivery
//! QUIT                            close                  → BYE
//! ```
//!
//! `-` names the default exchange. Failures come back as `ERR <code> <text>`; a line that is
//! not a command closes the connection.

use warren_plugin_sdk::adapter::{
    Adapter, Command, Consume, DeclareQueue, Event, Output, Properties, Publish,
};

/// Longest line accepted; a client that sends more without a newline is cut off.
const LINE_MAX: usize = 64 * 1024;

#[derive(Default)]
struct Line {
    pending: Vec<u8>,
    next_confirm: u64,
}

fn output(commands: Vec<Command>, reply: String) -> Output {
    Output { commands, reply: reply.into_bytes() }
}

fn no_properties() -> Properties {
    Properties {
        content_type: None,
        content_encoding: None,
        delivery_mode: None,
        priority: None,
        correlation_id: None,
        reply_to: None,
        expiration: None,
        message_id: None,
        timestamp: None,
        kind: None,
        user_id: None,
        app_id: None,
    }
}

impl Line {
    fn command(&mut self, line: &str, out: &mut Output) -> Result<(), String> {
        let mut words = line.splitn(4, ' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("QUEUE"), Some(name), None, None) => {
                out.commands.push(Command::DeclareQueue(DeclareQueue {
                    name: name.to_string(),
                    durable: false,
                    exclusive: false,
                    auto_delete: false,
                    arguments: Vec::new(),
                }))
            }
            (Some("PUB"), Some(exchange), Some(key), body) => {
                self.next_confirm += 1;
                out.commands.push(Command::Publish(Publish {
                    exchange: if exchange == "-" { String::new() } else { exchange.to_string() },
                    routing_key: key.to_string(),
                    mandatory: false,
                    properties: no_properties(),
                    headers: Vec::new(),
                    body: body.unwrap_or_default().as_bytes().to_vec(),
                    confirm_id: Some(self.next_confirm),
                }));
            }
            (Some("SUB"), Some(queue), None, None) => out.commands.push(Command::Consume(Consume {
                queue: queue.to_string(),
                tag: format!("line-{queue}"),
                auto_ack: false,
                prefetch: 100,
            })),
            (Some("ACK"), Some(tag), None, None) => {
                let tag = tag.parse().map_err(|_| format!("ACK needs a delivery tag, got '{tag}'"))?;
                out.commands.push(Command::Ack(tag));
            }
            (Some("QUIT"), None, None, None) => {
                out.commands.push(Command::Close);
                out.reply.extend_from_slice(b"BYE\n");
            }
            _ => return Err(format!("not a command: '{line}'")),
        }
        Ok(())
    }
}

impl Adapter for Line {
    fn new() -> Self {
        Line::default()
    }

    fn receive(&mut self, bytes: Vec<u8>) -> Result<Output, String> {
        self.pending.extend_from_slice(&bytes);
        let mut out = output(Vec::new(), String::new());
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let text = String::from_utf8(line).map_err(|_| "a line is not UTF-8".to_string())?;
            let text = text.trim_end_matches(['\r', '\n']);
            if !text.is_empty() {
                self.command(text, &mut out)?;
            }
        }
        if self.pending.len() > LINE_MAX {
            return Err(format!("a line longer than {LINE_MAX} octets"));
        }
        Ok(out)
    }

    fn handle(&mut self, event: Event) -> Output {
        let reply = match event {
            Event::QueueDeclared(name) => format!("QUEUE {name}\n"),
            Event::Delivery(d) => {
                format!("MSG {} {} {}\n", d.delivery_tag, d.routing_key, String::from_utf8_lossy(&d.body))
            }
            Event::Confirmed(n) => format!("OK {n}\n"),
            Event::Returned(r) => format!("RETURNED {} {}\n", r.reason, r.routing_key),
            Event::Error(f) => format!("ERR {} {}\n", f.code, f.text),
        };
        output(Vec::new(), reply)
    }
}

warren_plugin_sdk::export_adapter!(Line);
