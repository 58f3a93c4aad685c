//! `cargo xtask`: the project's chores, so that a fresh machine needs only
//! a clone and one command.
//!
//! - `setup`: install what is missing (Debian packages, `rust-src` for the
//!   nightly, `bpf-linker` against the nightly's own LLVM); quiet when done.
//! - `build`, `run -- ARGS`: build sockspy and run it.
//! - `test`: every check CI runs (`.ci/run` calls exactly this).
//! - `bench`: throughput ratios, traced against untraced, in one invocation.

mod bench;
mod setup;

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "sockspy's chores")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install whatever is missing (idempotent; quiet when nothing is)
    Setup,
    /// Set up and build sockspy (release)
    Build,
    /// Set up, build, and run sockspy with the arguments after `--`
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: formatting, lints, unit and root integration tests
    Test {
        /// Passed on to `cargo test` (a test name filter, `--nocapture`, ...)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure sockspy's cost: workload throughput traced / untraced
    Bench(bench::Options),
    /// Internal: the echo side of the bench ping-pong
    #[command(hide = true)]
    Echo { fd: i32, size: usize },
}

fn main() {
    if let Err(err) = run(Cli::parse().task) {
        eprintln!("xtask: {err:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> Result<()> {
    let root = workspace_root();
    match task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            build(&root)
        }
        Task::Run { args } => {
            setup::run()?;
            build(&root)?;
            let err = sockspy_command(&root, &args).exec();
            Err(err).context("starting sockspy")
        }
        Task::Test { args } => {
            setup::run()?;
            test(&root, &args)
        }
        Task::Bench(options) => {
            setup::run()?;
            build(&root)?;
            bench::run(&root, &options)
        }
        Task::Echo { fd, size } => bench::echo(fd, size),
    }
}

/// The repository root: this crate lives one level below it.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// The built sockspy binary.
fn sockspy_bin(root: &Path) -> PathBuf {
    root.join("target/release/sockspy")
}

/// `sockspy ARGS`, through sudo when not root and sudo exists (sockspy
/// itself explains what is wrong otherwise).
fn sockspy_command(root: &Path, args: &[String]) -> Command {
    let bin = sockspy_bin(root);
    if setup::is_root() || !setup::on_path("sudo") {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        cmd
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg(bin).args(args);
        cmd
    }
}

fn build(root: &Path) -> Result<()> {
    step(
        "build sockspy",
        cargo(root).args(["build", "--release", "--quiet", "-p", "sockspy"]),
    )
}

/// Every check, in the order that fails fastest.
fn test(root: &Path, extra: &[String]) -> Result<()> {
    step(
        "cargo fmt --check",
        cargo(root).args(["fmt", "--all", "--", "--check"]),
    )?;
    step(
        "clippy",
        cargo(root).args([
            "clippy",
            "--release",
            "--quiet",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step("clippy (eBPF programs)", &mut ebpf_clippy(root))?;
    build(root)?;
    let mut tests = cargo(root);
    tests
        .args(["test", "--release"])
        .args(extra)
        .env("SOCKSPY_BIN", sockspy_bin(root));
    if std::env::var_os("CI").is_some() {
        // In CI a skipped root test would hide a broken set-up.
        tests.env("SOCKSPY_REQUIRE_ROOT", "1");
    }
    step("cargo test", &mut tests)?;
    step(
        "bench harness (quick)",
        Command::new(std::env::current_exe()?).args(["bench", "--quick"]),
    )
}

/// Clippy on the kernel programs, which only build for the BPF target.
fn ebpf_clippy(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("sockspy-ebpf"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env("RUSTFLAGS", "--cfg bpf_target_arch=\"x86_64\"")
        .args([
            "+nightly",
            "clippy",
            "--release",
            "--quiet",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]);
    cmd
}

/// `cargo` in the workspace, with the toolchain the workspace uses.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

/// Runs one step; a failure names it.
fn step(name: &str, cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{name}: cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}
