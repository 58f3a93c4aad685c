//! `cargo xtask vm-test`: sockspy on other kernels. This host's kernel
//! refuses kprobes and fentry and is newer than what many operators run;
//! stock Debian kernels booted under QEMU show what sockspy does there.
//! For each kernel of the matrix it fetches Debian's package (kernel.rs),
//! and for each backend boots it with the host's root file system shared
//! read-only (guest.rs, initramfs.rs, init.sh), runs `sockspy check` and
//! then the root integration tests inside with `SOCKSPY_BACKEND` set
//! (run.sh), and tabulates what each kernel allowed (report.rs) into
//! `target/vm-test.md`.

mod bzimage;
mod elf;
mod guest;
mod initramfs;
mod kernel;
mod modules;
mod report;

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use kernel::{KERNELS, Kernel};
use report::Transcript;

/// What `cargo xtask vm-test` runs, and on which kernels.
#[derive(clap::Args)]
pub struct Options {
    /// The kernel to boot: 6.1, 6.12 or all
    #[arg(long, default_value = "all")]
    kernel: String,
    /// The backend to test with: tp-btf, tracepoint, fentry, kprobe or all (one
    /// guest each)
    #[arg(long, default_value = "all")]
    backend: String,
    /// Only the core tests (see CORE_TESTS) instead of the whole suite
    #[arg(long, conflicts_with = "filters")]
    core: bool,
    /// Boot the kernel (one, named with --kernel) with a root shell on
    /// this terminal instead of running the tests
    #[arg(long, conflicts_with_all = ["core", "filters"])]
    shell: bool,
    /// Seconds a guest may run before it is taken for hung and killed
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Test name filters, passed to every test binary as `cargo test`
    /// takes them (`-- FILTER...`)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    filters: Vec<String>,
}

/// The backends sockspy has (`--backend`); each kernel is tested with each.
const BACKENDS: &[&str] = &["tp-btf", "tracepoint", "fentry", "kprobe"];

/// `--core`: one test per thing a backend must get right, by test binary.
const CORE_TESTS: &[(&str, &[&str])] = &[
    (
        "unix",
        &[
            "stream_server_and_client",
            "connection_made_before_tracing",
            "socketpair_fork_and_exec",
            "datagram_sendto_names_the_destination",
        ],
    ),
    ("payload", &["captures_the_first_bytes_of_each_call"]),
    ("inet", &["tcp_over_ipv4_loopback"]),
    ("cli", &["programs_stay_far_within_the_verifiers_budget"]),
    ("backends", &["every_backend_sees_the_same_events"]),
    (
        "first_contact",
        &["a_prefork_servers_clients_name_every_worker_then_the_acceptor"],
    ),
    (
        "containers",
        &[
            "a_client_in_namespaces_reaches_a_host_daemon_through_a_bind_mount",
            "replicas_in_two_network_namespaces_are_never_mixed_up",
            "cgroup_and_container_filters_keep_their_events_and_the_kernel_drops_the_rest",
        ],
    ),
];

/// The test binary that compares every backend a kernel allows; it runs
/// in one guest per kernel, this backend's.
const COMPARISON: (&str, &str) = ("backends", "fentry");

/// The modules the guest loads before anything else: 9p over virtio (to
/// reach the host's files; 6.1 has even the virtio PCI driver as a
/// module), the sock_diag families that `ss` and `sockspy
/// pairs` ask, and veth for the network namespace test. The guest cannot
/// autoload them: the host's file system has no modules of its kernel.
const GUEST_MODULES: &[&str] = &[
    "virtio_pci",
    "9p",
    "9pnet_virtio",
    "unix_diag",
    "inet_diag",
    "tcp_diag",
    "udp_diag",
    "veth",
];

/// Fetches, boots and tests each chosen kernel, prints the table and
/// writes it to `target/vm-test.md`. Fails when a guest did not run to
/// its end or a test failed; a kernel that sockspy cleanly declines
/// (`check` says what is missing) is a result, not a failure.
pub fn run(root: &Path, options: &Options) -> Result<()> {
    let kernels = chosen("kernel", &options.kernel, KERNELS, |kernel| kernel.name)?;
    let backends = chosen("backend", &options.backend, BACKENDS, |backend| backend)?;
    let vm_dir = root.join("target/vm");
    if options.shell {
        let [kernel] = kernels[..] else {
            bail!("--shell boots one kernel: name it with --kernel");
        };
        return shell(kernel, &vm_dir);
    }
    let binaries = test_binaries(root)?;
    let started = Instant::now();
    let mut rows = Vec::new();
    for kernel in kernels {
        for backend in &backends {
            let config = guest_config(root, &binaries, options, backend)?;
            // One kernel that cannot be fetched or booted does not hide the others.
            let row =
                test_kernel(kernel, backend, &vm_dir, &config, options).unwrap_or_else(|err| Row {
                    result: format!("not run: {err:#}"),
                    ..Row::empty(kernel.name, backend)
                });
            rows.push(row);
        }
    }
    let text = table(&rows, started.elapsed());
    print!("\n{text}");
    let report = root.join("target/vm-test.md");
    fs::write(&report, &text).with_context(|| format!("writing {}", report.display()))?;
    let failed: Vec<String> = rows
        .iter()
        .filter(|row| !row.fine)
        .map(|row| format!("{} ({})", row.kernel, row.backend))
        .collect();
    ensure!(failed.is_empty(), "vm-test failed on {}", failed.join(", "));
    Ok(())
}

/// `--kernel`/`--backend NAME`: the one of `all` named so, or every one
/// for `all`.
fn chosen<'a, T>(
    flag: &str,
    name: &str,
    all: &'a [T],
    name_of: impl Fn(&T) -> &str,
) -> Result<Vec<&'a T>> {
    if name == "all" {
        return Ok(all.iter().collect());
    }
    match all.iter().find(|item| name_of(item) == name) {
        Some(item) => Ok(vec![item]),
        None => {
            let known: Vec<&str> = all.iter().map(&name_of).collect();
            bail!(
                "no {flag} {name} in the matrix; --{flag} takes {} or all",
                known.join(", ")
            )
        }
    }
}

/// Boots `kernel` for a person: the guest set up as for the tests, a
/// shell on this terminal.
fn shell(kernel: &Kernel, vm_dir: &Path) -> Result<()> {
    let unpacked = kernel.prepare(vm_dir)?;
    let dir = vm_dir.join(kernel.name);
    let initramfs = dir.join("initramfs.cpio.gz");
    build_initramfs(&unpacked, Work::Shell, &initramfs)?;
    guest::interact(&guest::Guest {
        vmlinux: &unpacked.vmlinux,
        initramfs: &initramfs,
        console_log: &dir.join("console.log"),
    })
}

/// A test binary of the integration suite: its target name (`unix`) and
/// the executable cargo built.
struct TestBinary {
    name: String,
    path: PathBuf,
}

/// Builds the integration tests without running them, and lists them.
fn test_binaries(root: &Path) -> Result<Vec<TestBinary>> {
    let mut cmd = crate::cargo(root);
    cmd.args([
        "test",
        "--release",
        "--no-run",
        "--quiet",
        "-p",
        "sockspy-tests",
    ])
    .arg("--message-format=json-render-diagnostics");
    let output = crate::exec::stdout(&mut cmd)?;
    let binaries = executables(&output);
    ensure!(
        !binaries.is_empty(),
        "cargo built no integration test binary"
    );
    Ok(binaries)
}

/// The `test` targets' executables in cargo's JSON messages.
fn executables(messages: &str) -> Vec<TestBinary> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| {
            message["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|kind| kind == "test"))
        })
        .filter_map(|message| {
            Some(TestBinary {
                name: message["target"]["name"].as_str()?.to_owned(),
                path: PathBuf::from(message["executable"].as_str()?),
            })
        })
        .collect()
}

/// The guest's `config.sh`: where sockspy and the tests are (the same
/// paths as here: the guest sees this machine's files), the backend
/// (`SOCKSPY_BACKEND`, which sockspy reads as `--backend`'s default), and
/// the test binaries to run with their arguments.
fn guest_config(
    root: &Path,
    binaries: &[TestBinary],
    options: &Options,
    backend: &str,
) -> Result<String> {
    let mut config = format!(
        "SOCKSPY_BIN={}\nTESTS_DIR={}\nexport SOCKSPY_BACKEND={backend}\nall_tests() {{\n",
        quote(&crate::sockspy_bin(root).to_string_lossy()),
        quote(&root.join("tests").to_string_lossy()),
    );
    for binary in binaries {
        if binary.name == COMPARISON.0 && backend != COMPARISON.1 {
            continue;
        }
        let args: Vec<String> = if options.core {
            match CORE_TESTS.iter().find(|(name, _)| *name == binary.name) {
                Some((_, tests)) => std::iter::once("--exact".to_owned())
                    .chain(tests.iter().map(|test| test.to_string()))
                    .collect(),
                None => continue,
            }
        } else {
            options.filters.clone()
        };
        let words: Vec<String> = [binary.name.clone(), binary.path.display().to_string()]
            .into_iter()
            .chain(args)
            .map(|word| quote(&word))
            .collect();
        writeln!(config, "    run_tests {}", words.join(" "))?;
    }
    config.push_str("}\n");
    Ok(config)
}

/// `word` as one shell word.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// One kernel's result with one backend: a row of the table.
struct Row {
    kernel: &'static str,
    release: String,
    backend: &'static str,
    /// `pass`, or what went wrong, in a few words.
    result: String,
    counts: Option<report::Counts>,
    /// Tests that failed, by name.
    failures: Vec<String>,
    transcript: Transcript,
    boot: Option<Duration>,
    elapsed: Duration,
    /// Whether the result is what a working harness and sockspy give.
    fine: bool,
}

impl Row {
    /// A row of `kernel` and `backend` with nothing known yet, not fine.
    fn empty(kernel: &'static str, backend: &'static str) -> Self {
        Row {
            kernel,
            release: "-".into(),
            backend,
            result: String::new(),
            counts: None,
            failures: Vec::new(),
            transcript: Transcript::default(),
            boot: None,
            elapsed: Duration::ZERO,
            fine: false,
        }
    }
}

fn test_kernel(
    kernel: &'static Kernel,
    backend: &'static str,
    vm_dir: &Path,
    config: &str,
    options: &Options,
) -> Result<Row> {
    eprintln!("xtask vm-test: kernel {}, backend {backend}", kernel.name);
    let unpacked = kernel.prepare(vm_dir)?;
    eprintln!("xtask vm-test: booting {}", unpacked.package);
    let dir = vm_dir.join(kernel.name);
    let initramfs = dir.join("initramfs.cpio.gz");
    build_initramfs(&unpacked, Work::Tests { config }, &initramfs)?;
    let console_log = dir.join("console.log");
    let guest = guest::Guest {
        vmlinux: &unpacked.vmlinux,
        initramfs: &initramfs,
        console_log: &console_log,
    };
    let prefix = format!("[{} {backend}] ", kernel.name);
    let timeout = Duration::from_secs(options.timeout);
    let run = guest::run(&guest, &dir.join("guest.log"), timeout, |line| {
        eprintln!("{prefix}{line}")
    })?;
    let transcript = report::parse(&run.lines);
    let (result, fine) = judge(
        &transcript,
        backend,
        &run.ending,
        &console_log.display().to_string(),
    );
    let counts = transcript
        .tests
        .iter()
        .filter_map(|binary| binary.output.counts())
        .reduce(|a, b| report::Counts {
            passed: a.passed + b.passed,
            failed: a.failed + b.failed,
            ignored: a.ignored + b.ignored,
        });
    let failures = transcript
        .tests
        .iter()
        .flat_map(|binary| binary.output.failed_tests())
        .collect();
    Ok(Row {
        kernel: kernel.name,
        release: transcript.release.clone().unwrap_or(unpacked.release),
        backend,
        result,
        counts,
        failures,
        transcript,
        boot: run.boot,
        elapsed: run.elapsed,
        fine,
    })
}

/// What a guest is booted for.
enum Work<'a> {
    /// The tests, as `config.sh` lists them.
    Tests { config: &'a str },
    /// A shell for a person.
    Shell,
}

fn build_initramfs(unpacked: &kernel::Unpacked, work: Work<'_>, path: &Path) -> Result<()> {
    let modules = modules::Modules::open(&unpacked.modules)?.load_order(GUEST_MODULES)?;
    let busybox = fs::read("/bin/busybox").context("reading /bin/busybox (busybox-static)")?;
    ensure!(
        elf::is_static(&busybox)?,
        "/bin/busybox is linked dynamically: install busybox-static (`cargo xtask setup`)"
    );
    let mut cpio = initramfs::Cpio::default();
    for dir in ["bin", "dev", "proc", "sys", "modules"] {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.file("init", 0o755, include_bytes!("vm/init.sh"));
    cpio.file("run.sh", 0o644, include_bytes!("vm/run.sh"));
    cpio.file("hooks.py", 0o644, include_bytes!("vm/hooks.py"));
    match work {
        Work::Tests { config } => cpio.file("config.sh", 0o644, config.as_bytes()),
        Work::Shell => cpio.file("shell", 0o644, b""),
    }
    let order: Vec<&str> = modules.iter().map(|module| module.name.as_str()).collect();
    cpio.file(
        "modules/order",
        0o644,
        format!("{}\n", order.join("\n")).as_bytes(),
    );
    for module in &modules {
        cpio.file(&format!("modules/{}.ko", module.name), 0o644, &module.elf);
    }
    initramfs::write_gzipped(&cpio.finish(), path)
}

/// The result of a guest run for `backend` in a few words, and whether it
/// is a fine one.
fn judge(
    transcript: &Transcript,
    backend: &str,
    ending: &guest::Ending,
    console: &str,
) -> (String, bool) {
    if *ending == guest::Ending::TimedOut {
        return (format!("guest timed out (kernel log: {console})"), false);
    }
    let Some(check) = &transcript.check else {
        let why = transcript.errors.join("; ");
        let why = if why.is_empty() {
            "no output".into()
        } else {
            why
        };
        return (
            format!("guest stopped before sockspy check: {why} (kernel log: {console})"),
            false,
        );
    };
    match check.status {
        Some(0) => {}
        Some(2) => {
            let missing = check.failed_checks();
            if missing.is_empty() {
                return (
                    "sockspy check exited 2 without naming a check".into(),
                    false,
                );
            }
            let result = match check.refusal(backend) {
                Some(why) => format!("not available: {why}"),
                None => format!("not available (failed {})", missing.join(", ")),
            };
            // trace must decline as cleanly as check did: status 2, a message.
            let declined = transcript
                .trace
                .as_ref()
                .is_some_and(|trace| trace.status == Some(2) && !trace.lines.is_empty());
            if !declined {
                return (format!("{result}, but sockspy trace did not say so"), false);
            }
            return (result, true);
        }
        Some(status) => return (format!("sockspy check exited with status {status}"), false),
        None => {
            return (
                format!("guest died during sockspy check (kernel log: {console})"),
                false,
            );
        }
    }
    // SOCKSPY_BACKEND reached sockspy: check traces with the backend asked for.
    if check.backend() != Some(backend) {
        return (
            format!(
                "sockspy check picked backend {}, not {backend}",
                check.backend().unwrap_or("none")
            ),
            false,
        );
    }
    if transcript.tests.is_empty() {
        return ("no test ran".into(), false);
    }
    let unfinished: Vec<&str> = transcript
        .tests
        .iter()
        .filter(|binary| binary.output.status.is_none() || binary.output.counts().is_none())
        .map(|binary| binary.name.as_str())
        .collect();
    if !unfinished.is_empty() {
        return (
            format!(
                "test binaries did not finish: {} (kernel log: {console})",
                unfinished.join(", ")
            ),
            false,
        );
    }
    let failed = transcript
        .tests
        .iter()
        .any(|binary| binary.output.status != Some(0));
    if failed {
        ("tests failed".into(), false)
    } else {
        ("pass".into(), true)
    }
}

/// The markdown tables: results by kernel and backend, then what each
/// guest kernel offers.
fn table(rows: &[Row], elapsed: Duration) -> String {
    let seconds = |duration: Duration| format!("{:.1} s", duration.as_secs_f64());
    let mut text = String::from(
        "| kernel | release | backend | result | passed | failed | boot | guest run |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let (passed, failed) = row
            .counts
            .map(|c| (c.passed.to_string(), c.failed.to_string()))
            .unwrap_or(("-".into(), "-".into()));
        let mut boot = row.boot.map(seconds).unwrap_or("-".into());
        if let Some(uptime) = row.transcript.uptime_at_init {
            write!(boot, " (kernel {uptime:.1} s)").expect("writing to a String");
        }
        let mut result = row.result.clone();
        if !row.failures.is_empty() {
            write!(result, ": {}", row.failures.join(", ")).expect("writing to a String");
        }
        writeln!(
            text,
            "| {} | {} | {} | {} | {passed} | {failed} | {boot} | {} |",
            row.kernel,
            row.release,
            row.backend,
            result,
            seconds(row.elapsed)
        )
        .expect("writing to a String");
    }
    text.push_str(
        "\n| kernel | sock tracepoints | kprobe | fentry |\n\
         |---|---|---|---|\n",
    );
    // The kernel's facts, once per kernel: the first guest's.
    let mut kernels: Vec<&Row> = Vec::new();
    for row in rows {
        if !kernels.iter().any(|seen| seen.kernel == row.kernel) {
            kernels.push(row);
        }
    }
    for row in &kernels {
        let hook = |name: &str| {
            row.transcript
                .hooks
                .iter()
                .find(|(hook, _)| hook == name)
                .map_or("-".to_owned(), |(_, result)| result.clone())
        };
        writeln!(
            text,
            "| {} | {} | {} | {} |",
            row.kernel,
            row.transcript.sock_events.join(" "),
            hook("kprobe"),
            hook("fentry")
        )
        .expect("writing to a String");
    }
    for row in rows {
        if let Some(trace) = &row.transcript.trace {
            let status = trace.status.map_or("-".into(), |status| status.to_string());
            writeln!(
                text,
                "\nOn {} with `SOCKSPY_BACKEND={}`, `sockspy trace` exited with status {status} and printed:\n",
                row.kernel, row.backend
            )
            .expect("writing to a String");
            for line in &trace.lines {
                writeln!(text, "    {line}").expect("writing to a String");
            }
        }
    }
    writeln!(text, "\nWhole matrix: {}.", seconds(elapsed)).expect("writing to a String");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> Options {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            options: Options,
        }
        let args = std::iter::once("vm-test").chain(args.iter().copied());
        <Cli as clap::Parser>::try_parse_from(args)
            .expect("valid arguments")
            .options
    }

    fn transcript(text: &str) -> Transcript {
        report::parse(&text.lines().map(str::to_owned).collect::<Vec<_>>())
    }

    #[test]
    fn lists_the_test_executables_cargo_built() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"sockspy_tests","kind":["lib"]},"executable":null}
{"reason":"compiler-artifact","target":{"name":"unix","kind":["test"]},"executable":"/w/target/release/deps/unix-1f"}
{"reason":"build-finished","success":true}
not json"#;
        let binaries = executables(messages);
        assert_eq!(binaries.len(), 1);
        assert_eq!(binaries[0].name, "unix");
        assert_eq!(
            binaries[0].path,
            Path::new("/w/target/release/deps/unix-1f")
        );
    }

    #[test]
    fn core_runs_only_its_tests_by_exact_name() {
        let binaries = ["unix", "record", "backends"].map(|name| TestBinary {
            name: name.into(),
            path: PathBuf::from(format!("/t/{name}-1")),
        });
        let core = options(&["--core"]);
        let config = guest_config(Path::new("/w"), &binaries, &core, "kprobe").unwrap();
        assert!(config.starts_with(
            "SOCKSPY_BIN='/w/target/release/sockspy'\nTESTS_DIR='/w/tests'\n\
             export SOCKSPY_BACKEND=kprobe\n"
        ));
        // The comparison of backends runs in the fentry guest only.
        assert!(!config.contains("backends"), "{config}");
        let config = guest_config(Path::new("/w"), &binaries, &core, "fentry").unwrap();
        assert!(config.contains("run_tests 'backends'"), "{config}");
        assert!(config.contains(
            "run_tests 'unix' '/t/unix-1' '--exact' 'stream_server_and_client' 'connection_made_before_tracing'"
        ));
        assert!(!config.contains("record"), "{config}");
        let filters = options(&["--", "tcp", "it's"]);
        let filtered = guest_config(Path::new("/w"), &binaries, &filters, "fentry");
        assert!(
            filtered
                .unwrap()
                .contains("run_tests 'record' '/t/record-1' 'tcp' 'it'\\''s'\n")
        );
    }

    #[test]
    fn kernels_are_chosen_by_name() {
        let kernel = |name| chosen("kernel", name, KERNELS, |kernel| kernel.name);
        assert_eq!(kernel("all").unwrap().len(), KERNELS.len());
        assert_eq!(kernel("6.12").unwrap()[0].name, "6.12");
        let err = kernel("5.10").err().expect("not in the matrix");
        assert!(
            format!("{err:#}").contains("takes 6.1, 6.12 or all"),
            "{err:#}"
        );
    }

    #[test]
    fn a_kernel_declined_by_check_and_trace_is_a_result() {
        let declined = transcript(
            "@@vm-test begin check\n\
             no    tracepoint sock:sock_send_length     this kernel has no tracepoint\n\
             ok    fexit inet_sendmsg                   attached (Linux 5.5+)\n\
             FAIL  backend                              the tracepoint backend cannot attach here\n\
             @@vm-test end check 2\n\
             @@vm-test begin trace\n\
             sockspy: this kernel has no tracepoint sock:sock_send_length\n\
             @@vm-test end trace 2\n\
             @@vm-test done 0\n",
        );
        let ended = guest::Ending::Exited(Default::default());
        assert_eq!(
            judge(&declined, "tracepoint", &ended, "console.log"),
            (
                "not available: tracepoint sock:sock_send_length: this kernel has no tracepoint"
                    .into(),
                true
            )
        );
        let panicked = transcript(
            "@@vm-test begin check\nFAIL  BTF  missing\n@@vm-test end check 2\n\
             @@vm-test begin trace\nthread 'main' panicked\n@@vm-test end trace 101\n",
        );
        let (result, fine) = judge(&panicked, "fentry", &ended, "console.log");
        assert!(
            !fine && result.ends_with("but sockspy trace did not say so"),
            "{result}"
        );
    }

    #[test]
    fn a_hung_or_failing_guest_is_not_fine() {
        let ended = guest::Ending::Exited(Default::default());
        let (result, fine) = judge(
            &Transcript::default(),
            "kprobe",
            &guest::Ending::TimedOut,
            "c.log",
        );
        assert!(!fine && result.starts_with("guest timed out"), "{result}");
        let (result, fine) = judge(
            &transcript("@@vm-test error insmod 9p failed\n"),
            "kprobe",
            &ended,
            "c.log",
        );
        assert!(!fine && result.contains("insmod 9p failed"), "{result}");
        let failed = transcript(
            "@@vm-test begin check\nbackend: kprobe (asked for with --backend)\n\
             @@vm-test end check 0\n@@vm-test begin tests unix\n\
             test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n\
             @@vm-test end tests unix 101\n",
        );
        assert_eq!(
            judge(&failed, "kprobe", &ended, "c.log"),
            ("tests failed".into(), false)
        );
        let passed = failed_to_passed(failed);
        assert_eq!(
            judge(&passed, "kprobe", &ended, "c.log"),
            ("pass".into(), true)
        );
        // A guest where SOCKSPY_BACKEND did not reach sockspy tested another backend.
        let (result, fine) = judge(&passed, "fentry", &ended, "c.log");
        assert!(
            !fine && result == "sockspy check picked backend kprobe, not fentry",
            "{result}"
        );
    }

    fn failed_to_passed(mut transcript: Transcript) -> Transcript {
        let output = &mut transcript.tests[0].output;
        output.status = Some(0);
        output.lines = vec!["test result: ok. 2 passed; 0 failed; 0 ignored".into()];
        transcript
    }
}
