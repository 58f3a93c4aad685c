//! Running other programs. Every failure comes back as one line naming the
//! command that failed, and installers stay silent unless they fail, so a
//! machine that already has everything sees nothing.

use std::{
    io::Write,
    path::Path,
    process::{Command, ExitStatus, Output, Stdio},
};

use anyhow::{Context, Result, bail};

/// `cmd` as one would type it, the program by its file name (the full
/// path of a toolchain's cargo only makes the message harder to read).
pub fn describe(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    let name = program.file_name().unwrap_or(program.as_os_str());
    std::iter::once(name)
        .chain(cmd.get_args())
        .map(|arg| arg.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` in the foreground with its output on the terminal: builds
/// and tests, whose progress and failures the user reads.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    check(cmd, status)
}

/// Runs an installer with its output held back and replayed only if it
/// fails: a successful `apt-get install` is pages of noise.
pub fn run_quiet(cmd: &mut Command) -> Result<()> {
    let output = capture(cmd)?;
    if !output.status.success() {
        eprint!("{}", String::from_utf8_lossy(&output.stdout));
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
    }
    check(cmd, output.status)
}

/// The standard output of a query that must succeed. Its standard error
/// is shown only in the error, by its last line, which says why.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let output = capture(cmd)?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let why = stderr.lines().rev().find(|line| !line.trim().is_empty());
        bail!(
            "`{}` failed ({}){}",
            describe(cmd),
            output.status,
            why.map(|line| format!(": {}", line.trim()))
                .unwrap_or_default()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The standard output of `cmd` run as a filter over `input`: a
/// decompressor, gzip. Failing, its standard error says why.
pub fn filter(cmd: &mut Command, input: &[u8]) -> Result<Vec<u8>> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    let mut stdin = child.stdin.take().context("the filter's stdin")?;
    let input = input.to_vec();
    // Fed from a thread: the output pipe fills long before a large input
    // is all read.
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output()?;
    let fed = feeder.join().expect("writing to a pipe does not panic");
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    fed.with_context(|| format!("feeding `{}`", describe(cmd)))?;
    Ok(output.stdout)
}

/// Runs `cmd` to its end with both outputs captured and no input, so
/// that nothing it starts can wait for a keyboard (CI has none).
pub fn capture(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))
}

/// Whether `cmd` starts and succeeds, its output thrown away: whether a
/// tool works here (`perf --version`; Debian's perf is a wrapper that
/// fails without the running kernel's own perf).
pub fn works(cmd: &mut Command) -> bool {
    capture(cmd).is_ok_and(|output| output.status.success())
}

fn check(cmd: &Command, status: ExitStatus) -> Result<()> {
    if !status.success() {
        bail!("`{}` failed ({status})", describe(cmd));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_command_by_its_program_name() {
        let mut cmd = Command::new("/root/.rustup/toolchains/stable/bin/cargo");
        cmd.args(["fmt", "--all", "--", "--check"]);
        assert_eq!(describe(&cmd), "cargo fmt --all -- --check");
    }

    #[test]
    fn a_failed_query_names_the_command_and_why() {
        let err = stdout(Command::new("sh").args(["-c", "echo noise >&2; echo nope >&2; exit 3"]))
            .expect_err("the query fails");
        let message = format!("{err:#}");
        assert!(message.starts_with("`sh -c "), "{message}");
        assert!(message.ends_with("(exit status: 3): nope"), "{message}");
    }

    #[test]
    fn a_filter_gets_all_of_a_large_input() {
        let input = vec![b'x'; 1 << 20];
        let output = filter(Command::new("wc").arg("-c"), &input).expect("wc runs");
        assert_eq!(String::from_utf8_lossy(&output).trim(), "1048576");
        let err = filter(Command::new("sh").args(["-c", "echo why >&2; exit 1"]), b"")
            .expect_err("the filter fails");
        assert!(
            format!("{err:#}").ends_with("(exit status: 1): why"),
            "{err:#}"
        );
    }

    #[test]
    fn a_missing_program_is_an_error_not_a_panic() {
        let err =
            run(&mut Command::new("/nonexistent/xtask-test-program")).expect_err("no program");
        assert!(format!("{err:#}").contains("cannot start `xtask-test-program`"));
    }
}
