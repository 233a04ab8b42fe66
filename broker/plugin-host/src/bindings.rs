//! Host bindings generated from `wit/`: the exchange world here, the retry world beside it
//! sharing the `types` and `host` interfaces, so one host implementation serves both.

#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "exchange-plugin",
});

/// The retry-policy world.
pub(crate) mod retry_world {
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "retry-plugin",
        with: {
            "warren:plugin/types": super::warren::plugin::types,
            "warren:plugin/host": super::warren::plugin::host,
        },
    });
}

/// The protocol-adapter world.
pub(crate) mod adapter_world {
    #![allow(missing_docs)]
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "adapter-plugin",
        with: {
            "warren:plugin/types": super::warren::plugin::types,
            "warren:plugin/host": super::warren::plugin::host,
        },
    });
}

/// Ties a world's generated types to the host: its name, its imports, its exports.
macro_rules! world {
    ($pre:ty, $exports:ty, $name:literal) => {
        impl crate::instance::World for $pre {
            const NAME: &'static str = $name;
            type Exports = $exports;

            fn link(
                linker: &mut wasmtime::component::Linker<crate::state::HostState>,
            ) -> wasmtime::Result<()> {
                <$exports>::add_to_linker::<_, wasmtime::component::HasSelf<crate::state::HostState>>(
                    linker,
                    |s| s,
                )
            }

            fn new(pre: wasmtime::component::InstancePre<crate::state::HostState>) -> wasmtime::Result<Self> {
                <$pre>::new(pre)
            }

            fn instantiate(
                &self,
                store: &mut wasmtime::Store<crate::state::HostState>,
            ) -> wasmtime::Result<$exports> {
                <$pre>::instantiate(self, store)
            }
        }
    };
}

world!(ExchangePluginPre<crate::state::HostState>, ExchangePlugin, "warren:plugin/exchange-plugin");
world!(
    retry_world::RetryPluginPre<crate::state::HostState>,
    retry_world::RetryPlugin,
    "warren:plugin/retry-plugin"
);
world!(
    adapter_world::AdapterPluginPre<crate::state::HostState>,
    adapter_world::AdapterPlugin,
    "warren:plugin/adapter-plugin"
);
