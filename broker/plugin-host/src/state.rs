//! What each plugin instance's store holds: an empty WASI context (no files, network or
//! environment), its memory limiter, and the host functions of `warren:plugin/host`.

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::warren::plugin::{host, types};

/// One instance's host-side state.
pub(crate) struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: Limiter,
    plugin: String,
}

impl HostState {
    pub(crate) fn new(plugin: &str, memory_bytes: usize) -> Self {
        let name: std::sync::Arc<str> = plugin.into();
        let log = |stream| crate::wasi::LogOutput { plugin: name.clone(), stream };
        HostState {
            wasi: WasiCtx::builder().stdout(log("stdout")).stderr(log("stderr")).build(),
            table: ResourceTable::new(),
            limiter: Limiter { memory_bytes, hit: false },
            plugin: plugin.to_string(),
        }
    }
}

impl HostState {
    /// The resource table WASI's streams live in.
    pub(crate) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Caps linear memory and remembers whether the cap was hit, so a failure can be reported
/// as "out of memory" rather than as whatever the guest did next.
pub(crate) struct Limiter {
    memory_bytes: usize,
    pub(crate) hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit = true;
            wasmtime::bail!("memory cap of {} bytes reached (asked for {desired})", self.memory_bytes);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond any honest guest.
        Ok(desired <= 1 << 20)
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, message: String) {
        let plugin = self.plugin.as_str();
        match level {
            host::Level::Trace => tracing::trace!(plugin, "{message}"),
            host::Level::Debug => tracing::debug!(plugin, "{message}"),
            host::Level::Info => tracing::info!(plugin, "{message}"),
            host::Level::Warn => tracing::warn!(plugin, "{message}"),
            host::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }
}
