//! The `retry-plugin` world: implement [`Retry`], then `export_retry!(YourType)`.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "retry-plugin",
        pub_export_macro: true,
        additional_derives: [PartialEq],
        export_macro_name: "__export_retry_world",
        default_bindings_module: "warren_plugin_sdk::retry::bindings",
    });
}

pub use bindings::exports::warren::plugin::retry_policy::{Decision, Reason, Retry as RetryAfter};
pub use bindings::warren::plugin::types::{Decimal, Field, FieldValue, Message, Properties};

/// A configured retry policy.
pub trait Retry: Sized + 'static {
    /// Builds the policy from its `config` table; an error stops the broker at start-up.
    fn create(config: Vec<(String, String)>) -> Result<Self, String>;

    /// What to do with `message` after its `attempt`-th failure (1 on the first).
    fn decide(&self, message: &Message, attempt: u32, why: Reason) -> Decision;
}

/// Adapts a [`Retry`] to the generated resource.
#[doc(hidden)]
pub struct Policy<T>(T);

impl<T: Retry> bindings::exports::warren::plugin::retry_policy::GuestPolicy for Policy<T> {
    fn create(
        config: Vec<(String, String)>,
    ) -> Result<bindings::exports::warren::plugin::retry_policy::Policy, String> {
        crate::route_panics_to_the_log();
        Ok(bindings::exports::warren::plugin::retry_policy::Policy::new(Policy(T::create(config)?)))
    }

    fn decide(&self, message: Message, attempt: u32, why: Reason) -> Decision {
        self.0.decide(&message, attempt, why)
    }
}

/// Exports a type implementing [`Retry`] as this component's retry policy.
#[macro_export]
macro_rules! export_retry {
    ($t:ty) => {
        struct __WarrenRetryPlugin;
        impl $crate::retry::bindings::exports::warren::plugin::retry_policy::Guest for __WarrenRetryPlugin {
            type Policy = $crate::retry::Policy<$t>;
        }
        $crate::retry::bindings::__export_retry_world!(__WarrenRetryPlugin);
    };
}
