//! Settings from flags, environment and file.
use super::*;

fn parse(text: &str) -> Result<FileConfig, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let err = parse("amqp-listen = \"127.0.0.1:1\"\n\n[amqp]\nheartbeet = 5\n").err().unwrap_or_default();
    assert!(err.contains("heartbeet") && err.contains("line 4"), "{err}");
}

#[test]
fn limits_read_relative_and_absolute_watermarks_and_the_write_timeout() {
    let resolve = |text: &str| Settings::resolve(&Cli::default(), parse(text).unwrap_or_default());
    let s = resolve("[limits]\nmemory-high-watermark = 0.4\n[amqp]\nwrite-timeout-ms = 2500").ok();
    assert_eq!(s.as_ref().map(|s| s.limits.memory_high_watermark), Some(Watermark::Relative(0.4)));
    assert_eq!(s.map(|s| s.connection.write_timeout), Some(std::time::Duration::from_millis(2500)));
    let s = resolve("[limits]\nmemory-high-watermark = \"2GiB\"").ok();
    assert_eq!(s.map(|s| s.limits.memory_high_watermark), Some(Watermark::Absolute(Size(2 << 30))));
    assert!(resolve("[limits]\nmemory-high-watermark = 1.5").is_err());
    assert!(resolve("[amqp]\nwrite-timeout-ms = 0").is_err());
    assert_eq!(Settings::default().limits.memory_high_watermark, Watermark::Relative(0.6));
    let s = resolve("[limits]\nmax-connections = 1000\nmax-queues = 50").ok().map(|s| s.limits.counts);
    assert_eq!(s.map(|c| (c.max_connections, c.max_queues)), Some((Some(1000), Some(50))));
    let text = "[limits]\nmax-exchanges = 7\nmax-bindings = 8\nmax-consumers-per-channel = 9\n\
                max-tx-operations = 10\nmax-tx-bytes = \"1MiB\"";
    let c = resolve(text).ok().map(|s| s.limits.counts);
    let got = c.map(|c| {
        (c.max_exchanges, c.max_bindings, c.max_consumers_per_channel, c.max_tx_operations, c.max_tx_bytes)
    });
    assert_eq!(got, Some((Some(7), Some(8), Some(9), Some(10), Some(1 << 20))));
    let hosts = resolve("management-hosts = [\"Broker.Example\"]").ok().map(|s| s.management_hosts);
    assert_eq!(hosts, Some(vec!["broker.example".to_string()]));
    assert!(resolve("management-hosts = [\"http://x\"]").is_err(), "a URL is not a host name");
    assert_eq!(
        Settings::default().limits.counts,
        warren_core::broker::Limits::default(),
        "unlimited, as RabbitMQ"
    );
}

#[test]
fn the_plain_listener_can_be_turned_off_for_a_tls_only_broker() {
    let resolve = |text: &str| Settings::resolve(&Cli::default(), parse(text).unwrap_or_default());
    let e = resolve("amqp-listen = \"off\"").err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("needs AMQPS"), "{e}");
    let tls = "amqp-listen = \"off\"\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"";
    assert_eq!(resolve(tls).ok().map(|s| s.amqp_listen), Some(None));
    assert!(parse("amqp-listen = \"nowhere\"").is_err());
    assert_eq!("OFF".parse::<Listen>(), Ok(Listen::Off));
}

#[test]
fn flags_win_over_the_file() {
    let file = parse("amqp-listen = \"127.0.0.1:1000\"\ndata-dir = \"/tmp/x\"\n[amqp]\nheartbeat = 5").ok();
    let cli = Cli { amqp_listen: "127.0.0.1:2000".parse().ok(), ..Cli::default() };
    let s = Settings::resolve(&cli, file.unwrap_or_default()).ok();
    let s = s.as_ref();
    assert_eq!(s.and_then(|s| s.amqp_listen).map(|a| a.port()), Some(2000));
    assert_eq!(s.map(|s| s.data_dir.clone()), Some(PathBuf::from("/tmp/x")));
    assert_eq!(s.map(|s| s.connection.heartbeat), Some(5));
}

#[test]
fn vhosts_are_named_once_and_fit_connection_open() {
    let resolve = |text: &str| {
        parse(text)
            .map_err(|e| e.to_string())
            .and_then(|f| Settings::resolve(&Cli::default(), f).map_err(|e| e.to_string()))
    };
    let s = resolve("[[vhosts]]\nname = \"a\"\n[[vhosts]]\nname = \"b c\"\n");
    assert_eq!(s.map(|s| s.vhosts).ok(), Some(vec!["a".to_string(), "b c".to_string()]));
    let limited =
        resolve("[[vhosts]]\nname = \"/\"\nmax-connections = 5\n[[vhosts]]\nname = \"a\"\nmax-queues = 2\n")
            .expect("limits");
    assert_eq!(limited.vhosts, ["a"], "an entry for / gives it limits only");
    assert_eq!(limited.vhost_limits["/"].max_connections, Some(5));
    assert_eq!(limited.vhost_limits["a"].max_queues, Some(2));
    for bad in [
        "name = \"a\"\n[[vhosts]]\nname = \"a\"",
        "name = \"/\"\n[[vhosts]]\nname = \"/\"",
        "name = \"\"",
        "nme = \"a\"",
    ] {
        assert!(resolve(&format!("[[vhosts]]\n{bad}\n")).is_err(), "{bad}");
    }
    let long = "v".repeat(256);
    assert!(resolve(&format!("[[vhosts]]\nname = \"{long}\"\n")).is_err());
}

#[test]
fn policies_are_checked_at_load_and_named_in_errors() {
    let ok = parse(
        "[[policies]]\nname = \"dlx\"\npattern = \"^orders\\\\.\"\ndead-letter-exchange = \"d\"\nmessage-ttl = 5",
    );
    let s = Settings::resolve(&Cli::default(), ok.unwrap_or_default());
    assert_eq!(s.map(|s| s.policies.len()).ok(), Some(1));
    let bad = parse("[[policies]]\nname = \"oops\"\npattern = \"(\"\n").ok().unwrap_or_default();
    let e = Settings::resolve(&Cli::default(), bad).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("policy 'oops'") && e.contains("pattern"), "{e}");
    let bad = parse("[[policies]]\nname = \"o2\"\npattern = \"x\"\noverflow = \"sideways\"\n")
        .ok()
        .unwrap_or_default();
    let e = Settings::resolve(&Cli::default(), bad).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("policy 'o2'") && e.contains("x-overflow"), "{e}");
}

#[test]
fn storage_settings_take_sizes_with_units_and_name_bad_ones() {
    let file = parse(
        "[storage]\nfsync = \"interval\"\nfsync-interval-ms = 50\ndisk-free-limit = \"2GB\"\nsegment-size = \"1MiB\"",
    );
    let s = Settings::resolve(&Cli::default(), file.unwrap_or_default()).map(|s| s.storage).ok();
    assert_eq!(
        s,
        Some(StorageSettings {
            fsync: FsyncMode::Interval,
            fsync_interval: std::time::Duration::from_millis(50),
            segment_size: 1 << 20,
            disk_free_limit: 2_000_000_000,
            salvage: false,
        })
    );
    let e = parse("[storage]\ndisk-free-limit = \"5 parsecs\"").err().unwrap_or_default();
    assert!(e.contains("parsecs") && e.contains("line 2"), "{e}");
    let e = parse("[storage]\nfsync = \"sometimes\"").err().unwrap_or_default();
    assert!(e.contains("sometimes"), "{e}");
}

#[test]
fn tiny_frame_max_is_refused() {
    let file = parse("[amqp]\nframe-max = 100").ok().unwrap_or_default();
    assert!(matches!(Settings::resolve(&Cli::default(), file), Err(ConfigError::Invalid(_))));
}

#[test]
fn plugins_are_read_with_their_limits_and_bad_entries_are_named() {
    let file = parse(
        r#"
[[plugins.exchange]]
type = "x-consistent-hash"
component = "plugins/target/wasm32-wasip2/release/exchange_consistent_hash.wasm"
memory = "32MiB"
timeout-ms = 50

[[plugins.retry]]
name = "exponential"
component = "r.wasm"
config = { base-ms = "100", max-attempts = "5" }
"#,
    );
    let s = Settings::resolve(&Cli::default(), file.unwrap_or_default()).map(|s| s.plugins).ok();
    let s = s.unwrap_or_default();
    assert_eq!(s.exchanges.len(), 1);
    let x = &s.exchanges[0];
    let (kind, limits) = (&x.name, x.limits);
    assert_eq!(
        (kind.as_str(), limits.memory_bytes, limits.timeout.as_millis()),
        ("x-consistent-hash", 32 << 20, 50)
    );
    assert_eq!(
        s.retries[0].config,
        vec![("base-ms".into(), "100".into()), ("max-attempts".into(), "5".into())]
    );

    let e = parse(
        "[[plugins.exchange]]
type = \"x\"
component = \"a.wasm\"
memroy = 5",
    )
    .err()
    .unwrap_or_default();
    assert!(e.contains("memroy") && e.contains("line 4"), "{e}");
    for (bad, says) in [
        ("[[plugins.exchange]]\ntype = \"direct\"\ncomponent = \"a.wasm\"", "built in"),
        ("[[plugins.exchange]]\ntype = \"x\"\ncomponent = \"a.wasm\"\nmemory = 1000", "below 1MiB"),
        ("[[plugins.retry]]\nname = \"r\"\ncomponent = \"a.wasm\"\ntimeout-ms = 0", "timeout-ms"),
    ] {
        let file = parse(bad).ok().unwrap_or_default();
        let e = Settings::resolve(&Cli::default(), file).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn protocol_adapters_take_a_listener_a_config_table_and_limits() {
    let text = "[[plugins.adapter]]
protocol = \"mqtt\"
component = \"adapter_mqtt.wasm\"
listen = \"127.0.0.1:1883\"
sessions-per-instance = 64
config = { prefetch = \"20\" }";
    let s = Settings::resolve(&Cli::default(), parse(text).unwrap_or_default()).expect("valid");
    let a = &s.plugins.adapters[0];
    assert_eq!((a.plugin.name.as_str(), a.listen.port(), a.sessions_per_instance), ("mqtt", 1883, 64));
    assert_eq!(a.plugin.config, vec![("prefetch".into(), "20".into())]);
    assert_eq!(a.plugin.limits.memory_bytes, plugins::DEFAULT_ADAPTER_MEMORY, "adapters' own default");
    let entry = |more: &str| {
        format!(
            "[[plugins.adapter]]\nprotocol = \"mqtt\"\ncomponent = \"a.wasm\"\nlisten = \"127.0.0.1:1883\"\n{more}"
        )
    };
    for (bad, says) in [
        (entry("tls-listen = \"127.0.0.1:8883\""), "needs a [tls] section"),
        (entry("sessions-per-instance = 0"), "above 0"),
        (format!("{}\n{}", entry(""), entry("")), "configured twice"),
        (entry("").replace("\"mqtt\"", "\"mq tt\""), "letters, digits"),
    ] {
        let file = parse(&bad).map_err(|e| panic!("{bad}: {e}")).unwrap_or_default();
        let e = Settings::resolve(&Cli::default(), file).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

#[test]
fn users_take_rabbitmq_hashes_and_permissions_are_checked_against_users_and_vhosts() {
    let resolve = |text: &str| {
        parse(text)
            .map_err(|e| e.to_string())
            .and_then(|f| Settings::resolve(&Cli::default(), f).map_err(|e| e.to_string()))
    };
    // alice's hash as RabbitMQ 3.10 exported it (tests/fixtures/rabbitmq-3.10-definitions.json).
    let users = "[[vhosts]]\nname = \"orders\"\n\
                 [[users]]\nname = \"alice\"\npassword-hash = \"RXyMFdXQg+/XCr6rtodH1ZxFjQxyPnEfTl78t2bWrrS35tFm\"\n\
                 [[users]]\nname = \"carol\"\npassword-hash = \"BSLKO8ckyPEfKvJE7uUk5QJXo2M=\"\n\
                 hashing-algorithm = \"rabbit_password_hashing_md5\"\n";
    let s = resolve(users).expect("users");
    assert!(s.access.is_unrestricted(), "no [[permissions]]: every user everywhere, as before");
    let alice = s.users.iter().find(|u| u.name == "alice").expect("alice");
    assert!(alice.password.verify("alice-secret") && !alice.password.verify("alice"));
    assert!(s.users.iter().find(|u| u.name == "carol").is_some_and(|u| u.password.verify("carol")));

    let perms = format!(
        "{users}[[permissions]]\nuser = \"alice\"\nvhost = \"orders\"\nconfigure = \"^orders\\\\.\"\nwrite = \".*\"\nread = \".*\"\n"
    );
    let s = resolve(&perms).expect("permissions");
    assert!(s.access.may_open("alice", "orders") && !s.access.may_open("alice", "/"));
    assert!(!s.access.may_open("carol", "orders"), "no entry, no vhost");

    let bad = [
        ("[[users]]\nname = \"x\"\n", "needs a password"),
        ("[[users]]\nname = \"x\"\npassword = \"a\"\npassword-hash = \"b\"\n", "not both"),
        ("[[users]]\nname = \"x\"\npassword-hash = \"abc=\"\n", "malformed password hash"),
        (
            "[[users]]\nname = \"x\"\npassword-hash = \"BSLKO8ckyPEfKvJE7uUk5QJXo2M=\"\nhashing-algorithm = \"bcrypt\"\n",
            "unknown hashing algorithm",
        ),
        (
            "[[users]]\nname = \"x\"\npassword = \"a\"\n[[users]]\nname = \"x\"\npassword = \"b\"\n",
            "declared twice",
        ),
        (
            "[[permissions]]\nuser = \"nobody\"\nconfigure = \"\"\nwrite = \"\"\nread = \"\"\n",
            "not in [[users]]",
        ),
        (
            "[[permissions]]\nuser = \"guest\"\nvhost = \"nowhere\"\nconfigure = \"\"\nwrite = \"\"\nread = \"\"\n",
            "not in [[vhosts]]",
        ),
        (
            "[[permissions]]\nuser = \"guest\"\nconfigure = \"^(?!amq\\\\.)\"\nwrite = \"\"\nread = \"\"\n",
            "pattern '^(?!amq\\.)'",
        ),
        (
            "[[permissions]]\nuser = \"guest\"\nconfigure = \"\"\nwrite = \"\"\nread = \"\"\n[[permissions]]\nuser = \"guest\"\nconfigure = \"\"\nwrite = \"\"\nread = \"\"\n",
            "given twice",
        ),
    ];
    for (text, why) in bad {
        let e = resolve(text).expect_err(text);
        assert!(e.contains(why), "{text}: {e}");
    }
}
