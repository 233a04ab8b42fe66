//! The `adapter-plugin` world: implement [`Adapter`] (built once per instance from the
//! config entry) and [`Session`] (one per client connection), then
//! `export_adapter!(YourAdapter)`. The broker owns the sockets; a session gets bytes, the
//! broker's events and the time, and answers with commands and bytes.

use std::cell::RefCell;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "adapter-plugin",
        pub_export_macro: true,
        additional_derives: [PartialEq],
        export_macro_name: "__export_adapter_world",
        default_bindings_module: "warren_plugin_sdk::adapter::bindings",
    });
}

pub use bindings::exports::warren::plugin::adapter::{
    Bind, Command, ConnectionInfo, Consume, DeclareQueue, Delivery, Done, Event, Failure, Login, Message,
    Output, Publish, QueueRef, Retain, SendRetained, Will,
};
pub use bindings::warren::plugin::types::{Decimal, Field, FieldValue, Fields, Properties};

/// The adapter of one instance: what its sessions share (their configuration).
pub trait Adapter: Sized + 'static {
    /// One client connection's state.
    type Session: Session;

    /// Builds the adapter from the config entry's table; an error refuses the component.
    fn new(config: Vec<(String, String)>) -> Result<Self, String>;

    /// A session for a connection accepted at `now`.
    fn open(&self, info: ConnectionInfo, now: u64) -> Self::Session;
}

/// One client connection's protocol state.
pub trait Session: 'static {
    /// Bytes from the client, split anywhere.
    fn receive(&mut self, now: u64, bytes: Vec<u8>) -> Output;

    /// Events from the broker.
    fn handle(&mut self, now: u64, events: Vec<Event>) -> Output;

    /// The time the last output asked for came.
    fn timeout(&mut self, now: u64) -> Output;

    /// The socket closed under the session.
    fn socket_closed(&mut self, now: u64) -> Output;
}

/// Properties with nothing set.
pub fn no_properties() -> Properties {
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

/// Adapts an [`Adapter`] to the generated resource.
#[doc(hidden)]
pub struct AdapterResource<A>(A);

/// Adapts a [`Session`] to the generated resource.
#[doc(hidden)]
pub struct SessionResource<S>(RefCell<S>);

impl<A: Adapter> bindings::exports::warren::plugin::adapter::GuestAdapter for AdapterResource<A> {
    fn create(
        config: Vec<(String, String)>,
    ) -> Result<bindings::exports::warren::plugin::adapter::Adapter, String> {
        crate::route_panics_to_the_log();
        let a = A::new(config)?;
        Ok(bindings::exports::warren::plugin::adapter::Adapter::new(AdapterResource(a)))
    }

    fn open(&self, info: ConnectionInfo, now: u64) -> bindings::exports::warren::plugin::adapter::Session {
        let s = self.0.open(info, now);
        bindings::exports::warren::plugin::adapter::Session::new(SessionResource(RefCell::new(s)))
    }
}

impl<S: Session> bindings::exports::warren::plugin::adapter::GuestSession for SessionResource<S> {
    fn receive(&self, now: u64, bytes: Vec<u8>) -> Output {
        self.0.borrow_mut().receive(now, bytes)
    }

    fn handle(&self, now: u64, events: Vec<Event>) -> Output {
        self.0.borrow_mut().handle(now, events)
    }

    fn timeout(&self, now: u64) -> Output {
        self.0.borrow_mut().timeout(now)
    }

    fn socket_closed(&self, now: u64) -> Output {
        self.0.borrow_mut().socket_closed(now)
    }
}

/// Exports a type implementing [`Adapter`] as this component's protocol adapter.
#[macro_export]
macro_rules! export_adapter {
    ($t:ty) => {
        struct __WarrenAdapterPlugin;
        impl $crate::adapter::bindings::exports::warren::plugin::adapter::Guest for __WarrenAdapterPlugin {
            type Adapter = $crate::adapter::AdapterResource<$t>;
            type Session = $crate::adapter::SessionResource<<$t as $crate::adapter::Adapter>::Session>;
        }
        $crate::adapter::bindings::__export_adapter_world!(__WarrenAdapterPlugin);
    };
}
