//! What every plugin kind shares: loading a component against a world, swapping it on
//! reload, and running calls on an instance under the plugin's limits.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use wasmtime::Store;
use wasmtime::component::{Component, Linker, ResourceAny};

use crate::failure::Failure;
use crate::state::HostState;
use crate::{Limits, LoadError, PluginStats, Runtime, cache};

/// A compiled component checked against a world, ready to instantiate (`P` is the world's
/// generated `…Pre`).
pub(crate) struct Loaded<P> {
    pub(crate) pre: P,
    /// Bumped by each reload; instances built from an older one rebuild before their next call.
    pub(crate) generation: u64,
}

/// One configured plugin of any kind.
pub(crate) struct Plugin<P> {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) limits: Limits,
    pub(crate) stats: Arc<PluginStats>,
    runtime: Runtime,
    current: RwLock<Arc<Loaded<P>>>,
}

impl<P: World> Plugin<P> {
    /// Compiles `path` and checks it implements world `P`.
    pub(crate) fn load(
        runtime: &Runtime,
        name: &str,
        path: &Path,
        limits: Limits,
    ) -> Result<Plugin<P>, LoadError> {
        let pre = prepare::<P>(runtime, path)?;
        Ok(Plugin {
            name: name.to_string(),
            path: path.to_path_buf(),
            limits,
            stats: Arc::default(),
            runtime: runtime.clone(),
            current: RwLock::new(Arc::new(Loaded { pre, generation: 0 })),
        })
    }

    /// The component currently in force.
    pub(crate) fn current(&self) -> Arc<Loaded<P>> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the component file again and swaps it in; on error the old one stays.
    pub(crate) fn reload(&self) -> Result<(), LoadError> {
        let pre = prepare::<P>(&self.runtime, &self.path)?;
        let mut current = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let generation = current.generation + 1;
        *current = Arc::new(Loaded { pre, generation });
        self.stats.reloaded();
        Ok(())
    }

    /// A new store for one instance, under this plugin's memory cap; `None` when the plugin
    /// already has its most instances.
    pub(crate) fn store(&self) -> Option<Store<HostState>> {
        if self.stats.instances() >= self.limits.max_instances as u64 {
            return None;
        }
        let mut store =
            Store::new(&self.runtime.engine, HostState::new(&self.name, self.limits.memory_bytes));
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        Some(store)
    }
}

fn prepare<P: World>(runtime: &Runtime, path: &Path) -> Result<P, LoadError> {
    let component: Component = cache::compile(runtime, path)?;
    let wrong = |e: wasmtime::Error| LoadError::WrongWorld {
        path: path.to_path_buf(),
        world: P::NAME,
        reason: format!("{e:#}"),
    };
    let mut linker = Linker::new(&runtime.engine);
    // Guests built with WASI toolchains import it even when they never call it; they get a
    // context with no files, no network, no environment and no arguments.
    crate::wasi::link(&mut linker).map_err(wrong)?;
    P::link(&mut linker).map_err(wrong)?;
    let pre = linker.instantiate_pre(&component).map_err(wrong)?;
    P::new(pre).map_err(wrong)
}

/// Runs one call under the plugin's deadline, telling a failure's kind apart.
///
/// A panic in a host function is caught here and counted as a trap (the caller discards
/// the instance). The known source: wasmtime-wasi calls that block on a Tokio runtime
/// (`wasi:io/poll`, so a guest that sleeps), which panic on the Tokio worker threads the
/// broker calls plugins from. Streams are made synchronous in `wasi.rs`.
pub(crate) fn call<R>(
    store: &mut Store<HostState>,
    limits: &Limits,
    stats: &PluginStats,
    f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
) -> Result<R, Failure> {
    stats.call();
    store.set_epoch_deadline(limits.deadline_ticks());
    store.data_mut().limiter.hit = false;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(store)));
    let failure = match outcome {
        Ok(Ok(r)) => return Ok(r),
        Ok(Err(e)) => Failure::classify(&e, store.data().limiter.hit),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown");
            Failure::Trap(format!(
                "a host function panicked during the call (did the plugin wait on wasi:io/poll?): {why}"
            ))
        }
    };
    stats.failed(&failure);
    Err(failure)
}

/// A world's generated `…Pre`: its name, how to link its imports and find its exports, and
/// what instantiating it yields.
pub(crate) trait World: Sized {
    /// The world's full name, for errors.
    const NAME: &'static str;
    /// The world's exports.
    type Exports;
    /// Adds the world's imports (beyond WASI) to `linker`.
    fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()>;
    /// Finds the world's exports in a pre-instantiated component.
    fn new(pre: wasmtime::component::InstancePre<HostState>) -> wasmtime::Result<Self>;
    /// Instantiates the component in `store`.
    fn instantiate(&self, store: &mut Store<HostState>) -> wasmtime::Result<Self::Exports>;
}

/// Why an instance could not be built.
pub(crate) enum BuildError {
    /// The plugin has its most instances.
    Cap,
    /// The plugin's constructor returned an error.
    Refused(String),
    /// Instantiating or constructing failed.
    Failed(Failure),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::Cap => f.write_str("is at its instance cap"),
            BuildError::Refused(why) => write!(f, "refused: {why}"),
            BuildError::Failed(failure) => write!(f, "{failure}"),
        }
    }
}

/// A running instance and the one resource the broker uses in it (a router, a policy).
pub(crate) struct Live<E> {
    store: Store<HostState>,
    exports: E,
    resource: ResourceAny,
    /// The component generation it was built from.
    generation: u64,
    stats: Arc<PluginStats>,
}

impl<E> Drop for Live<E> {
    fn drop(&mut self) {
        self.stats.instance_dropped();
    }
}

impl<E> Live<E> {
    /// Calls into the instance's resource under `limits`.
    pub(crate) fn call<R>(
        &mut self,
        limits: &Limits,
        f: impl FnOnce(&mut Store<HostState>, &E, ResourceAny) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        let (exports, resource) = (&self.exports, self.resource);
        call(&mut self.store, limits, &self.stats, |s| f(s, exports, resource))
    }
}

impl<P: World> Plugin<P> {
    /// A new instance of the current component, its resource made by `create`.
    pub(crate) fn instantiate(
        &self,
        create: impl FnOnce(&mut Store<HostState>, &P::Exports) -> wasmtime::Result<Result<ResourceAny, String>>,
    ) -> Result<Live<P::Exports>, BuildError> {
        let loaded = self.current();
        let mut store = self.store().ok_or(BuildError::Cap)?;
        let (limits, stats) = (&self.limits, &*self.stats);
        let exports =
            call(&mut store, limits, stats, |s| loaded.pre.instantiate(s)).map_err(BuildError::Failed)?;
        let resource = call(&mut store, limits, stats, |s| create(s, &exports))
            .map_err(BuildError::Failed)?
            .map_err(BuildError::Refused)?;
        stats.instance_added();
        Ok(Live { store, exports, resource, generation: loaded.generation, stats: self.stats.clone() })
    }

    /// Whether `slot` holds an instance of the current component.
    pub(crate) fn is_current(&self, slot: &Option<Live<P::Exports>>) -> bool {
        let generation = self.current().generation;
        slot.as_ref().is_some_and(|l| l.generation == generation)
    }

    /// Runs `f` on the instance in `slot`, first building one with `build` if the slot is
    /// empty or holds an instance of an older component. A failure empties the slot, so the
    /// next call rebuilds; `what` names the plugin kind in the log.
    pub(crate) fn with_live<R>(
        &self,
        what: &str,
        slot: &mut Option<Live<P::Exports>>,
        build: impl FnOnce() -> Result<Live<P::Exports>, BuildError>,
        f: impl FnOnce(&mut Store<HostState>, &P::Exports, ResourceAny) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        if !self.is_current(slot) {
            *slot = None;
            match build() {
                Ok(live) => {
                    self.stats.rebuilt();
                    *slot = Some(live);
                }
                Err(e) => {
                    tracing::warn!(plugin = %self.name, "cannot rebuild the {what} instance: {e}");
                    return Err(match e {
                        BuildError::Failed(f) => f,
                        other => Failure::Trap(other.to_string()),
                    });
                }
            }
        }
        let Some(live) = slot.as_mut() else {
            return Err(Failure::Trap("no instance".into()));
        };
        let result = live.call(&self.limits, f);
        if let Err(failure) = &result {
            tracing::warn!(
                plugin = %self.name, path = %self.path.display(),
                "{what} plugin {failure}; its instance is discarded and will be rebuilt"
            );
            *slot = None;
        }
        result
    }
}
