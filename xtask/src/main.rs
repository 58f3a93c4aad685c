//! `cargo xtask`: the project's chores as one Rust program, so that a
//! fresh machine needs only a clone and one command, and CI runs the same
//! command a developer does (`.ci/run` is `cargo xtask test`).

mod bench;
mod exec;
mod install;
mod setup;
mod vm;

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, ensure};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", about = "sockspy's chores")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install whatever is missing: Debian packages, rustfmt and clippy,
    /// the nightly's rust-src, bpf-linker (quiet when nothing is)
    Setup,
    /// Set up, then build sockspy (release, eBPF programs included)
    Build,
    /// Set up, build, and run sockspy with the arguments after `--`
    Run {
        /// Arguments for sockspy, e.g. `-- trace --unix`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: formatting, lints (host and eBPF), unit tests and
    /// the root integration tests
    Test {
        /// Arguments for `cargo test`: `-- FILTER`, `-- -- --nocapture`
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure what tracing costs a workload, as throughput ratios against
    /// an untraced run of the same invocation (needs root)
    Bench(bench::Options),
    /// A workload of the bench, run by the bench in a process of its own
    #[command(hide = true, subcommand)]
    Workload(bench::workload::Workload),
    /// Boot Debian kernels (6.1, 6.12) under QEMU and run `sockspy check`
    /// and the root integration tests in each; writes target/vm-test.md
    VmTest(vm::Options),
    /// Regenerate the man pages in docs/man from sockspy's CLI definitions
    Man,
    /// Build sockspy and install it with its man pages and bash, zsh and
    /// fish completions under a prefix (/usr/local)
    Install(install::Options),
}

fn main() {
    if let Err(err) = run(Cli::parse().task) {
        eprintln!("xtask: {err:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> Result<()> {
    let root = workspace_root()?;
    match task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            build(&root)
        }
        Task::Run { args } => {
            setup::run()?;
            build(&root)?;
            // Replacing this process hands sockspy the terminal, Ctrl-C
            // included, and makes its exit status ours.
            let mut sockspy = sockspy_command(&root, &args);
            Err(sockspy.exec())
                .with_context(|| format!("cannot start `{}`", exec::describe(&sockspy)))
        }
        Task::Test { args } => {
            setup::run()?;
            test(&root, &args)
        }
        Task::Bench(options) => {
            ensure!(
                setup::is_root(),
                "bench loads eBPF programs: run it as root"
            );
            setup::run()?;
            build(&root)?;
            bench::run(&sockspy_bin(&root), &root.join("target"), &options)
        }
        Task::Workload(workload) => bench::workload::run(workload),
        Task::VmTest(options) => {
            setup::run()?;
            build(&root)?;
            vm::run(&root, &options)
        }
        Task::Man => {
            setup::run()?;
            install::man(&root, &mut cargo(&root))
        }
        Task::Install(options) => {
            setup::run()?;
            build(&root)?;
            install::install(&root, &sockspy_bin(&root), &options)
        }
    }
}

/// The workspace root: this crate's directory is one level below it.
fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent")
}

fn sockspy_bin(root: &Path) -> PathBuf {
    root.join("target/release/sockspy")
}

/// `sockspy ARGS`, through sudo when not root and sudo is there; without
/// sudo sockspy runs as is and says itself what it lacks.
fn sockspy_command(root: &Path, args: &[String]) -> Command {
    let bin = sockspy_bin(root);
    let mut cmd = if setup::is_root() || setup::find_on_path("sudo").is_none() {
        Command::new(bin)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg(bin);
        sudo
    };
    cmd.args(args);
    cmd
}

fn build(root: &Path) -> Result<()> {
    exec::run(&mut build_command(root))
}

/// The release build of sockspy; its build.rs builds the eBPF programs.
fn build_command(root: &Path) -> Command {
    let mut cmd = cargo(root);
    cmd.args(["build", "--release", "--quiet", "-p", "sockspy"]);
    cmd
}

/// Every check CI runs, cheapest first; the first failure stops the run
/// and is named.
fn test(root: &Path, cargo_test_args: &[String]) -> Result<()> {
    step(
        "formatting",
        cargo(root).args(["fmt", "--all", "--", "--check"]),
    )?;
    // The default members: sockspy-ebpf only builds for the bpf target,
    // so `--workspace` would fail on it; it gets its own run below.
    step(
        "clippy",
        cargo(root).args([
            "clippy",
            "--release",
            "--all-targets",
            "--quiet",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step("clippy (eBPF programs)", &mut ebpf_clippy(root))?;
    step("build", &mut build_command(root))?;
    let mut tests = cargo(root);
    tests
        .args(["test", "--release"])
        .args(cargo_test_args)
        .env("SOCKSPY_BIN", sockspy_bin(root));
    if std::env::var_os("CI").is_some() {
        // In CI a skipped root test would hide a broken machine.
        tests.env("SOCKSPY_REQUIRE_ROOT", "1");
    }
    step("tests", &mut tests)?;
    // The bench is no test and asserts no time, but running it briefly
    // keeps its harness from rotting: it fails when a scenario produced
    // no numbers. It loads eBPF programs, so it needs root.
    if !setup::is_root() {
        eprintln!("xtask test: bench (quick) and the kernel matrix skipped: they need root");
        return Ok(());
    }
    let xtask = std::env::current_exe().context("cannot find xtask's own executable")?;
    step(
        "bench (quick)",
        Command::new(&xtask).args(["bench", "--quick"]),
    )?;
    // The other kernels and backends: Debian's 6.1 and 6.12 under QEMU,
    // each backend, the core tests (vm.rs).
    step(
        "kernel matrix (vm-test --core)",
        Command::new(&xtask).args(["vm-test", "--core"]),
    )
}

/// Runs one step of `test` under a header, so a CI log shows where it is
/// and the error names the step.
fn step(name: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask test: {name}");
    exec::run(cmd).with_context(|| format!("test step `{name}`"))
}

/// Clippy on the kernel programs as sockspy/build.rs (aya-build) compiles
/// them: nightly, bpf target, `core` built from source, and the
/// `bpf_target_arch` cfg aya-ebpf selects the architecture by.
fn ebpf_clippy(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env(
            "RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        )
        .args([
            "+nightly",
            "clippy",
            "--quiet",
            "--release",
            "-p",
            "sockspy-ebpf",
        ])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"]);
    cmd
}

/// The cargo that runs this xtask (cargo sets CARGO), in the workspace.
fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}
