//! Builds the guest components in `plugins/` for tests and benchmarks, once per process.
//! Cargo is idempotent, so after the first build of a run this costs a second.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The `plugins/` workspace in this source tree.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../plugins")
}

/// Builds every guest (release, wasm32-wasip2) and returns the directory holding the
/// `.wasm` files. Panics with cargo's output if the build fails: tests cannot go on.
pub fn build() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = workspace();
            // The guests have their own target dir, whatever the host build uses, so the
            // paths in configs and tests stay `plugins/target/...`.
            let target = dir.join("target");
            let out = Command::new(env!("CARGO"))
                .args(["build", "--release", "--quiet"])
                .current_dir(&dir)
                .env("CARGO_TARGET_DIR", &target)
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .output()
                .expect("cargo runs");
            assert!(
                out.status.success(),
                "building plugins/ failed (is the wasm32-wasip2 target installed?):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            target.join("wasm32-wasip2/release")
        })
        .clone()
}

/// The path of guest `name` (the crate name with `_` for `-`), built if needed.
pub fn component(name: &str) -> PathBuf {
    build().join(format!("{}.wasm", name.replace('-', "_")))
}
