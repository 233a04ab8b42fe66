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
    let key = hex(&hasher.finalize());
    let file = dir.join(format!("{key}.cwasm"));
    let seal = dir.join(format!("{key}.sha256"));
    if let Some(compiled) = verified(&file, &seal) {
        // SAFETY: these bytes are what `precompile_component` of an engine with the same
        // compatibility hash (it is in the name) wrote, checked against the digest written
        // beside them after they were durable, so a torn write or a flipped bit on disk is not
        // run as native code; wasmtime checks the header and engine settings again.
        match unsafe { Component::deserialize(&runtime.engine, &compiled) } {
            Ok(c) => return Ok(c),
            Err(e) => {
                tracing::warn!(file = %file.display(), "ignoring a compiled plugin that does not load: {e:#}")
            }
        }
    }
    let compiled = runtime.engine.precompile_component(&bytes).map_err(bad)?;
    if let Err(e) = store(&file, &seal, &compiled) {
        tracing::warn!(file = %file.display(), "cannot cache a compiled plugin: {e}");
    }
    // SAFETY: `compiled` came from `precompile_component` on this very engine just now.
    unsafe { Component::deserialize(&runtime.engine, &compiled) }.map_err(bad)
}

/// The cached code at `file` if it matches the digest in `seal`; a mismatch is logged.
fn verified(file: &Path, seal: &Path) -> Option<Vec<u8>> {
    let (compiled, want) = (std::fs::read(file).ok()?, std::fs::read_to_string(seal).ok()?);
    if hex(&Sha256::digest(&compiled)) == want.trim() {
        return Some(compiled);
    }
    tracing::warn!(file = %file.display(), "a compiled plugin does not match its digest: compiling it again");
    None
}

/// Writes the code, then its digest, each whole (a temporary file, fsynced, renamed): a
/// digest only ever names code that is completely on disk.
fn store(file: &Path, seal: &Path, compiled: &[u8]) -> std::io::Result<()> {
    let put = |to: &Path, bytes: &[u8]| -> std::io::Result<()> {
        let tmp = to.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, to)
    };
    // A stale digest must not outlive the code it named while the new code is written.
    let _ = std::fs::remove_file(seal);
    put(file, compiled)?;
    put(seal, hex(&Sha256::digest(compiled)).as_bytes())
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
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
