//! The web UI in a real browser: Debian's headless Chromium driven through ChromeDriver
//! (WebDriver, with `fantoccini`). Log in with a broker user, see a queue appear after a
//! client declares it, purge it, replay a dead-letter queue; a screenshot is saved as an
//! artifact (`$CARGO_TARGET_TMPDIR/web-ui-*.png`). `scripts/test.sh` installs the browser.

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{TestBroker, http_raw, s, table};
use fantoccini::{Client, ClientBuilder, Locator};
use lapin::options::{BasicGetOptions, BasicPublishOptions, BasicRejectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// ChromeDriver on a free port, killed when dropped.
struct Driver(Child, u16);

impl Drop for Driver {
    // The whole process group: chromedriver and the browsers it started, even when the test
    // failed before closing its session.
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-9", "--", &group]).status();
        let _ = self.0.wait();
    }
}

async fn browser() -> (Driver, Client) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (apt-get install chromium chromium-driver; scripts/test.sh does)");
    let driver = Driver(child, port);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"]}),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    for _ in 0..100 {
        let built = ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        if let Ok(c) = built {
            return (driver, c);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start on port {}", driver.1);
}

/// Waits (up to 10 s) until the element at `css` has text containing `want`.
async fn text_of(c: &Client, css: &str, want: &str) -> String {
    let mut last = String::new();
    for _ in 0..100 {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            last = e.text().await.unwrap_or_default();
            if last.contains(want) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = c.source().await.unwrap_or_default();
    panic!("{css}: wanted '{want}', saw '{last}'; the page: {page}");
}

async fn screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("web-ui-{name}.png"));
    std::fs::write(&path, png).expect("save screenshot");
    println!("screenshot: {}", path.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn log_in_see_a_queue_purge_it_and_replay_dead_letters() {
    let b = TestBroker::start().await;
    let base = format!("http://{}", b.management.expect("management"));
    // The page itself needs no login and carries a policy that allows only its own origin.
    let (status, head, _) = http_raw(b.management.expect("m"), "GET", "/", "").await;
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("content-security-policy: default-src 'none'"), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-frame-options: deny"), "{head}");

    let (_driver, c) = browser().await;
    c.goto(&base).await.expect("open the UI");
    // A wrong password is refused in the page.
    c.find(Locator::Id("login-user")).await.expect("user field").send_keys("guest").await.expect("type");
    c.find(Locator::Id("login-password")).await.expect("password").send_keys("wrong").await.expect("type");
    c.find(Locator::Id("login-submit")).await.expect("submit").click().await.expect("click");
    text_of(&c, "#login-error", "Login failed").await;
    let password = c.find(Locator::Id("login-password")).await.expect("password");
    password.clear().await.expect("clear");
    password.send_keys("guest").await.expect("type");
    c.find(Locator::Id("login-submit")).await.expect("submit").click().await.expect("click");
    text_of(&c, "#alarms", "No alarms").await;
    let form = c.find(Locator::Id("login")).await.expect("login form");
    assert!(!form.is_displayed().await.expect("displayed?"), "the login form goes once logged in");

    // A client declares a queue and a dead-letter queue and dead-letters one message.
    let conn = Connection::connect(&b.uri(), ConnectionProperties::default()).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare("work.dlq".into(), QueueDeclareOptions::default(), FieldTable::default())
        .await
        .expect("dlq");
    let args = table(&[("x-dead-letter-exchange", s("")), ("x-dead-letter-routing-key", s("work.dlq"))]);
    ch.queue_declare("work".into(), QueueDeclareOptions::default(), args).await.expect("work");
    for body in [b"one".as_slice(), b"two", b"three"] {
        ch.basic_publish(
            "".into(),
            "work".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    let got = ch.basic_get("work".into(), BasicGetOptions::default()).await.expect("get").expect("a message");
    got.delivery.acker.reject(BasicRejectOptions { requeue: false }).await.expect("reject");
    assert!(common::eventually(|| b.counts("work.dlq").is_some_and(|c| c.0 == 1)).await);

    // A queue named "." cannot be addressed by a URL (the browser resolves dot segments): it
    // is listed, without a link, and the page still works.
    ch.queue_declare(".".into(), QueueDeclareOptions::default(), FieldTable::default()).await.expect("dot");
    // The queue list shows both, with their depth.
    c.goto(&format!("{base}/#/queues")).await.expect("queues");
    text_of(&c, "tr[data-queue='//work'] td[data-field='ready']", "2").await;
    // Dead-letter counts by reason are the source queue's; the DLQ is marked as one.
    text_of(&c, "tr[data-queue='//work']", "rejected: 1").await;
    text_of(&c, "tr[data-queue='//work.dlq'] td:last-child", "yes").await;
    let dot = c.find(Locator::Css("tr[data-queue='//.']")).await.expect("the '.' queue is listed");
    assert!(dot.find(Locator::Css("a")).await.is_err(), "without a link");
    screenshot(&c, "queues").await;

    // Replay the dead-letter queue from its page: the message goes back to `work`.
    c.goto(&format!("{base}/#/queue/%2F/work.dlq")).await.expect("dlq page");
    c.wait().for_element(Locator::Id("replay")).await.expect("replay button").click().await.expect("click");
    text_of(&c, "#result", "moved 1").await;
    // The same as a background task, listed on the page (nothing left to move now).
    c.find(Locator::Css("#replay-task button")).await.expect("background").click().await.expect("click");
    text_of(&c, "#result", "started").await;
    text_of(&c, "#replays", "completed").await;
    assert!(common::eventually(|| b.counts("work").is_some_and(|c| c.0 == 3)).await, "replayed");

    // Get messages (requeued), then purge, from the queue's page.
    c.goto(&format!("{base}/#/queue/%2F/work")).await.expect("queue page");
    c.wait()
        .for_element(Locator::Css("#get-messages button"))
        .await
        .expect("get")
        .click()
        .await
        .expect("click");
    text_of(&c, "#messages", "three").await;
    screenshot(&c, "queue").await;
    c.find(Locator::Id("purge")).await.expect("purge").click().await.expect("click");
    text_of(&c, "#result", "purged").await;
    assert!(common::eventually(|| b.counts("work").is_some_and(|c| c.0 == 0)).await, "purged");

    // The admin page adds a vhost; the API sees it.
    c.goto(&format!("{base}/#/admin")).await.expect("admin");
    let name =
        c.wait().for_element(Locator::Css("#add-vhost input[name='name']")).await.expect("vhost field");
    name.send_keys("from-ui").await.expect("type");
    c.find(Locator::Css("#add-vhost button")).await.expect("add").click().await.expect("click");
    text_of(&c, "#result", "vhost from-ui added").await;
    let (status, _) = common::http(&b, "GET", "/api/vhosts/from-ui").await;
    assert_eq!(status, 200);

    c.close().await.expect("close browser");
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;
}
