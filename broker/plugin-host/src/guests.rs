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

/// The path of a Python or JavaScript example (`exchange_prefix_py`, ...), built by
/// `plugins/build-languages.sh` if needed (which installs componentize-py and
/// componentize-js on first use).
pub fn language_component(file_stem: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let dir = workspace();
        let out = Command::new("bash").arg(dir.join("build-languages.sh")).output().expect("bash runs");
        assert!(
            out.status.success(),
            "plugins/build-languages.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        dir.join("target/lang")
    });
    dir.join(format!("{file_stem}.wasm"))
}

/// A compiled-component cache that outlives one test run (under `plugins/target`), so the
/// large Python and JavaScript components are compiled once per machine, not per run.
pub fn cache_dir() -> PathBuf {
    workspace().join("target/compiled")
}
