//! The wasmtime engine every plugin shares, its epoch ticker, and the per-plugin limits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::{Config, Engine};

/// How often the epoch advances: the granularity of every call's deadline.
const TICK: Duration = Duration::from_millis(1);

/// Limits enforced on every call into one plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most linear memory one instance may have, in bytes.
    pub memory_bytes: usize,
    /// How long one call may run.
    pub timeout: Duration,
    /// The most instances of the plugin alive at once (one per exchange).
    pub max_instances: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // A small Rust guest needs a little over 1 MiB; Python and JavaScript guests need
        // tens of MiB and set their own cap in the config.
        Limits { memory_bytes: 16 << 20, timeout: Duration::from_millis(100), max_instances: 1024 }
    }
}

impl Limits {
    /// The deadline in epoch ticks: at least the timeout, plus one for the partial tick.
    pub(crate) fn deadline_ticks(&self) -> u64 {
        (self.timeout.as_micros() / TICK.as_micros()).max(1) as u64 + 1
    }
}

/// The engine, its epoch ticker, and where compiled components are cached.
#[derive(Clone)]
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) cache_dir: Option<PathBuf>,
    _ticker: Arc<Ticker>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("cache_dir", &self.cache_dir).finish_non_exhaustive()
    }
}

/// Stops the ticker thread when the last runtime handle goes.
struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    /// Builds the engine and starts the ticker. Compiled components are cached in
    /// `cache_dir` (created if missing) so a restart does not recompile them.
    pub fn new(cache_dir: Option<&Path>) -> Result<Runtime, wasmtime::Error> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        // Calls are synchronous: the async bookkeeping would cost each call time for nothing.
        config.concurrency_support(false);
        let engine = Engine::new(&config)?;
        if let Some(dir) = cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| wasmtime::Error::msg(format!("cannot create {}: {e}", dir.display())))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (engine.weak(), stop.clone());
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match e.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| wasmtime::Error::msg(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Runtime { engine, cache_dir: cache_dir.map(Path::to_path_buf), _ticker: Arc::new(Ticker(stop)) })
    }
}
