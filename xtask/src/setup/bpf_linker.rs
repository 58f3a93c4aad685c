//! bpf-linker, which links the eBPF programs. It must use the same LLVM
//! major as the nightly that compiles them, and Debian has no package of
//! that LLVM: the nightly ships its own shared libLLVM, so bpf-linker is
//! built against that one (LLVM_PREFIX pointing at links to it).

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::exec;

/// The release this project builds with.
const VERSION: &str = "0.13.0";

/// Builds and installs bpf-linker unless one is on PATH or in
/// `$CARGO_HOME/bin` already (whatever LLVM it was built for).
pub fn ensure() -> Result<()> {
    let cargo_home = cargo_home()?;
    if super::find_on_path("bpf-linker").is_some() || cargo_home.join("bin/bpf-linker").is_file() {
        return Ok(());
    }
    let major = llvm_major(&rustc_nightly(&["-vV"])?)
        .context("no `LLVM version:` line in `rustc +nightly -vV`")?;
    let sysroot = rustc_nightly(&["--print", "sysroot"])?;
    let libllvm = find_libllvm(&Path::new(sysroot.trim()).join("lib"))?;
    let prefix = cargo_home.join("bpf-llvm");
    link_libllvm(&libllvm, &prefix.join("lib"))?;
    eprintln!("xtask: building bpf-linker {VERSION} against the nightly's LLVM {major} (minutes)");
    exec::run_quiet(&mut install_command(&prefix, major))
}

/// `cargo install bpf-linker` against the LLVM under `prefix`.
fn install_command(prefix: &Path, llvm_major: u32) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.env("LLVM_PREFIX", prefix)
        .args(["install", "bpf-linker", "--version", VERSION])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{llvm_major}"));
    cmd
}

/// Where cargo installs binaries (`$CARGO_HOME/bin`, which cargo sets for
/// the programs it runs) and where the LLVM links are kept beside them.
fn cargo_home() -> Result<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")
}

fn rustc_nightly(args: &[&str]) -> Result<String> {
    exec::stdout(Command::new("rustc").arg("+nightly").args(args))
}

/// The major version in rustc's `LLVM version: 22.1.4` line.
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))?
        .trim()
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// The shared libLLVM in a rustup toolchain's `lib` directory. The file
/// named `libLLVM.so.<version>-rust-...` is the library itself (its name is
/// its soname); a `libLLVM-<major>-rust-....so` beside it is only a small
/// linker script pointing there, so it is taken only when alone (as in
/// older toolchains, where it was the library).
fn find_libllvm(lib_dir: &Path) -> Result<PathBuf> {
    let names: Vec<String> = std::fs::read_dir(lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    let pick = |prefix: &str| {
        names
            .iter()
            .filter(|name| name.starts_with(prefix))
            .max()
            .map(|name| lib_dir.join(name))
    };
    pick("libLLVM.so.")
        .or_else(|| pick("libLLVM-"))
        .with_context(|| format!("no libLLVM in {}", lib_dir.display()))
}

/// Links `libllvm` into `dir` as `libLLVM.so`, which bpf-linker's build
/// links with, and under its own name, which the built binary loads.
fn link_libllvm(libllvm: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let own_name = libllvm
        .file_name()
        .context("libLLVM path has a file name")?;
    for link in [dir.join("libLLVM.so"), dir.join(own_name)] {
        match std::fs::remove_file(&link) {
            Err(err) if err.kind() != ErrorKind::NotFound => {
                return Err(err).with_context(|| format!("replacing {}", link.display()));
            }
            _ => {}
        }
        std::os::unix::fs::symlink(libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test, removed at the end.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("creating a scratch directory");
            Self(dir)
        }

        fn touch(&self, name: &str) {
            std::fs::write(self.0.join(name), "").expect("writing a scratch file");
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reads_the_llvm_major() {
        let vv = "rustc 1.97.0-nightly (0123abcd 2026-05-19)\nbinary: rustc\n\
                  host: x86_64-unknown-linux-gnu\nrelease: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.95.0\n"), None);
        assert_eq!(llvm_major("LLVM version: unknown\n"), None);
    }

    #[test]
    fn prefers_the_library_to_the_linker_script() {
        let lib = Scratch::new("libllvm-both");
        lib.touch("librustc_driver-b5a965480ee51f9a.so");
        lib.touch("libLLVM-22-rust-1.97.0-nightly.so");
        lib.touch("libLLVM.so.22.1-rust-1.97.0-nightly");
        let found = find_libllvm(&lib.0).expect("a libLLVM");
        assert_eq!(found, lib.0.join("libLLVM.so.22.1-rust-1.97.0-nightly"));
    }

    #[test]
    fn takes_an_older_toolchains_only_libllvm() {
        let lib = Scratch::new("libllvm-old");
        lib.touch("libLLVM-17-rust-1.75.0-nightly.so");
        let found = find_libllvm(&lib.0).expect("a libLLVM");
        assert_eq!(found, lib.0.join("libLLVM-17-rust-1.75.0-nightly.so"));
    }

    #[test]
    fn no_libllvm_is_an_error() {
        let lib = Scratch::new("libllvm-none");
        lib.touch("librustc_driver-b5a965480ee51f9a.so");
        let err = find_libllvm(&lib.0).expect_err("no libLLVM");
        assert!(format!("{err}").starts_with("no libLLVM in "));
    }

    #[test]
    fn links_libllvm_twice_and_again() {
        let dir = Scratch::new("libllvm-links");
        dir.touch("libLLVM.so.22.1-rust-1.97.0-nightly");
        let libllvm = dir.0.join("libLLVM.so.22.1-rust-1.97.0-nightly");
        let prefix_lib = dir.0.join("prefix/lib");
        // A second run replaces the links instead of failing on them.
        for _ in 0..2 {
            link_libllvm(&libllvm, &prefix_lib).expect("linking");
        }
        for name in ["libLLVM.so", "libLLVM.so.22.1-rust-1.97.0-nightly"] {
            let target = std::fs::read_link(prefix_lib.join(name)).expect("a symlink");
            assert_eq!(target, libllvm);
        }
    }

    #[test]
    fn install_command_names_the_llvm_feature() {
        let cmd = install_command(Path::new("/root/.cargo/bpf-llvm"), 22);
        assert_eq!(
            exec::describe(&cmd),
            "cargo install bpf-linker --version 0.13.0 --no-default-features --features llvm-22"
        );
        let prefix = cmd.get_envs().find(|(key, _)| *key == "LLVM_PREFIX");
        assert_eq!(
            prefix.and_then(|(_, value)| value),
            Some(Path::new("/root/.cargo/bpf-llvm").as_os_str())
        );
    }
}
