//! Installing what the build and the tests need, only when it is missing.
//!
//! Each check is cheap and silent; only an actual install prints, so a
//! set-up machine pays a second or so and sees nothing.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// Debian packages: the programs the integration tests drive (socat, nc,
/// python3, collectd, rrdcached, tshark, setpriv), and tools an operator
/// compares sockspy with (strace, ss, bpftool, perf).
const PACKAGES: &[&str] = &[
    "socat",
    "netcat-openbsd",
    "strace",
    "bpftool",
    "collectd-core",
    "rrdcached",
    "tshark",
    "iproute2",
    "util-linux",
    "procps",
    "python3",
    "linux-perf",
];

/// The bpf-linker release this project builds with.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run() -> Result<()> {
    packages()?;
    stable_components()?;
    nightly_rust_src()?;
    bpf_linker()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `program` is found on PATH.
pub fn on_path(program: &str) -> bool {
    find_on_path(program).is_some()
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

fn packages() -> Result<()> {
    let output = Command::new("dpkg-query")
        .arg("-W")
        .arg("-f=${Package} ${db:Status-Status}\n")
        .args(PACKAGES)
        .stderr(Stdio::null())
        .output()
        .context("running dpkg-query (is this Debian?)")?;
    let missing = missing_packages(&String::from_utf8_lossy(&output.stdout));
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run as root, or `sudo apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run_quiet(
        Command::new("apt-get").args(["update", "-q"]),
        "apt-get update",
    )?;
    run_quiet(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
        "apt-get install",
    )
}

/// The packages of [`PACKAGES`] that `dpkg-query` output does not list as
/// installed.
fn missing_packages(status: &str) -> Vec<&'static str> {
    PACKAGES
        .iter()
        .copied()
        .filter(|package| {
            !status.lines().any(|line| {
                let mut fields = line.split_whitespace();
                fields.next() == Some(package) && fields.next() == Some("installed")
            })
        })
        .collect()
}

/// rustfmt and clippy for the stable toolchain, which `cargo xtask test` runs.
fn stable_components() -> Result<()> {
    let installed = rustup(&["component", "list", "--installed"])?;
    for component in ["rustfmt", "clippy"] {
        if !installed.lines().any(|line| line.starts_with(component)) {
            eprintln!("xtask: adding {component}");
            run_quiet(
                Command::new("rustup").args(["component", "add", component]),
                "rustup component add",
            )?;
        }
    }
    Ok(())
}

/// The nightly toolchain with `rust-src`, which builds the eBPF programs.
fn nightly_rust_src() -> Result<()> {
    let installed = rustup(&["component", "list", "--toolchain", "nightly", "--installed"]);
    if installed.is_ok_and(|list| list.lines().any(|line| line.starts_with("rust-src"))) {
        return Ok(());
    }
    eprintln!("xtask: installing the nightly toolchain's rust-src");
    run_quiet(
        Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]),
        "rustup toolchain install nightly",
    )
}

/// bpf-linker, built against the nightly's own libLLVM: no Debian package
/// carries the LLVM version the nightly uses.
fn bpf_linker() -> Result<()> {
    let cargo_bin = cargo_home().join("bin");
    if on_path("bpf-linker") || cargo_bin.join("bpf-linker").is_file() {
        return Ok(());
    }
    let version = rustc_nightly(&["-vV"])?;
    let major = llvm_major(&version).context("no LLVM version in `rustc +nightly -vV`")?;
    let sysroot = rustc_nightly(&["--print", "sysroot"])?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    let llvm = find_libllvm(&lib_dir)?;
    let prefix = cargo_home().join("bpf-llvm");
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let file_name = llvm.file_name().context("libLLVM has a file name")?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(file_name)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} (a few minutes)"
    );
    run_quiet(
        Command::new("cargo")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "--quiet",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}")),
        "cargo install bpf-linker",
    )
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// The major version in rustc's `LLVM version: 22.1.4` line.
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next())
        .and_then(|major| major.trim().parse().ok())
}

/// The shared libLLVM a rustup toolchain ships in its `lib` directory.
fn find_libllvm(lib_dir: &Path) -> Result<PathBuf> {
    let entries =
        std::fs::read_dir(lib_dir).with_context(|| format!("reading {}", lib_dir.display()))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so.") || name.starts_with("libLLVM-"))
        })
        .collect();
    found.sort();
    found
        .pop()
        .with_context(|| format!("no libLLVM in {}", lib_dir.display()))
}

fn rustup(args: &[&str]) -> Result<String> {
    capture(Command::new("rustup").args(args), "rustup")
}

fn rustc_nightly(args: &[&str]) -> Result<String> {
    capture(
        Command::new("rustc")
            .env_remove("RUSTUP_TOOLCHAIN")
            .arg("+nightly")
            .args(args),
        "rustc +nightly",
    )
}

/// Runs `cmd` and returns its stdout; fails naming `what`.
fn capture(cmd: &mut Command, what: &str) -> Result<String> {
    let output = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!("{what} failed ({})", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs an installer, showing its output only when it fails.
fn run_quiet(cmd: &mut Command, what: &str) -> Result<()> {
    let output = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        eprint!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        bail!("{what} failed ({})", output.status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_llvm_major() {
        let vv = "rustc 1.97.0-nightly (abc 2026-10-01)\nbinary: rustc\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.97.0\n"), None);
    }

    #[test]
    fn finds_missing_packages() {
        let status = PACKAGES
            .iter()
            .map(|p| format!("{p} installed"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(missing_packages(&status).is_empty());
        let status = status.replace("rrdcached installed", "rrdcached not-installed");
        assert_eq!(missing_packages(&status), ["rrdcached"]);
        assert_eq!(missing_packages("").len(), PACKAGES.len());
    }

    #[test]
    fn finds_the_toolchains_libllvm() {
        let dir = std::env::temp_dir().join(format!("xtask-llvm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("librustc_driver.so"), "").unwrap();
        assert!(find_libllvm(&dir).is_err());
        std::fs::write(dir.join("libLLVM.so.22.1-rust-1.97.0-nightly"), "").unwrap();
        let found = find_libllvm(&dir).unwrap();
        assert!(found.ends_with("libLLVM.so.22.1-rust-1.97.0-nightly"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
