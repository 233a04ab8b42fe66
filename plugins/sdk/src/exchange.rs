//! The `exchange-plugin` world: implement [`Exchange`], then `export_exchange!(YourType)`.

use std::cell::RefCell;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "exchange-plugin",
        pub_export_macro: true,
        additional_derives: [PartialEq],
        export_macro_name: "__export_exchange_world",
        default_bindings_module: "warren_plugin_sdk::exchange::bindings",
    });
}

pub use bindings::warren::plugin::types::{
    Binding, Decimal, Destination, Field, FieldValue, Fields, Message, Properties,
};

/// The routing state of one declared exchange.
pub trait Exchange: Sized + 'static {
    /// Builds the state from the declare arguments; an error refuses the declare (406).
    fn create(arguments: Fields) -> Result<Self, String>;

    /// Whether routes depend on the routing key alone; if so the broker caches them.
    fn routes_on_key_only(&self) -> bool {
        false
    }

    /// Refuses a binding this type cannot use; the text reaches the client (406).
    fn validate_binding(&self, _binding: &Binding) -> Result<(), String> {
        Ok(())
    }

    /// Indexes a validated binding; the same destination may be bound more than once.
    fn add_binding(&mut self, binding: Binding);

    /// Forgets one binding added earlier.
    fn remove_binding(&mut self, binding: &Binding);

    /// Appends where `message` goes; duplicates are fine, nothing means unroutable.
    fn route(&self, message: &Message, out: &mut Vec<Destination>);
}

/// Adapts an [`Exchange`] to the generated resource (resources are shared, hence the cell).
#[doc(hidden)]
pub struct Router<T>(RefCell<T>);

impl<T: Exchange> bindings::exports::warren::plugin::exchange::GuestRouter for Router<T> {
    fn create(arguments: Fields) -> Result<bindings::exports::warren::plugin::exchange::Router, String> {
        crate::route_panics_to_the_log();
        let state = T::create(arguments)?;
        Ok(bindings::exports::warren::plugin::exchange::Router::new(Router(RefCell::new(state))))
    }

    fn routes_on_key_only(&self) -> bool {
        self.0.borrow().routes_on_key_only()
    }

    fn validate_binding(&self, binding: Binding) -> Result<(), String> {
        self.0.borrow().validate_binding(&binding)
    }

    fn add_binding(&self, binding: Binding) {
        self.0.borrow_mut().add_binding(binding)
    }

    fn remove_binding(&self, binding: Binding) {
        self.0.borrow_mut().remove_binding(&binding)
    }

    fn route(&self, message: Message) -> Vec<Destination> {
        let mut out = Vec::new();
        self.0.borrow().route(&message, &mut out);
        out
    }
}

/// Exports a type implementing [`Exchange`] as this component's exchange type.
#[macro_export]
macro_rules! export_exchange {
    ($t:ty) => {
        struct __WarrenExchangePlugin;
        impl $crate::exchange::bindings::exports::warren::plugin::exchange::Guest for __WarrenExchangePlugin {
            type Router = $crate::exchange::Router<$t>;
        }
        $crate::exchange::bindings::__export_exchange_world!(__WarrenExchangePlugin);
    };
}
