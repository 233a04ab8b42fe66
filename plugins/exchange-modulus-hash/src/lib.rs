//! `modulus-hash` as a component: warren-core's native type behind the plugin interface.

warren_plugin_sdk::export_exchange!(
    warren_native_types::Native<warren_core::exchange::modulus_hash::Factory>
);
