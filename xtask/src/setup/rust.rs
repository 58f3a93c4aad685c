//! Rust toolchain parts that rustup can add: rustfmt and clippy for the
//! toolchain that runs `cargo xtask` (it runs `cargo fmt` and `cargo
//! clippy`), and the `nightly` toolchain that builds the eBPF programs.

use std::process::Command;

use anyhow::Result;

use crate::exec;

/// What the nightly needs: `rust-src` because the bpf target has no
/// prebuilt `core` (`-Z build-std=core`), clippy to lint the eBPF crate.
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy"];

/// rustfmt and clippy for the toolchain this xtask runs under. rustup
/// tells child processes which one that is (RUSTUP_TOOLCHAIN), so plain
/// `rustup component` calls act on it.
pub fn ensure_lint_components() -> Result<()> {
    let installed =
        exec::stdout(Command::new("rustup").args(["component", "list", "--installed"]))?;
    let missing = missing_components(&installed, &["rustfmt", "clippy"]);
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: adding {}", missing.join(" "));
    exec::run_quiet(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing),
    )
}

/// The toolchain named `nightly` with [`NIGHTLY_COMPONENTS`]. An existing
/// nightly only gets the components: `rustup toolchain install` would also
/// update it, and a new nightly can bring an LLVM that the installed
/// bpf-linker was not built for.
pub fn ensure_nightly() -> Result<()> {
    let listed = exec::stdout(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    let Ok(installed) = listed else {
        eprintln!("xtask: installing the nightly toolchain");
        let mut install = Command::new("rustup");
        install.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
        for component in NIGHTLY_COMPONENTS {
            install.args(["--component", component]);
        }
        return exec::run_quiet(&mut install);
    };
    let missing = missing_components(&installed, NIGHTLY_COMPONENTS);
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: adding {} to the nightly toolchain",
        missing.join(" ")
    );
    exec::run_quiet(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", "nightly"])
            .args(&missing),
    )
}

/// The components of `wanted` absent from `rustup component list
/// --installed` output, whose lines name a component with its target
/// (`clippy-x86_64-unknown-linux-gnu`) or without one (`rust-src`).
fn missing_components<'a>(installed: &str, wanted: &[&'a str]) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|component| {
            !installed.lines().map(str::trim).any(|line| {
                line == *component
                    || line
                        .strip_prefix(component)
                        .is_some_and(|rest| rest.starts_with('-'))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTED: &str = "cargo-x86_64-unknown-linux-gnu\n\
                          clippy-x86_64-unknown-linux-gnu\n\
                          rust-src\n\
                          rust-std-x86_64-unknown-linux-gnu\n\
                          rustc-x86_64-unknown-linux-gnu\n";

    #[test]
    fn finds_missing_components() {
        assert_eq!(
            missing_components(LISTED, &["rustfmt", "clippy"]),
            ["rustfmt"]
        );
        assert!(missing_components(LISTED, NIGHTLY_COMPONENTS).is_empty());
        assert_eq!(
            missing_components("", NIGHTLY_COMPONENTS),
            NIGHTLY_COMPONENTS
        );
    }

    #[test]
    fn rust_std_is_not_rust_src() {
        let minimal = "rust-std-x86_64-unknown-linux-gnu\nrustc-x86_64-unknown-linux-gnu\n";
        assert_eq!(missing_components(minimal, &["rust-src"]), ["rust-src"]);
    }
}
