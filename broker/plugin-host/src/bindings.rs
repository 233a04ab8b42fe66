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
