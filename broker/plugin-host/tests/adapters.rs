//! Protocol adapters' instances: sessions share them, a reload gives new sessions the new
//! component while open ones stay on theirs, and a failure ends only its instance's sessions.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use warren_plugin_host::adapter::{ConnectionInfo, SessionError};
use warren_plugin_host::{AdapterPlugin, Limits, LoadError, Runtime, guests};

fn echo(sessions_per_instance: usize) -> AdapterPlugin {
    let runtime = Runtime::new(Some(&guests::cache_dir())).expect("engine");
    let path = guests::component("fixture-adapter-misbehave");
    AdapterPlugin::load(&runtime, "echo", &path, Vec::new(), Limits::default(), sessions_per_instance)
        .expect("loads")
}

fn info(peer: &str) -> ConnectionInfo {
    ConnectionInfo { peer: peer.into(), listener: "127.0.0.1:1".into(), tls_identity: None }
}

#[test]
fn sessions_share_instances_up_to_their_number() {
    let p = echo(2);
    let waker = Arc::new(|| {});
    let sessions: Vec<_> =
        (0..5).map(|i| p.open(&info(&format!("c{i}")), 0, waker.clone()).expect("open")).collect();
    assert_eq!(p.census(), (5, 3), "five sessions in three instances");
    drop(sessions);
    assert_eq!(p.census().0, 0);
}

#[test]
fn a_reload_gives_new_sessions_the_new_component_and_keeps_the_open_ones() {
    let p = echo(4);
    let woken = Arc::new(AtomicUsize::new(0));
    let waker = {
        let woken = woken.clone();
        Arc::new(move || {
            woken.fetch_add(1, Ordering::Relaxed);
        })
    };
    let mut old = p.open(&info("old"), 0, waker.clone()).expect("open");
    assert_eq!(old.receive(1, b"hi\n").expect("echo").bytes, b"hi\n");
    p.reload().expect("reloads");
    let mut new = p.open(&info("new"), 2, waker.clone()).expect("open");
    assert_eq!(p.census(), (2, 2), "the new session is in an instance of the new component");
    assert_eq!(old.receive(3, b"still\n").expect("the old session serves on").bytes, b"still\n");
    // The new instance traps: only its session ends, and it is told at once.
    let trapped = new.receive(4, b"trap");
    assert!(matches!(trapped, Err(SessionError::Failed { .. })), "{trapped:?}");
    assert_eq!(woken.load(Ordering::Relaxed), 1, "the failed instance's session was woken");
    assert!(new.receive(5, b"x").is_err(), "its state is gone");
    assert_eq!(old.receive(6, b"ok\n").expect("unaffected").bytes, b"ok\n");
    // A later session gets a fresh instance of the current component.
    let mut later = p.open(&info("later"), 7, waker).expect("open");
    assert_eq!(later.receive(8, b"yes\n").expect("echo").bytes, b"yes\n");
}

#[test]
fn a_component_of_another_world_is_not_an_adapter() {
    let runtime = Runtime::new(Some(&guests::cache_dir())).expect("engine");
    let path = guests::component("exchange-topic");
    let err =
        AdapterPlugin::load(&runtime, "x", &path, Vec::new(), Limits::default(), 1).expect_err("refused");
    assert!(
        matches!(err, LoadError::WrongWorld { .. }) && err.to_string().contains("adapter-plugin"),
        "{err}"
    );
}
