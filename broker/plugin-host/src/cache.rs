//! Compiling components once: the compiled code is kept in the data dir under the hash of
//! the component's bytes and the engine's settings, so a restart loads it in milliseconds
//! instead of recompiling (tens of seconds for Python or JavaScript guests).

#![allow(unsafe_code)]

use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use crate::{LoadError, Runtime};

/// The component at `path`, compiled, from the cache when it holds a matching entry.
pub(crate) fn compile(runtime: &Runtime, path: &Path) -> Result<Component, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read { path: path.to_path_buf(), source })?;
    let bad = |e: wasmtime::Error| LoadError::Compile { path: path.to_path_buf(), reason: format!("{e:#}") };
    let Some(dir) = &runtime.cache_dir else {
        return Component::new(&runtime.engine, &bytes).map_err(bad);
    };
    let mut hasher = Sha256::new();
    hasher.update(&bytes);
    std::hash::Hash::hash(&runtime.engine.precompile_compatibility_hash(), &mut HashWriter(&mut hasher));
    let key: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let file = dir.join(format!("{key}.cwasm"));
    if file.exists() {
        // SAFETY: the file was written by `precompile_component` of an engine with the
        // same compatibility hash (it is in the name), into a directory only the broker
        // writes; wasmtime checks the header and engine settings again while loading.
        match unsafe { Component::deserialize_file(&runtime.engine, &file) } {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(file = %file.display(), "ignoring a compiled plugin that does not load: {e:#}")
            }
        }
    }
    let compiled = runtime.engine.precompile_component(&bytes).map_err(bad)?;
    let tmp = file.with_extension("tmp");
    let written = std::fs::write(&tmp, &compiled).and_then(|()| std::fs::rename(&tmp, &file));
    if let Err(e) = written {
        tracing::warn!(file = %file.display(), "cannot cache a compiled plugin: {e}");
    }
    // SAFETY: `compiled` came from `precompile_component` on this very engine just now.
    unsafe { Component::deserialize(&runtime.engine, &compiled) }.map_err(bad)
}

/// Feeds `Hash` output into the digest.
struct HashWriter<'a>(&'a mut Sha256);

impl std::hash::Hasher for HashWriter<'_> {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
