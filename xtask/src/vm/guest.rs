//! One guest boot under QEMU: software emulation (TCG), the kernel
//! booted as an ELF through its PVH entry, the host's root shared
//! read-only over virtio-9p. The kernel log goes to the first serial port
//! (a file); what the guest's scripts print comes over the second, through
//! QEMU's stdout, and is shown as it arrives. A guest that does not power
//! off in time is killed. For `--shell` that second port is the terminal.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, RecvTimeoutError},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// The guest's size: two vCPUs as the host has cores, and memory for
/// the tests' tmpfs and programs.
const CPUS: &str = "2";
const MEMORY: &str = "1G";

/// How long a guest may take to power off once it said it is done.
const POWEROFF_GRACE: Duration = Duration::from_secs(20);

/// What to boot.
pub struct Guest<'a> {
    pub vmlinux: &'a Path,
    pub initramfs: &'a Path,
    /// Where the kernel log (first serial port) is written.
    pub console_log: &'a Path,
}

/// How a guest ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// QEMU exited: the guest powered off, rebooted (a panic) or QEMU failed.
    Exited(ExitStatus),
    /// Killed after the timeout.
    TimedOut,
}

/// What a guest printed over its second serial port, and how it ended.
pub struct Run {
    pub lines: Vec<String>,
    pub ending: Ending,
    /// From starting QEMU to the guest's first line (its init running).
    pub boot: Option<Duration>,
    pub elapsed: Duration,
}

/// Boots `guest`, echoing each line it prints through `show` and copying
/// it to `transcript`, until it powers off or `timeout` has passed.
pub fn run(
    guest: &Guest<'_>,
    transcript: &Path,
    timeout: Duration,
    mut show: impl FnMut(&str),
) -> Result<Run> {
    let mut qemu = qemu_command(guest);
    let started = Instant::now();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64 (`cargo xtask setup` installs it)")?;
    let stdout = child.stdout.take().context("qemu's stdout")?;
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_owned();
            if lines_tx.send(text).is_err() {
                break;
            }
        }
    });
    let path = transcript;
    let mut transcript =
        fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut deadline = started + timeout;
    let mut lines = Vec::new();
    let mut boot = None;
    let ending = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(left) {
            Ok(line) => {
                boot.get_or_insert_with(|| started.elapsed());
                writeln!(transcript, "{line}")?;
                if line.starts_with("@@vm-test done") {
                    deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
                }
                show(&line);
                lines.push(line);
            }
            Err(RecvTimeoutError::Disconnected) => break Ending::Exited(child.wait()?),
            Err(RecvTimeoutError::Timeout) => {
                stop(&mut child);
                break Ending::TimedOut;
            }
        }
    };
    Ok(Run {
        lines,
        ending,
        boot,
        elapsed: started.elapsed(),
    })
}

/// Boots `guest` with its second serial port on this terminal, for a
/// person to use, and waits until it powers off.
pub fn interact(guest: &Guest<'_>) -> Result<()> {
    let mut qemu = qemu_command(guest);
    let status = qemu
        .status()
        .context("cannot start qemu-system-x86_64 (`cargo xtask setup` installs it)")?;
    anyhow::ensure!(status.success(), "qemu-system-x86_64 failed ({status})");
    Ok(())
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn qemu_command(guest: &Guest<'_>) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    // One host thread runs both vCPUs in turn. With a thread each
    // (QEMU's default), a vCPU now and then ran the int3 that the kernel
    // plants while it patches a static key (sockspy attaching to
    // sys_enter) after the patch was done, and the guest died with
    // "Oops: int3" in syscall_trace_enter. Two vCPUs stay, so the guest is
    // still SMP; the tests were no slower.
    cmd.args(["-accel", "tcg,thread=single"])
        .args(["-cpu", "max", "-smp", CPUS, "-m", MEMORY])
        .args(["-machine", "pc", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(guest.vmlinux)
        .arg("-initrd")
        .arg(guest.initramfs)
        // panic=-1: a panicking kernel reboots at once, and -no-reboot
        // turns that into QEMU's exit.
        .args(["-append", "console=ttyS0 quiet panic=-1 rdinit=/init"])
        .arg("-serial")
        .arg(format!("file:{}", guest.console_log.display()))
        .args(["-serial", "stdio"])
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ]);
    cmd
}
