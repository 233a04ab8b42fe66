//! A cluster of three real `warren` processes on 127.0.0.1 (issue #19): the metadata group
//! replicates the directory (users, vhosts, permissions), a change made on one member holds
//! on every member, and the group survives a `kill -9`, a `SIGSTOP`ped leader and a lost
//! majority (refused with 503 within its bound, made once the majority is back). What
//! clients were told (2xx) is checked against what every member holds at the end.

mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use lapin::{Connection, ConnectionProperties};

const GUEST: (&str, &str) = ("guest", "guest");

/// Whether `user` can open `vhost` on member `i` now.
async fn login(c: &Cluster, i: usize, user: &str, vhost: &str) -> bool {
    let uri = c.nodes[i].uri(user, &format!("{user}-pw"), vhost);
    match tokio::time::timeout(
        Duration::from_secs(3),
        Connection::connect(&uri, ConnectionProperties::default()),
    )
    .await
    {
        Ok(Ok(conn)) => {
            let _ = conn.close(200, "bye".into()).await;
            true
        }
        _ => false,
    }
}

/// Waits up to 10 s for `login` to give `want`.
async fn login_becomes(c: &Cluster, i: usize, user: &str, vhost: &str, want: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if login(c, i, user, vhost).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn add_user(c: &Cluster, i: usize, user: &str) -> u16 {
    let body = format!(r#"{{"password":"{user}-pw","tags":"administrator"}}"#);
    let (code, _) = c.nodes[i].api(GUEST, "PUT", &format!("/api/users/{user}"), &body).await;
    if (200..300).contains(&code) {
        let all = r#"{"configure":".*","write":".*","read":".*"}"#;
        let (p, body) = c.nodes[i].api(GUEST, "PUT", &format!("/api/permissions/%2F/{user}"), all).await;
        assert!((200..300).contains(&p), "permissions of {user}: {p} {body}");
    }
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_member_holds_on_every_member() {
    // DESIGN.md's [cluster] section as it is (node, listen, peers): no cookie named, so the
    // members share the one their user's home holds, made by the first of them to start.
    let home = tempfile::tempdir().expect("home");
    let marker = format!("# no cookie, home {}\n", home.path().display());
    let c = Cluster::start_full(3, |_, _, a| a, |_| marker.clone());
    assert!(home.path().join(".warren.cookie").exists(), "the home cookie was made");
    let leader = c.leader(&[0, 1, 2], None).await;
    assert!(["n1", "n2", "n3"].contains(&leader.as_str()), "{leader}");

    // Made on n1: a user, a vhost, permissions there.
    assert!((200..300).contains(&add_user(&c, 0, "alice").await));
    let (code, body) = c.nodes[0].api(GUEST, "PUT", "/api/vhosts/orders", "").await;
    assert!((200..300).contains(&code), "{code} {body}");
    let all = r#"{"configure":".*","write":".*","read":".*"}"#;
    let (code, body) = c.nodes[0].api(GUEST, "PUT", "/api/permissions/orders/alice", all).await;
    assert!((200..300).contains(&code), "{code} {body}");
    // n1 answered once it applied the change: alice is in at once there.
    assert!(login(&c, 0, "alice", "orders").await, "n1 reads its own write");
    // The others catch up within milliseconds; bounded here at 10 s.
    for i in [1, 2] {
        assert!(login_becomes(&c, i, "alice", "orders", true).await, "alice on {}", c.nodes[i].name);
    }
    // The vhost has a broker on n3: a queue can be declared there.
    let conn =
        Connection::connect(&c.nodes[2].uri("alice", "alice-pw", "orders"), ConnectionProperties::default())
            .await
            .expect("alice on n3");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare("q".into(), Default::default(), Default::default()).await.expect("declare on n3");

    // `warren cluster status` as the README shows it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["cluster", "status", "--config", &c.nodes[1].config.display().to_string()])
        .output()
        .expect("warren cluster status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("node n2") && text.contains(&format!("metadata leader {leader}")), "{text}");
    for n in ["n1", "n2", "n3"] {
        assert!(text.lines().any(|l| l.starts_with(n) && l.contains(" up ")), "{n} up in:\n{text}");
    }
    // RabbitMQ's /api/nodes lists every member.
    let (code, body) = c.nodes[2].api(GUEST, "GET", "/api/nodes", "").await;
    assert_eq!(code, 200);
    let nodes: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(nodes.as_array().map(Vec::len), Some(3), "{body}");

    // The cluster's series, with every name the example alerts and dashboard use.
    let (code, metrics) = common::http_to(c.nodes[1].metrics, "GET", "/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("warren_cluster_members 3"), "{metrics}");
    for n in ["n1", "n2", "n3"] {
        assert!(metrics.contains(&format!("warren_cluster_node_up{{node=\"{n}\"}} 1")), "{n} up: {metrics}");
    }
    assert!(metrics.contains("warren_raft_has_leader{group=\"metadata\"} 1"), "{metrics}");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let re = regex::Regex::new(r"warren_(cluster|raft)_[a-z_]+").expect("regex");
    for file in ["grafana/warren.json", "prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect("example file");
        for name in re.find_iter(&text).map(|m| m.as_str()) {
            assert!(
                metrics.contains(&format!("# TYPE {name} ")),
                "{file} uses {name}, which a member does not export"
            );
        }
    }

    // Deleted on n2: the session on n3 is closed, and nobody opens the vhost anywhere.
    let (code, body) = c.nodes[1].api(GUEST, "DELETE", "/api/vhosts/orders", "").await;
    assert!((200..300).contains(&code), "{code} {body}");
    let closed = async {
        while conn.status().connected() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(10), closed).await.is_ok(),
        "n3's connection to orders closed"
    );
    for i in 0..3 {
        assert!(login_becomes(&c, i, "alice", "orders", false).await, "orders gone on {}", c.nodes[i].name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_survives_a_crash_a_pause_and_a_lost_majority() {
    let mut c = Cluster::start(3);
    let mut told_ok: Vec<String> = Vec::new();
    let first = c.leader(&[0, 1, 2], None).await;

    // kill -9 of the leader: the other two elect one of them and take writes.
    let l = c.index(&first);
    c.nodes[l].kill();
    let rest: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let second = c.leader(&rest, Some(&first)).await;
    assert_eq!(add_user(&c, rest[0], "bob").await / 100, 2, "the majority takes writes");
    told_ok.push("bob".into());
    // It comes back from its files and catches up.
    c.nodes[l].restart();
    assert!(login_becomes(&c, l, "bob", "%2F", true).await, "the restarted member has bob");

    // SIGSTOP of the leader past the election timeout: a new one, no split brain after.
    let s = c.index(&second);
    c.nodes[s].pause(true);
    let others: Vec<usize> = (0..3).filter(|i| *i != s).collect();
    let third = c.leader(&others, Some(&second)).await;
    assert_eq!(add_user(&c, others[0], "carol").await / 100, 2);
    told_ok.push("carol".into());
    c.nodes[s].pause(false);
    let agreed = c.leader(&[0, 1, 2], None).await;
    assert_eq!(agreed, third, "the paused leader stepped down and follows");
    assert!(login_becomes(&c, s, "carol", "%2F", true).await, "the paused member caught up");

    // Two of three down: the last refuses writes within its bound, with 503.
    let alone = (0..3).find(|i| *i != s).unwrap_or(0);
    let gone: Vec<usize> = (0..3).filter(|i| *i != alone).collect();
    for &g in &gone {
        c.nodes[g].kill();
    }
    let t = Instant::now();
    let (code, body) = c.nodes[alone]
        .api(GUEST, "PUT", "/api/users/dave", r#"{"password":"dave-pw","tags":"administrator"}"#)
        .await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("quorum") || body.contains("may or may not"), "{body}");
    assert!(t.elapsed() < Duration::from_secs(8), "bounded: {:?}", t.elapsed());
    // Reads and logins keep working on the minority.
    assert!(login(&c, alone, "bob", "%2F").await, "the minority still serves what it has");

    // The majority returns; the change is made, and everything converges.
    for &g in &gone {
        c.nodes[g].restart();
    }
    c.leader(&[0, 1, 2], None).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let code = add_user(&c, alone, "dave").await;
        if code / 100 == 2 {
            told_ok.push("dave".into());
            break;
        }
        assert!(Instant::now() < deadline, "dave never made: {code}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every change a client was told was made is on every member.
    for user in &told_ok {
        for i in 0..3 {
            assert!(login_becomes(&c, i, user, "%2F", true).await, "{user} on {}", c.nodes[i].name);
        }
    }

    // A node's name never changes: its data dir refuses another.
    c.nodes[0].kill();
    let peers =
        c.nodes.iter().map(|n| format!("\"{}@{}\"", if n.name == "n1" { "n9" } else { &n.name }, n.cluster));
    c.nodes[0].write_config("n9", &peers.collect::<Vec<_>>().join(", "));
    let log = c.nodes[0].refused_start();
    assert!(log.contains("belongs to node 'n1'"), "{log}");
}

/// The members `GET /api/cluster` on member `i` lists, by name.
async fn members(c: &Cluster, i: usize) -> Vec<String> {
    let s = c.nodes[i].status().await.unwrap_or_default();
    let list = s["members"].as_array().cloned().unwrap_or_default();
    let mut names: Vec<String> = list.iter().filter_map(|m| m["name"].as_str().map(str::to_string)).collect();
    names.sort();
    names
}

async fn members_become(c: &Cluster, i: usize, want: &[&str]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if members(c, i).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_join_leave_and_are_forgotten_and_names_are_never_reused() {
    let mut c = Cluster::start(3);
    c.leader(&[0, 1, 2], None).await;
    assert_eq!(add_user(&c, 0, "early").await / 100, 2);

    // A fourth node, its peers the three: it waits, then joins through n2.
    let n4 = c.add("n4", "second");
    let via = c.nodes[1].cluster.to_string();
    let (ok, out) = c.ctl(n4, &["join", &via]);
    assert!(ok, "{out}");
    assert!(
        members_become(&c, 0, &["n1", "n2", "n3", "n4"]).await,
        "n1 lists n4: {:?}",
        members(&c, 0).await
    );
    let mut s = None;
    for _ in 0..50 {
        s = c.nodes[n4].status().await;
        if s.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s = s.expect("n4's status");
    assert!(s["members"].as_array().is_some_and(|m| m.iter().all(|m| m["voter"] == true)), "all voters: {s}");
    // What the cluster held before the join is on n4; what n4 makes reaches the others.
    assert!(login_becomes(&c, n4, "early", "%2F", true).await, "n4 has the cluster's directory");
    assert_eq!(add_user(&c, n4, "late").await / 100, 2);
    assert!(login_becomes(&c, 2, "late", "%2F", true).await, "n3 has n4's change");

    // n4 leaves; its name is retired: a fresh node named n4 cannot join.
    let (ok, out) = c.ctl(n4, &["leave"]);
    assert!(ok, "{out}");
    assert!(members_become(&c, 0, &["n1", "n2", "n3"]).await, "{:?}", members(&c, 0).await);
    c.nodes[n4].kill();
    let again = c.add("n4", "third");
    let (ok, out) = c.ctl(again, &["join", &via]);
    assert!(!ok && out.contains("never reused"), "{out}");
    c.nodes[again].kill();
    // A node without the cluster's cookie gets nowhere: the member closes the connection
    // before reading a request.
    let wrong = c.add("n5", "fifth");
    let text = std::fs::read_to_string(&c.nodes[wrong].config).expect("config");
    std::fs::write(&c.nodes[wrong].config, text.replace("the test cluster's cookie", "some other cookie!!"))
        .expect("cookie");
    c.nodes[wrong].kill();
    c.nodes[wrong].restart();
    let (ok, out) = c.ctl(wrong, &["join", &via]);
    assert!(!ok && out.contains("cookie"), "{out}");
    assert!(c.nodes[1].log().contains("did not prove it holds the cluster's cookie"), "n2 refused it");
    c.nodes[wrong].kill();

    // forget: refused while the node is up, done once it is down.
    let (ok, out) = c.ctl(0, &["forget", "n3"]);
    assert!(!ok && out.contains("is up"), "{out}");
    c.nodes[2].kill();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (ok, out) = c.ctl(0, &["forget", "n3"]);
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "n3 never forgotten: {out}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(members_become(&c, 1, &["n1", "n2"]).await, "{:?}", members(&c, 1).await);
    // Two voters left, both up: writes go on.
    assert_eq!(add_user(&c, 1, "after").await / 100, 2);
    assert!(login_becomes(&c, 0, "after", "%2F", true).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_refuses_writes_and_converges_after_healing() {
    use common::proxy::Proxy;
    // Every member reaches every other through a proxy of its own: (from, to) → proxy.
    let mut proxies: Vec<((usize, usize), Proxy)> = Vec::new();
    let c = Cluster::start_routed(3, |i, j, addr| {
        let p = Proxy::start(addr);
        let at = p.addr;
        proxies.push(((i, j), p));
        at
    });
    let first = c.leader(&[0, 1, 2], None).await;
    let l = c.index(&first);
    assert_eq!(add_user(&c, 0, "before").await / 100, 2);
    let (conn, ch) = guest_channel(&c, l).await;
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare("before-q".into(), durable, Default::default()).await.expect("declared before the cut");
    let _ = conn.close(200, "bye".into()).await;
    // The leader is cut off from both others, both ways.
    for ((i, j), p) in &proxies {
        if *i == l || *j == l {
            p.cut();
        }
    }
    let majority: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let second = c.leader(&majority, Some(&first)).await;
    assert_ne!(second, first);
    // The majority takes writes; the old leader, alone, refuses them within its bound.
    assert_eq!(add_user(&c, majority[0], "majority").await / 100, 2);
    let t = Instant::now();
    let (code, body) = c.nodes[l]
        .api(GUEST, "PUT", "/api/users/minority", r#"{"password":"minority-pw","tags":"administrator"}"#)
        .await;
    assert_eq!(code, 503, "the minority refuses: {body}");
    assert!(t.elapsed() < Duration::from_secs(8), "bounded: {:?}", t.elapsed());
    // A queue declared there is refused too (541, as RabbitMQ's metadata store times out),
    // within the same bound; its publishes to its own queues go on.
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    assert_eq!(publish_confirmed(&c, l, "before-q", 5).await, 5, "its own queue takes messages");
    let t = Instant::now();
    let (conn, ch) = guest_channel(&c, l).await;
    let e = ch
        .queue_declare("minority-q".into(), durable, Default::default())
        .await
        .expect_err("the minority takes no declare");
    assert_eq!(amqp_code(&e), 541, "{e}");
    assert!(e.to_string().contains("no quorum"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(8), "bounded: {:?}", t.elapsed());
    assert!(!conn.status().connected(), "541 closes the connection");
    // It still serves what it has.
    assert!(login(&c, l, "before", "%2F").await);
    // Healed: one leader, the majority's change everywhere, and the refused one nowhere
    // (its entry never reached a majority, so the new leader's log replaced it).
    for (_, p) in &proxies {
        p.heal();
    }
    let agreed = c.leader(&[0, 1, 2], None).await;
    assert_eq!(agreed, second, "the majority's leader stays; the old one follows");
    for i in 0..3 {
        assert!(
            login_becomes(&c, i, "majority", "%2F", true).await,
            "majority's user on {}",
            c.nodes[i].name
        );
        assert!(
            !login(&c, i, "minority", "%2F").await,
            "the refused change is nowhere ({})",
            c.nodes[i].name
        );
    }
}

/// A CA and one certificate per node naming 127.0.0.1, plus a stranger's CA and certificate.
fn cluster_pki(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    for (ca_name, nodes) in [("ca", vec!["n1", "n2", "n3"]), ("other-ca", vec!["stranger"])] {
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        let ca_cert = ca.self_signed(&ca_key).expect("ca");
        std::fs::write(dir.join(format!("{ca_name}.pem")), ca_cert.pem()).expect("write");
        let issuer = Issuer::new(ca, ca_key);
        for n in nodes {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
            params.distinguished_name.push(DnType::CommonName, n);
            let cert = params.signed_by(&key, &issuer).expect("sign");
            std::fs::write(dir.join(format!("{n}.pem")), cert.pem()).expect("write");
            std::fs::write(dir.join(format!("{n}.key")), key.serialize_pem()).expect("write");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_the_members_speak_mutual_tls_and_refuse_a_stranger() {
    let pki = tempfile::tempdir().expect("dir");
    cluster_pki(pki.path());
    let p = pki.path().to_path_buf();
    let tls = move |name: &str| {
        let file = |f: &str| p.join(f).display().to_string();
        format!(
            "amqps-listen = \"127.0.0.1:0\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
            file(&format!("{name}.pem")),
            file(&format!("{name}.key")),
            file("ca.pem")
        )
    };
    let c = Cluster::start_full(3, |_, _, a| a, tls.clone());
    c.leader(&[0, 1, 2], None).await;
    assert_eq!(add_user(&c, 0, "tls-user").await / 100, 2);
    assert!(login_becomes(&c, 2, "tls-user", "%2F", true).await, "replicated over TLS");
    // A plain TCP client gets nothing from the inter-node listener: the TLS handshake fails.
    let mut plain = tokio::net::TcpStream::connect(c.nodes[1].cluster).await.expect("connect");
    let hello = br#"{"cluster":"n1,n2,n3","from":"x","class":"Control"}"#;
    let mut frame = (hello.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(hello);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = plain.write_all(&frame).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), plain.read(&mut buf)).await;
    // Closed, or a TLS alert record (content type 21): never a frame of the cluster's protocol.
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))) || matches!(read, Ok(Ok(n)) if n > 0 && buf[0] == 21),
        "no answer but TLS's refusal: {read:?} {:?}",
        &buf[..8]
    );
    // A node whose certificate another CA signed cannot join (it trusts the cluster's CA, but
    // the members do not trust its certificate).
    let stranger_pki = pki.path().to_path_buf();
    let mut c = c;
    let s = c.add("stranger", "strangers");
    let file = |f: &str| stranger_pki.join(f).display().to_string();
    let text = std::fs::read_to_string(&c.nodes[s].config).expect("config");
    let tls = format!(
        "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
        file("stranger.pem"),
        file("stranger.key"),
        file("ca.pem")
    );
    std::fs::write(&c.nodes[s].config, format!("amqps-listen = \"127.0.0.1:0\"\n{text}{tls}"))
        .expect("config");
    c.nodes[s].kill();
    c.nodes[s].restart();
    let via = c.nodes[0].cluster.to_string();
    let (ok, out) = c.ctl(s, &["join", &via]);
    assert!(!ok, "a stranger joined: {out}");
    // (Under TLS 1.3 the dialer hears of the refusal only as a lost connection.)
    assert!(
        c.nodes[0].log().contains("inter-node TLS handshake failed"),
        "n1 refused the stranger's certificate"
    );
    assert!(members(&c, 0).await.len() == 3, "still three members");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_raft_log_cannot_be_synced_stops_and_the_others_go_on() {
    let mut c = Cluster::start(3);
    let leader = c.leader(&[0, 1, 2], None).await;
    let l = c.index(&leader);
    let f = (0..3).find(|i| *i != l).unwrap_or(0);
    // The follower again, under the fault shim.
    let faults = c.nodes[f].dir.join("faults");
    std::fs::create_dir_all(&faults).expect("faults dir");
    let shim = common::process::shim(&c.nodes[f].dir);
    c.nodes[f].env = vec![
        ("LD_PRELOAD".into(), shim.display().to_string()),
        ("WARREN_FAULTS_DIR".into(), faults.display().to_string()),
    ];
    c.nodes[f].kill();
    c.nodes[f].restart();
    assert_eq!(c.leader(&[0, 1, 2], None).await, leader);
    // Its fsyncs fail from now on: the next append it receives cannot be made durable.
    std::fs::write(faults.join("fsync"), b"").expect("arm");
    assert_eq!(add_user(&c, l, "synced").await / 100, 2, "the leader and the other member commit it");
    let stopped = c.nodes[f].exited_within(Duration::from_secs(15));
    assert_eq!(stopped, Some(false), "the member stopped with an error: {}", c.nodes[f].log());
    assert!(c.nodes[f].log().contains("the cluster's Raft node stopped"), "{}", c.nodes[f].log());
    // Disk healthy again: it restarts from its log and catches up.
    std::fs::remove_file(faults.join("fsync")).expect("disarm");
    c.nodes[f].restart();
    assert!(login_becomes(&c, f, "synced", "%2F", true).await, "it caught up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_applies_the_log_again_without_deleting_a_later_vhosts_data() {
    use lapin::BasicProperties;
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
    let mut c = Cluster::start(3);
    c.leader(&[0, 1, 2], None).await;
    // Made, deleted and made again: the log holds all three.
    for (method, path) in [("PUT", "/api/vhosts/v"), ("DELETE", "/api/vhosts/v"), ("PUT", "/api/vhosts/v")] {
        let (code, body) = c.nodes[0].api(GUEST, method, path, "").await;
        assert!((200..300).contains(&code), "{method} {path}: {code} {body}");
    }
    let conn = Connection::connect(&c.nodes[0].uri("guest", "guest", "v"), ConnectionProperties::default())
        .await
        .expect("guest on v");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare("keep".into(), durable, Default::default()).await.expect("declare");
    let persistent = BasicProperties::default().with_delivery_mode(2);
    let confirm = ch
        .basic_publish("".into(), "keep".into(), BasicPublishOptions::default(), b"kept", persistent)
        .await
        .expect("publish");
    assert!(confirm.await.expect("confirm").is_ack());
    let _ = conn.close(200, "bye".into()).await;
    // A crash: at the restart the log is applied again from its start.
    c.nodes[0].kill();
    c.nodes[0].restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let depth = loop {
        let (code, body) = c.nodes[0].api(GUEST, "GET", "/api/queues/v/keep", "").await;
        if code == 200 {
            let q: serde_json::Value = serde_json::from_str(&body).expect("json");
            break q["messages"].as_u64();
        }
        assert!(Instant::now() < deadline, "queue keep not served again: {code} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(depth, Some(1), "the replayed deletion left the later vhost's message alone");
}

/// Adds `user` through member `i`, retrying a refusal (an election under way) for up to
/// 20 s as a client would; whether it was told the user was made.
async fn add_user_retrying(c: &Cluster, i: usize, user: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if add_user(c, i, user).await / 100 == 2 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// A rolling restart: each member in turn stopped cleanly (SIGTERM) and started again on
/// its data dir while the other two take changes. Every change a client was told was made
/// is on every member at the end, and each member serves again after its restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_change_and_every_member_serves_after_it() {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    let mut c = Cluster::start(3);
    c.leader(&[0, 1, 2], None).await;
    // Durable topology and persistent messages: a queue on each member, bound to an exchange,
    // each holding what was published through another member.
    {
        let (_conn, ch) = guest_channel(&c, 0).await;
        let xopts = lapin::options::ExchangeDeclareOptions { durable: true, ..Default::default() };
        ch.exchange_declare("rx".into(), lapin::ExchangeKind::Fanout, xopts, Default::default())
            .await
            .expect("exchange");
    }
    for i in 0..3 {
        let (_conn, ch) = guest_channel(&c, i).await;
        let q = format!("rolled-q{i}");
        let durable = QueueDeclareOptions { durable: true, ..Default::default() };
        ch.queue_declare(q.as_str().into(), durable, Default::default()).await.expect("declare");
        ch.queue_bind(
            q.as_str().into(),
            "rx".into(),
            "".into(),
            QueueBindOptions::default(),
            Default::default(),
        )
        .await
        .expect("bind");
    }
    for i in 0..3 {
        let q = format!("rolled-q{i}");
        assert!(passive_becomes(&c, (i + 1) % 3, &q, 200).await);
        assert_eq!(publish_confirmed(&c, (i + 1) % 3, &q, 10).await, 10);
    }
    let mut made = Vec::new();
    for i in 0..3 {
        let t = Instant::now();
        assert!(c.nodes[i].stop(), "{} stops cleanly on SIGTERM: {}", c.nodes[i].name, c.nodes[i].log());
        let other = (i + 1) % 3;
        let user = format!("rolled{i}");
        assert!(
            add_user_retrying(&c, other, &user).await,
            "{user} through {} while {} is down",
            c.nodes[other].name,
            c.nodes[i].name
        );
        made.push(user);
        c.nodes[i].restart();
        let back: Vec<usize> = (0..3).collect();
        c.leader(&back, None).await;
        for u in &made {
            assert!(login_becomes(&c, i, u, "%2F", true).await, "{u} on the restarted {}", c.nodes[i].name);
        }
        eprintln!("{} rolled in {:?}", c.nodes[i].name, t.elapsed());
    }
    for u in &made {
        for i in 0..3 {
            assert!(login_becomes(&c, i, u, "%2F", true).await, "{u} on {}", c.nodes[i].name);
        }
    }
    // Every queue on its home with its messages, and the exchange routes to all three
    // again: one confirmed publish through n2 reaches each.
    for i in 0..3 {
        assert_eq!(passive(&c, i, &format!("rolled-q{i}")).await, Ok(10), "rolled-q{i} on its home");
    }
    let (_conn, ch) = guest_channel(&c, 1).await;
    ch.confirm_select(Default::default()).await.expect("confirms");
    let props = lapin::BasicProperties::default().with_delivery_mode(2);
    let confirm =
        ch.basic_publish("rx".into(), "".into(), Default::default(), b"after", props).await.expect("publish");
    assert!(confirm.await.expect("confirm").is_ack());
    for i in 0..3 {
        assert_eq!(passive(&c, i, &format!("rolled-q{i}")).await, Ok(11), "rolled-q{i} took it");
    }
}

/// Opens a channel on member `i` as guest in `/`.
async fn guest_channel(c: &Cluster, i: usize) -> (Connection, lapin::Channel) {
    let conn = Connection::connect(&c.nodes[i].uri("guest", "guest", "/"), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// A passive declare of `queue` on member `i`: the queue's message count, or the error code.
async fn passive(c: &Cluster, i: usize, queue: &str) -> Result<u32, u16> {
    let (conn, ch) = guest_channel(c, i).await;
    let opts = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    let r = ch.queue_declare(queue.into(), opts, Default::default()).await;
    let _ = conn.close(200, "bye".into()).await;
    r.map(|q| q.message_count()).map_err(|e| amqp_code(&e))
}

/// Waits up to 10 s for `passive` on member `i` to answer with `code` (200: found).
async fn passive_becomes(c: &Cluster, i: usize, queue: &str, code: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if passive(c, i, queue).await.map_or_else(|e| e, |_| 200) == code {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn amqp_code(e: &lapin::Error) -> u16 {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => p.get_id(),
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_is_the_clusters_and_a_queue_is_served_through_any_member() {
    use lapin::options::{
        BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    let c = Cluster::start(3);
    c.leader(&[0, 1, 2], None).await;

    // Declared on n1 (its home), an exchange on n2, bound on n2: each answered once the
    // cluster applied it on the member asked.
    let (_c1, ch1) = guest_channel(&c, 0).await;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch1.queue_declare("orders".into(), durable, FieldTable::default()).await.expect("declare on n1");
    let (_c2, ch2) = guest_channel(&c, 1).await;
    let xopts = ExchangeDeclareOptions { durable: true, ..Default::default() };
    ch2.exchange_declare("x".into(), lapin::ExchangeKind::Direct, xopts, FieldTable::default())
        .await
        .expect("exchange on n2");
    ch2.queue_bind(
        "orders".into(),
        "x".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind on n2, to a queue whose home is n1");
    // Every member knows the queue.
    assert!(passive_becomes(&c, 2, "orders", 200).await, "orders known on n3");
    // A redeclare that differs is refused on any member, with RabbitMQ's code.
    let (_c3, ch3) = guest_channel(&c, 2).await;
    let e = ch3.queue_declare("orders".into(), QueueDeclareOptions::default(), FieldTable::default()).await;
    assert_eq!(e.map(|_| ()).map_err(|e| amqp_code(&e)), Err(406), "inequivalent on n3");

    // Published on n3 through the exchange n2 declared: confirmed once n1 took (and synced)
    // each message. A change made through n3 first: answered once n3 applied it, so n3 has
    // applied the binding before it too (the log is one order for every member).
    let (_c3, ch3) = guest_channel(&c, 2).await;
    ch3.queue_declare("barrier".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("declare on n3");
    ch3.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let props = lapin::BasicProperties::default().with_delivery_mode(2);
    let mut confirms = Vec::new();
    for i in 0..200u32 {
        let confirm = ch3
            .basic_publish(
                "x".into(),
                "k".into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                props.clone(),
            )
            .await
            .expect("publish on n3");
        confirms.push(confirm);
    }
    for (i, confirm) in confirms.into_iter().enumerate() {
        assert!(confirm.await.expect("confirm").is_ack(), "message {i} acked");
    }
    assert_eq!(passive(&c, 0, "orders").await, Ok(200), "every message is on n1");
    // A transaction through n2: commit-ok once n1 took its message.
    let (_c2t, ch2t) = guest_channel(&c, 1).await;
    ch2t.tx_select().await.expect("tx.select");
    ch2t.basic_publish(
        "x".into(),
        "k".into(),
        BasicPublishOptions::default(),
        &200u32.to_be_bytes(),
        props.clone(),
    )
    .await
    .expect("publish in the transaction");
    assert_eq!(passive(&c, 0, "orders").await, Ok(200), "not before the commit");
    ch2t.tx_commit().await.expect("tx.commit");
    assert_eq!(passive(&c, 0, "orders").await, Ok(201), "on n1 once committed");

    // `warren cluster status` names each queue's home, on any member.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["cluster", "status", "--config", &c.nodes[2].config.display().to_string()])
        .output()
        .expect("warren cluster status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains("orders") && l.contains("classic") && l.trim_end().ends_with("n1")),
        "orders lives on n1:\n{text}"
    );
    // Its numbers come from its home alone: n3's metrics do not count it.
    let (_, metrics) = common::http_to(c.nodes[2].metrics, "GET", "/metrics").await;
    assert!(!metrics.contains("queue=\"orders\""), "{metrics}");
    let (_, metrics) = common::http_to(c.nodes[0].metrics, "GET", "/metrics").await;
    assert!(metrics.contains("queue=\"orders\""), "n1 counts it: {metrics}");

    // Consumed on n1, every message once, in order.
    let mut consumer = ch1
        .basic_consume(
            "orders".into(),
            "c".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("consume on n1");
    for i in 0..201u32 {
        let d = tokio::time::timeout(Duration::from_secs(10), futures_lite::StreamExt::next(&mut consumer))
            .await
            .expect("delivery in time")
            .expect("a delivery")
            .expect("ok");
        assert_eq!(d.data, i.to_be_bytes(), "in order");
    }

    // Consuming through another member is refused, saying where the queue lives.
    let (c2b, ch2b) = guest_channel(&c, 1).await;
    let e = ch2b
        .basic_consume("orders".into(), "c2".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .expect_err("not through n2 yet");
    assert_eq!(amqp_code(&e), 406, "{e}");
    // A channel error: the connection goes on.
    assert!(c2b.status().connected(), "only the channel closed");
    c2b.create_channel().await.expect("another channel on the same connection");
    assert!(e.to_string().contains("lives on node 'n1'"), "{e}");

    // An exclusive queue of a connection on n2 is locked on n1, and goes when that
    // connection closes: everywhere.
    let (c2x, ch2x) = guest_channel(&c, 1).await;
    let excl = QueueDeclareOptions { exclusive: true, ..Default::default() };
    ch2x.queue_declare("mine".into(), excl, FieldTable::default()).await.expect("exclusive on n2");
    // Known on n1, and locked there, as an exclusive queue of another connection is.
    assert!(passive_becomes(&c, 0, "mine", 405).await, "known and locked on n1");
    let (_c1b, ch1b) = guest_channel(&c, 0).await;
    let e = ch1b.queue_declare("mine".into(), excl, FieldTable::default()).await.expect_err("locked");
    assert_eq!(amqp_code(&e), 405, "{e}");
    c2x.close(200, "bye".into()).await.expect("close");
    for i in 0..3 {
        assert!(passive_becomes(&c, i, "mine", 404).await, "mine gone on {}", c.nodes[i].name);
    }

    // Deleted through n3: gone on every member, and its binding with it.
    let (_c3b, ch3b) = guest_channel(&c, 2).await;
    ch3b.queue_delete("orders".into(), Default::default()).await.expect("delete on n3");
    for i in 0..3 {
        assert!(passive_becomes(&c, i, "orders", 404).await, "orders gone on {}", c.nodes[i].name);
    }
}

/// Publishes `n` persistent messages to `queue` through member `i` with confirms; how many
/// were acked (the rest were nacked).
async fn publish_confirmed(c: &Cluster, i: usize, queue: &str, n: u32) -> usize {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let (_conn, ch) = guest_channel(c, i).await;
    ch.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
    let props = lapin::BasicProperties::default().with_delivery_mode(2);
    let mut confirms = Vec::new();
    for k in 0..n {
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &k.to_be_bytes(),
                props.clone(),
            )
            .await
            .expect("publish");
        confirms.push(confirm);
    }
    let mut acked = 0;
    for confirm in confirms {
        let done = tokio::time::timeout(Duration::from_secs(40), confirm).await.expect("a confirm in time");
        acked += usize::from(done.expect("confirm").is_ack());
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_keeps_its_messages_through_its_homes_crash_and_is_unavailable_meanwhile() {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;
    let mut c = Cluster::start(3);
    c.leader(&[0, 1, 2], None).await;
    let (conn, ch1) = guest_channel(&c, 0).await;
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    ch1.queue_declare("keep".into(), durable, FieldTable::default()).await.expect("durable on n1");
    ch1.queue_declare("temp".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("transient on n1");
    // A name used before: its earlier incarnation deleted, the later one holding messages.
    // Applying the log again at n1's start must never take the later one for the earlier.
    ch1.queue_declare("again".into(), durable, FieldTable::default()).await.expect("again, first");
    ch1.queue_delete("again".into(), Default::default()).await.expect("again deleted");
    ch1.queue_declare("again".into(), durable, FieldTable::default()).await.expect("again, second");
    let _ = conn.close(200, "bye".into()).await;
    assert_eq!(publish_confirmed(&c, 0, "again", 7).await, 7);
    // An exclusive queue of a connection that stays open on n1 until n1 dies.
    let (_owner, och) = guest_channel(&c, 0).await;
    let excl = QueueDeclareOptions { exclusive: true, ..Default::default() };
    och.queue_declare("owned".into(), excl, FieldTable::default()).await.expect("exclusive on n1");
    assert!(passive_becomes(&c, 1, "owned", 405).await, "known, and locked, on n2");
    // Through n2 once it knows the queue: every message acked means every one synced on n1.
    assert!(passive_becomes(&c, 1, "keep", 200).await, "keep known on n2");
    assert_eq!(publish_confirmed(&c, 1, "keep", 50).await, 50);

    // n1 crashes: a publish to its queue through n2 is nacked (n1 cannot take it), within
    // the bound, and the cluster goes on with the other two.
    c.nodes[0].kill();
    let t = Instant::now();
    assert_eq!(publish_confirmed(&c, 1, "keep", 3).await, 0, "nacked while its home is down");
    assert!(t.elapsed() < Duration::from_secs(35), "nacked within the bound: {:?}", t.elapsed());
    let (_c2, ch2) = guest_channel(&c, 1).await;
    ch2.queue_declare("meanwhile".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("the majority takes changes");
    // Down past the bound (10 s): the queue exclusive to its connection goes, everywhere.
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut owned = passive(&c, 1, "owned").await;
    while owned != Err(404) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        owned = passive(&c, 1, "owned").await;
    }
    assert_eq!(owned, Err(404), "n1's exclusive queue dropped while n1 is down");
    assert_eq!(passive(&c, 2, "owned").await, Err(404));

    // Back from its data dir and the log: its durable queue with every message; the
    // transient one is gone everywhere, as RabbitMQ drops a restarted node's transient queues.
    c.nodes[0].restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut count = passive(&c, 0, "keep").await;
    while count != Ok(50) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        count = passive(&c, 0, "keep").await;
    }
    assert_eq!(count, Ok(50), "keep has its 50 messages after n1's crash");
    assert_eq!(passive(&c, 0, "again").await, Ok(7), "the later incarnation kept its messages");
    for i in 0..3 {
        assert!(passive_becomes(&c, i, "temp", 404).await, "temp gone on {}", c.nodes[i].name);
        assert!(passive_becomes(&c, i, "meanwhile", 200).await, "meanwhile on {}", c.nodes[i].name);
    }
    // And it takes messages through the others again.
    assert_eq!(publish_confirmed(&c, 2, "keep", 10).await, 10);
    assert_eq!(passive(&c, 0, "keep").await, Ok(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_queues_of_its_own_does_not_start_as_a_cluster_member() {
    let dir = tempfile::tempdir().expect("dir");
    let p = common::process::Process::start(dir.path(), &[]);
    let (conn, ch) = p.channel().await;
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    ch.queue_declare("mine".into(), durable, Default::default()).await.expect("declare");
    let _ = conn.close(200, "bye".into()).await;
    p.kill();
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let config = dir.path().join("member.toml");
    std::fs::write(
        &config,
        format!(
            "data-dir = \"{}\"\namqp-listen = \"127.0.0.1:0\"\nmanagement-listen = \"127.0.0.1:0\"\nmetrics-listen = \"127.0.0.1:0\"\nquic-listen = \"127.0.0.1:0\"\n\n[cluster]\nnode = \"n1\"\nlisten = \"127.0.0.1:{port}\"\npeers = [\"n1@127.0.0.1:{port}\"]\ncookie = \"the test cluster's cookie\"\n",
            dir.path().join("data").display()
        ),
    )
    .expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--config", &config.display().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "it kept running");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err).expect("read");
    assert!(!status.success(), "refused: {err}");
    assert!(err.contains("1 queue(s) of a single node") && err.contains("fresh data dir"), "{err}");
}
