//! `cargo xtask setup`: installs what building and testing sockspy need,
//! and only what is missing. Every check is a cheap query, so a machine
//! that has everything pays about a second and sees no output; every
//! install announces itself in one line.

mod apt;
mod bpf_linker;
mod rust;

use std::path::PathBuf;

use anyhow::Result;

/// Installs what is missing, cheapest checks first.
pub fn run() -> Result<()> {
    apt::ensure_packages()?;
    rust::ensure_lint_components()?;
    rust::ensure_nightly()?;
    bpf_linker::ensure()
}

/// Whether this process runs as root, which loading eBPF programs and
/// installing Debian packages need.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Where `program` is on PATH, if it is.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
