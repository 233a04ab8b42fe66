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

impl crate::instance::World for adapter_world::AdapterPluginPre<crate::state::HostState> {
    type Exports = adapter_world::AdapterPlugin;

    fn instantiate(
        &self,
        store: &mut wasmtime::Store<crate::state::HostState>,
    ) -> wasmtime::Result<adapter_world::AdapterPlugin> {
        adapter_world::AdapterPluginPre::instantiate(self, store)
    }
}

impl crate::instance::World for ExchangePluginPre<crate::state::HostState> {
    type Exports = ExchangePlugin;

    fn instantiate(
        &self,
        store: &mut wasmtime::Store<crate::state::HostState>,
    ) -> wasmtime::Result<ExchangePlugin> {
        ExchangePluginPre::instantiate(self, store)
    }
}

impl crate::instance::World for retry_world::RetryPluginPre<crate::state::HostState> {
    type Exports = retry_world::RetryPlugin;

    fn instantiate(
        &self,
        store: &mut wasmtime::Store<crate::state::HostState>,
    ) -> wasmtime::Result<retry_world::RetryPlugin> {
        retry_world::RetryPluginPre::instantiate(self, store)
    }
}
