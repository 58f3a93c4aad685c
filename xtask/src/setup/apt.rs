//! Debian packages: the real programs the integration tests drive, and
//! the tools an operator compares sockspy with.

use std::process::Command;

use anyhow::{Result, ensure};

use crate::exec;

/// socat, nc, python3, collectd and rrdcached, redis-server and
/// postgresql (its server, psql and pgbench) are the integration tests'
/// peers; tshark reads their captures; tmux is the terminal `top` runs in; setpriv and runuser (util-linux), ss (iproute2)
/// and ps (procps) inspect them; strace, bpftool and perf are what sockspy
/// is compared with and debugged by, gdb what shows where a sockspy that
/// would not stop in a test was. QEMU and a static busybox boot the
/// guest kernels of `cargo xtask vm-test`; xz and zstd unpack them.
/// podman with runc runs the container tests (crun, podman's default,
/// refuses a hybrid cgroup hierarchy), its image built from busybox.
/// dbus-daemon runs a private bus for dbus-send (dbus-bin) and a service
/// written with python3-dbus and python3-gi; dig (bind9-dnsutils) asks a
/// test's DNS server.
const PACKAGES: &[&str] = &[
    "socat",
    "netcat-openbsd",
    "strace",
    "gdb",
    "bpftool",
    "collectd-core",
    "rrdcached",
    "redis-server",
    "dbus-daemon",
    "dbus-bin",
    "python3-dbus",
    "python3-gi",
    "postgresql",
    "bind9-dnsutils",
    "tshark",
    "iproute2",
    "util-linux",
    "procps",
    "python3",
    "tmux",
    "linux-perf",
    "qemu-system-x86",
    "busybox-static",
    "xz-utils",
    "zstd",
    "podman",
    "runc",
];

/// How dpkg describes a package that is fully installed.
const INSTALLED: &str = "install ok installed";

/// Installs the packages of [`PACKAGES`] that are missing. One this
/// distribution does not have is reported and skipped rather than failing
/// the rest: the tests that need it then say what is missing.
pub fn ensure_packages() -> Result<()> {
    let missing = missing_packages()?;
    if missing.is_empty() {
        return Ok(());
    }
    ensure!(
        super::is_root(),
        "Debian packages missing: {list}; run as root, or `sudo apt-get install {list}`",
        list = missing.join(" ")
    );
    exec::run_quiet(apt_get().arg("update"))?;
    let policy = exec::stdout(Command::new("apt-cache").arg("policy").args(&missing))?;
    let (available, unknown) = split_by_candidate(&missing, &policy);
    if !unknown.is_empty() {
        eprintln!(
            "xtask: not in this machine's apt sources, skipped: {}",
            unknown.join(" ")
        );
    }
    if available.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", available.join(" "));
    exec::run_quiet(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&available),
    )
}

fn missing_packages() -> Result<Vec<&'static str>> {
    // dpkg-query exits 1 when it does not know a package at all; that
    // package is simply missing from its output, so the status is not checked.
    let output = exec::capture(
        Command::new("dpkg-query")
            .args(["-W", "-f=${Package}\\t${Status}\\n"])
            .args(PACKAGES),
    )?;
    Ok(not_installed(
        PACKAGES,
        &String::from_utf8_lossy(&output.stdout),
    ))
}

/// The packages of `wanted` that `dpkg-query -W -f='${Package}\t${Status}\n'`
/// output does not show as installed (a removed package keeps a status
/// line such as `deinstall ok config-files`).
fn not_installed<'a>(wanted: &[&'a str], status: &str) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|package| {
            !status
                .lines()
                .filter_map(|line| line.split_once('\t'))
                .any(|(name, state)| name == *package && state.trim() == INSTALLED)
        })
        .collect()
}

/// Splits `wanted` into packages that `apt-cache policy` offers a version
/// of and those it does not (`Candidate: (none)`, or not listed at all).
fn split_by_candidate<'a>(wanted: &[&'a str], policy: &str) -> (Vec<&'a str>, Vec<&'a str>) {
    let offered = with_candidate(policy);
    wanted
        .iter()
        .copied()
        .partition(|package| offered.contains(package))
}

/// The package names in `apt-cache policy` output that have a candidate.
fn with_candidate(policy: &str) -> Vec<&str> {
    let mut offered = Vec::new();
    let mut package = None;
    for line in policy.lines() {
        if !line.starts_with(char::is_whitespace) {
            package = line.strip_suffix(':');
        } else if let Some(candidate) = line.trim().strip_prefix("Candidate:") {
            if let Some(name) = package.filter(|_| candidate.trim() != "(none)") {
                offered.push(name);
            }
        }
    }
    offered
}

/// apt-get that never asks (tshark's debconf question about capturing as
/// non-root takes its default) and waits for a dpkg lock held by another
/// apt run instead of failing at once.
fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-q", "-o", "DPkg::Lock::Timeout=300"]);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_packages_not_fully_installed() {
        let status = "socat\tinstall ok installed\n\
                      strace\tdeinstall ok config-files\n\
                      python3\tinstall ok installed\n";
        let wanted = ["socat", "strace", "python3", "rrdcached"];
        assert_eq!(not_installed(&wanted, status), ["strace", "rrdcached"]);
        assert_eq!(not_installed(&wanted, ""), wanted);
    }

    #[test]
    fn a_package_name_is_matched_whole() {
        let status = "python3-minimal\tinstall ok installed\n";
        assert_eq!(not_installed(&["python3"], status), ["python3"]);
    }

    #[test]
    fn splits_by_apt_candidate() {
        let policy = "socat:\n  Installed: (none)\n  Candidate: 1.7.4.4-2\n  Version table:\n \
                      *** 1.7.4.4-2 500\n        500 http://deb.example/debian bookworm/main amd64 Packages\n\
                      linux-perf:\n  Installed: (none)\n  Candidate: (none)\n  Version table:\n";
        let (available, unknown) =
            split_by_candidate(&["socat", "linux-perf", "no-such-package"], policy);
        assert_eq!(available, ["socat"]);
        assert_eq!(unknown, ["linux-perf", "no-such-package"]);
    }
}
