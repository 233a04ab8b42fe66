//! The `adapter-plugin` world: implement [`Adapter`], then `export_adapter!(YourType)`.
//! One value per client connection; the broker owns the socket and hands it bytes and events.

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
    Bind, Command, Consume, DeclareExchange, DeclareQueue, Delivery, Event, Failure, Output, Publish,
    Returned,
};
pub use bindings::warren::plugin::types::{Field, FieldValue, Fields, Properties};

/// One client connection's protocol state.
pub trait Adapter: Sized + 'static {
    /// A new session, for a newly accepted connection.
    fn new() -> Self;

    /// Bytes from the client, split anywhere; an error closes the connection.
    fn receive(&mut self, bytes: Vec<u8>) -> Result<Output, String>;

    /// An event from the broker.
    fn handle(&mut self, event: Event) -> Output;
}

/// Adapts an [`Adapter`] to the generated resource.
#[doc(hidden)]
pub struct Session<T>(RefCell<T>);

impl<T: Adapter> bindings::exports::warren::plugin::adapter::GuestSession for Session<T> {
    fn new() -> Self {
        crate::route_panics_to_the_log();
        Session(RefCell::new(T::new()))
    }

    fn receive(&self, bytes: Vec<u8>) -> Result<Output, String> {
        self.0.borrow_mut().receive(bytes)
    }

    fn handle(&self, event: Event) -> Output {
        self.0.borrow_mut().handle(event)
    }
}

/// Exports a type implementing [`Adapter`] as this component's protocol adapter.
#[macro_export]
macro_rules! export_adapter {
    ($t:ty) => {
        struct __WarrenAdapterPlugin;
        impl $crate::adapter::bindings::exports::warren::plugin::adapter::Guest for __WarrenAdapterPlugin {
            type Session = $crate::adapter::Session<$t>;
        }
        $crate::adapter::bindings::__export_adapter_world!(__WarrenAdapterPlugin);
    };
}
