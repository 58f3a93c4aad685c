//! Command-line arguments, parsed and validated into options before any work.
//!
//! clap reports usage errors itself (one message, exit code 2); what clap
//! cannot check is checked in [`TraceArgs::options`].
//!
//! These definitions are also the source of `sockspy -h` (first paragraph
//! of each doc comment), `--help` (all of it, then the examples), the man
//! pages in docs/man and the shell completions.

use std::{
    io::{self, Write},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum, error::ErrorKind};
use sockspy_common::{
    FAMILY_INET, FAMILY_INET6, FAMILY_UNIX, MAX_DATA_LEN, MAX_FILTER_COMMS, MAX_FILTER_PIDS,
    MAX_FILTER_PORTS, MAX_FILTER_UIDS, PROTO_TCP, PROTO_UDP,
};

use crate::{
    capture::loader::Backend,
    conversation::{Wanted, decode::Rule},
    filter::Selection,
    output::print::Format,
    output::record::{Framing, RecordOptions},
    output::top::{Column, RowsBy},
};

/// Live socket tracer: who talks to whom over Unix, TCP and UDP sockets.
///
/// eBPF programs follow every socket call on the machine; sockspy names the
/// process, descriptor and socket at both ends of each event. `trace` and
/// `check` need root (or CAP_BPF and CAP_PERFMON); `read`, `pairs` and
/// `completions` do not. Exit status: 0 ok, 1 a failure while working, 2 a
/// usage error or a machine where tracing cannot work.
#[derive(Debug, Parser)]
#[command(
    name = "sockspy",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_long_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "\
Examples:
  Every Unix socket event, live:
    sockspy trace --unix
  Both ends of one socket, with the first bytes of each call:
    sockspy trace --path '*rrdcached*' --data
  Record, stop with Ctrl-C, print the recording:
    sockspy trace --data -w cap.pcapng
    sockspy read cap.pcapng
  Who holds both ends of each of collectd's connections now:
    sockspy pairs --comm collectd

The reference is docs/ in sockspy's repository; each subcommand has its own
--help and man page (man sockspy-trace).";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace socket events live (needs root).
    ///
    /// One line per event (a header row first), or one JSON object per event
    /// with --json, or a pcapng recording with -w. Without a family flag
    /// every family is traced. Filters of one kind are ORed, kinds are ANDed;
    /// the kernel drops what it can before it reaches sockspy. Ctrl-C,
    /// SIGTERM, --count and --duration end the trace with a summary on
    /// stderr that counts every lost event.
    #[command(after_long_help = TRACE_EXAMPLES)]
    Trace(TraceArgs),
    /// Print a recording made with `trace -w`.
    ///
    /// It prints what the live view printed, on any machine. Several files are read in order (a rotated set), `-` is stdin. The
    /// selection flags narrow what was recorded; `--pid-tree` matches only
    /// the listed processes, since a recording holds no fork events.
    #[command(after_long_help = READ_EXAMPLES)]
    Read(ReadArgs),
    /// Live view of the busiest conversations, like top (needs root).
    ///
    /// One row per connection, or per server endpoint with `--by server`:
    /// client, server, requests and bytes per second each way, the
    /// client's wait (p50, p99, max) over the last interval, bytes queued
    /// unread in the sockets, errors. With `--decode`, one row per server
    /// and request kind (HTTP method and route, Redis command, ...).
    /// `<` and `>` change the sort column, `q` quits. `-b` prints plain
    /// text snapshots instead, `--json` JSON Lines; `-r FILE` prints the
    /// table over a whole recording.
    #[command(after_long_help = TOP_EXAMPLES)]
    Top(TopArgs),
    /// Report what this kernel offers for tracing (needs root).
    ///
    /// One `ok`/`FAIL`/`skip`/`no` line per requirement and hook, one line per
    /// backend, and last the backend `trace` would use. Exits 0 when `trace`
    /// can run here, 2 when it cannot.
    #[command(after_long_help = CHECK_EXAMPLES)]
    Check(CheckArgs),
    /// List every socket connection now, with both ends' holders.
    ///
    /// Unix, TCP and UDP connections, listeners and named unconnected
    /// sockets, from the kernel's sock_diag lists and /proc/*/fd; no eBPF
    /// and no root needed (root sees every holder). A line is kept when its
    /// sockets pass the socket filters (family, --port, --path on either
    /// end) and a holder of either end passes the process filters.
    #[command(after_long_help = PAIRS_EXAMPLES)]
    Pairs(PairsArgs),
    /// Print a shell completion script to stdout.
    ///
    /// For bash, zsh and fish (also elvish and powershell). `cargo xtask
    /// install` installs the first three; by hand, save the script where
    /// the shell looks for completions.
    #[command(after_long_help = COMPLETIONS_EXAMPLES)]
    Completions(CompletionsArgs),
}

const TRACE_EXAMPLES: &str = "\
Examples:
  The next 20 Unix socket events:
    sockspy trace --unix -c 20
  Two programs, with the first 80 bytes of each call:
    sockspy trace --comm collectd --comm rrdcached --data=80
  An HTTP API over a Unix socket:
    sockspy trace --path /run/docker.sock --data=512
  TCP and UDP of a process and every child it forks:
    sockspy trace --inet --pid-tree 1234
  Only the requests that failed (HTTP 5xx, Redis errors, ...):
    sockspy trace --errors
  Ten seconds of one port, as JSON Lines:
    sockspy trace --tcp --port 5432 --duration 10 --json > pg.jsonl
  Record into at most five files of 100 MB:
    sockspy trace --data=16384 -w cap.pcapng -C 100 -W 5
  Record and print in one pipe:
    sockspy trace --data -w - | sockspy read -";

const READ_EXAMPLES: &str = "\
Examples:
  Print a recording as the live view did, or as JSON Lines:
    sockspy read cap.pcapng
    sockspy read --json cap.pcapng
  A rotated set, in order:
    sockspy read cap.pcapng cap.pcapng1 cap.pcapng2
  One program's events, payload as hex dumps:
    sockspy read --comm curl --hex cap.pcapng";

const TOP_EXAMPLES: &str = "\
Examples:
  Every connection, refreshed every second:
    sockspy top
  One row per Unix server, the slowest first:
    sockspy top --unix --by server --sort p99
  Five JSON snapshots, two seconds apart:
    sockspy top -b --json -d 2 -n 5
  Which requests to a Unix API socket are slow or failing:
    sockspy top --path /run/docker.sock --decode --sort p99
  The table over a recording:
    sockspy trace -w cap.pcapng
    sockspy top -r cap.pcapng";

const CHECK_EXAMPLES: &str = "\
Examples:
  Every requirement, hook and backend:
    sockspy check
  Whether the kprobe backend can run here:
    sockspy check --backend kprobe";

const PAIRS_EXAMPLES: &str = "\
Examples:
  Every connection and listener:
    sockspy pairs
  One socket's connections:
    sockspy pairs --unix --path '*docker*'
  collectd's connections, and who holds their other ends:
    sockspy pairs --comm collectd
  TCP, as JSON Lines:
    sockspy pairs --tcp --json";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  sockspy completions bash > /usr/share/bash-completion/completions/sockspy
  sockspy completions zsh > /usr/local/share/zsh/site-functions/_sockspy
  sockspy completions fish > ~/.config/fish/completions/sockspy.fish";

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

impl CompletionsArgs {
    /// Prints the completion script, generated from these definitions; a
    /// closed pipe ends it quietly.
    pub fn run(&self) -> anyhow::Result<ExitCode> {
        // The generators panic when a write fails, so they write to memory.
        let mut script = Vec::new();
        clap_complete::generate(self.shell, &mut Cli::command(), "sockspy", &mut script);
        match io::stdout().write_all(&script) {
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
            written => {
                written.context("writing to stdout")?;
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub backend: BackendArg,
}

/// `--backend`, of `trace` and `check`.
#[derive(Debug, Args)]
pub struct BackendArg {
    /// Where sends and receives are traced from.
    ///
    /// `auto` takes the first of tp-btf, tracepoint, fentry, kprobe whose
    /// hooks all attach on this kernel; the others name one backend, which must.
    #[arg(
        long,
        value_name = "BACKEND",
        value_enum,
        default_value_t = BackendChoice::Auto,
        env = "SOCKSPY_BACKEND"
    )]
    pub backend: BackendChoice,
}

/// The values of `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    Auto,
    TpBtf,
    Tracepoint,
    Fentry,
    Kprobe,
}

impl BackendArg {
    /// The backend asked for; `None` for `auto`.
    pub fn backend(&self) -> Option<Backend> {
        match self.backend {
            BackendChoice::Auto => None,
            BackendChoice::TpBtf => Some(Backend::TpBtf),
            BackendChoice::Tracepoint => Some(Backend::Tracepoint),
            BackendChoice::Fentry => Some(Backend::Fentry),
            BackendChoice::Kprobe => Some(Backend::Kprobe),
        }
    }
}

#[derive(Debug, Args)]
pub struct PairsArgs {
    #[command(flatten)]
    pub select: SelectionArgs,
    /// Print JSON Lines, one object per line.
    #[arg(long)]
    pub json: bool,
}

/// Which sockets `trace` and `read` show.
#[derive(Debug, Args)]
pub struct SelectionArgs {
    /// Unix domain sockets.
    ///
    /// Without any family flag, Unix, TCP and UDP are shown.
    #[arg(long)]
    pub unix: bool,
    /// TCP over IPv4 and IPv6.
    #[arg(long)]
    pub tcp: bool,
    /// UDP over IPv4 and IPv6.
    #[arg(long)]
    pub udp: bool,
    /// TCP and UDP (same as --tcp --udp).
    #[arg(long)]
    pub inet: bool,
    /// Keep only sockets with local or remote port N.
    ///
    /// Repeatable. Unix sockets have no port, so none is kept.
    #[arg(long, value_name = "N")]
    pub port: Vec<u16>,
    /// Keep only process PID (not its children).
    ///
    /// Repeatable.
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,
    /// Keep only process PID and its descendants.
    ///
    /// Repeatable. Children forked after sockspy started are kept too.
    #[arg(long, value_name = "PID")]
    pub pid_tree: Vec<u32>,
    /// Keep only processes named NAME (`*`, `?` match).
    ///
    /// Repeatable. NAME is the command as `ps` shows it; `*` and `?` match
    /// as in the shell (`--comm 'collect*'`).
    #[arg(long, value_name = "NAME")]
    pub comm: Vec<String>,
    /// Keep only sockets (or peers) named like GLOB.
    ///
    /// Repeatable. GLOB is a path or `@name` for an abstract name; the peer
    /// counts, so `--path '*rrdcached*'` keeps the client's unnamed end too.
    /// A GLOB that is an existing file also matches that socket file reached
    /// by another name (a symlink, a bind mount).
    #[arg(long, value_name = "GLOB")]
    pub path: Vec<String>,
    /// Keep only processes of user UID (the real user).
    ///
    /// Repeatable.
    #[arg(long, value_name = "UID")]
    pub uid: Vec<u32>,
    /// Keep only processes whose cgroup path starts with PATH.
    ///
    /// Repeatable. PATH is a cgroup v2 path as /proc/PID/cgroup shows it
    /// (`--cgroup /system.slice/docker-`, `--cgroup /kubepods`).
    #[arg(long, value_name = "PATH", value_parser = cgroup_prefix)]
    pub cgroup: Vec<String>,
    /// Keep only processes in a container whose id starts with ID.
    ///
    /// Repeatable. ID is as `docker ps` or `podman ps` show it (any number
    /// of leading digits), or a systemd-nspawn machine's name.
    #[arg(long, value_name = "ID", value_parser = container_prefix)]
    pub container: Vec<String>,
}

/// A `--cgroup` value: a path from the cgroup root.
fn cgroup_prefix(value: &str) -> Result<String, String> {
    if value.starts_with('/') {
        Ok(value.to_owned())
    } else {
        Err("a cgroup path starts with / (as in /proc/PID/cgroup)".to_owned())
    }
}

/// A `--container` value: the leading part of an id or a machine name.
fn container_prefix(value: &str) -> Result<String, String> {
    if value.is_empty() || value.contains('/') {
        Err("a container id or name, without /".to_owned())
    } else {
        Ok(value.to_owned())
    }
}

impl SelectionArgs {
    /// The kernel programs keep each kind of filter in a map of fixed size.
    fn validate(&self) -> Result<(), clap::Error> {
        let limits = [
            (
                "--pid and --pid-tree",
                self.pid.len() + self.pid_tree.len(),
                MAX_FILTER_PIDS,
            ),
            ("--comm", self.comm.len(), MAX_FILTER_COMMS),
            ("--uid", self.uid.len(), MAX_FILTER_UIDS),
            ("--port", self.port.len(), MAX_FILTER_PORTS),
        ];
        for (flag, given, most) in limits {
            if given > most as usize {
                let msg = format!("{flag} given {given} times; at most {most} values fit");
                return Err(Cli::command().error(ErrorKind::TooManyValues, msg));
            }
        }
        Ok(())
    }

    pub fn selection(&self) -> Selection {
        let (mut unix, mut tcp, mut udp) =
            (self.unix, self.tcp || self.inet, self.udp || self.inet);
        if !unix && !tcp && !udp {
            (unix, tcp, udp) = (true, true, true);
        }
        let mut families = 0;
        if unix {
            families |= FAMILY_UNIX;
        }
        if tcp || udp {
            families |= FAMILY_INET | FAMILY_INET6;
        }
        if tcp {
            families |= PROTO_TCP;
        }
        if udp {
            families |= PROTO_UDP;
        }
        Selection {
            families,
            ports: self.port.clone(),
            pids: self.pid.clone(),
            pid_trees: self.pid_tree.clone(),
            comms: self.comm.clone(),
            paths: self.path.clone(),
            uids: self.uid.clone(),
            cgroups: self.cgroup.clone(),
            containers: self.container.clone(),
        }
    }
}

/// Exchanges and connection summaries instead of (or beside) calls.
#[derive(Debug, Args)]
pub struct ConversationArgs {
    /// One line per exchange (a request and its response) instead of one per call.
    ///
    /// Both ends, bytes and messages each way, and where the time went:
    /// `wait` (what the client felt) = `queue` (unread in the socket) +
    /// `read` + `server` (the server's own work) + `return`.
    #[arg(long, conflicts_with = "write")]
    pub exchanges: bool,
    /// Only exchanges at least DURATION slow (10ms, 1.5s, 250us).
    ///
    /// Compares the client's wait, or with the client on another machine,
    /// the server's time. Implies --exchanges.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "write")]
    pub slower_than: Option<Duration>,
    /// Only failed exchanges: those whose decoded response says so.
    ///
    /// An rrdcached status below 0, an HTTP status of 500 or more (4xx
    /// are marked `client_error`, not failed), a Redis error reply, a DNS
    /// rcode other than NOERROR. Implies --exchanges and --decode. With
    /// --slower-than, an exchange must be both; --summaries still sums up
    /// every connection.
    #[arg(long, conflicts_with = "write")]
    pub errors: bool,
    /// A summary of each connection when it ends.
    ///
    /// Bytes and messages each way, exchanges, wait percentiles, who
    /// closed first, errors; connections still open when the trace stops
    /// are summarised then, marked open.
    #[arg(long, conflicts_with = "write")]
    pub summaries: bool,
    #[command(flatten)]
    pub decode: DecodeArgs,
}

/// `--decode` and `--decode-as`, of `trace`, `read` and `top`.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// Decode the protocols of each connection (rrdcached, HTTP, Redis, DNS).
    ///
    /// `trace`, `read`: each message's summary under the call that carried
    /// it, or on its exchange's line; pipelined requests become exchanges
    /// of their own. `top`: rows per request kind (--by kind, then the
    /// default), failed exchanges counted as errors. Captures the first
    /// 1024 bytes of each call for the decoders, shown only with --data.
    #[arg(long, conflicts_with = "write")]
    pub decode: bool,
    /// Decode connections to a server at GLOB_OR_PORT as NAME.
    ///
    /// A socket path glob or a port; NAME is a protocol, or `none` to
    /// leave them undecoded. Repeatable; implies --decode.
    #[arg(long, value_name = "GLOB_OR_PORT=NAME", conflicts_with = "write")]
    pub decode_as: Vec<Rule>,
}

impl DecodeArgs {
    /// Whether anything is to be decoded.
    pub fn on(&self) -> bool {
        self.decode || !self.decode_as.is_empty()
    }
}

impl ConversationArgs {
    /// What to follow; `None` when every call is printed as it is.
    pub fn wanted(&self) -> Option<Wanted> {
        let exchanges = self.exchanges || self.slower_than.is_some() || self.errors;
        let decode = self.decode.on() || self.errors;
        (exchanges || self.summaries || decode).then(|| Wanted {
            exchanges,
            summaries: self.summaries,
            no_wait_percentiles: false,
            slower_than_us: self.slower_than.map(|d| d.as_micros() as u64),
            errors_only: self.errors,
            decode,
            decode_as: self.decode.decode_as.clone(),
        })
    }
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub select: SelectionArgs,
    #[command(flatten)]
    pub conversation: ConversationArgs,
    #[command(flatten)]
    pub backend: BackendArg,
    /// Print JSON Lines (one object per event).
    #[arg(long)]
    pub json: bool,
    /// Stop after printing N events.
    #[arg(short = 'c', long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after SECONDS (fractions allowed).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    /// Print counters to stderr every second.
    ///
    /// The kernel side's (records, lost, read failures) and the size of
    /// sockspy's connection table (sockets, processes, lookup keys); also
    /// which backend is in use.
    #[arg(long)]
    pub stats: bool,
    /// Print the kernel programs' diagnostics to stderr.
    ///
    /// What the counters of --stats and the summary count, one line each
    /// with why: a kernel or user memory read that failed (which, where,
    /// the error), a record dropped because the ring buffer was full, a
    /// call not followed because another thread took its slot. Off by
    /// default, and then the programs carry none of it.
    #[arg(long)]
    pub kernel_log: bool,
    /// Ring buffer size in KiB.
    ///
    /// Rounded up to a power of two, at least 128 KiB.
    #[arg(short = 'B', long, value_name = "KIB", default_value_t = BUFFER_KIB)]
    pub buffer_size: u64,
    /// Capture BYTES of payload per call (256).
    ///
    /// The first BYTES each send or recv moved, 1 to 16384. Off by
    /// default: payloads can hold secrets. Text is printed under its event,
    /// anything else as a hex dump.
    #[arg(
        long,
        value_name = "BYTES",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "256",
        value_parser = parse_snaplen
    )]
    pub data: Option<u32>,
    /// Same as --data=BYTES (tcpdump's snap length).
    #[arg(short = 's', value_name = "BYTES", conflicts_with = "data", value_parser = parse_snaplen)]
    pub snaplen: Option<u32>,
    /// Show payload as hex and ASCII, even text.
    #[arg(long)]
    pub hex: bool,
    /// Add a CGROUP column: each process's cgroup path.
    ///
    /// The text output always shows a process in a container with its
    /// short container id (`curl@3f2a9c`, `curl[4512]@3f2a9c` as a peer).
    #[arg(long)]
    pub wide: bool,
    /// Record to FILE (pcapng; `-` is stdout).
    ///
    /// The file is made with mode 0600 and never overwritten without
    /// --force. Wireshark and tshark open it; `sockspy read` prints it.
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Read recording FILE (as `sockspy read`).
    #[arg(
        short = 'r',
        value_name = "FILE",
        conflicts_with_all = ["write", "duration", "stats", "data", "snaplen"]
    )]
    pub read: Option<PathBuf>,
    /// Overwrite an existing recording file.
    #[arg(long, requires = "write")]
    pub force: bool,
    /// With -w: a new file past MEGABYTES (10^6).
    ///
    /// Files are named FILE, FILE1, FILE2, ... as tcpdump names them;
    /// fractions are allowed.
    #[arg(short = 'C', value_name = "MEGABYTES", requires = "write", value_parser = parse_megabytes)]
    pub file_size: Option<u64>,
    /// With -C: keep at most COUNT files.
    ///
    /// Opening a new file removes the oldest of this capture.
    #[arg(short = 'W', value_name = "COUNT", requires = "file_size", value_parser = clap::value_parser!(u32).range(1..))]
    pub file_count: Option<u32>,
    /// How Unix stream payload is recorded.
    ///
    /// `raw` bytes, or `tcp`: each send inside synthetic IPv4 and TCP
    /// headers, so Wireshark's dissectors and Follow TCP Stream work. TCP
    /// and UDP payloads always carry their real headers.
    #[arg(long, value_name = "FRAMING", value_enum, default_value_t = Framing::Raw, requires = "write")]
    pub pcap_framing: Framing,
    /// With --pcap-framing tcp: server port (9000).
    ///
    /// The TCP port given to the server end of each Unix connection, so
    /// Wireshark picks its dissector (80 for HTTP, 6379 for Redis).
    #[arg(long, value_name = "PORT", requires = "write", value_parser = clap::value_parser!(u16).range(1..))]
    pub pcap_port: Option<u16>,
}

/// The ring buffer's default size, in KiB.
const BUFFER_KIB: u64 = 8192;

/// `top`'s (see its `-B`).
const TOP_BUFFER_KIB: u64 = 4096;

#[derive(Debug, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub select: SelectionArgs,
    #[command(flatten)]
    pub backend: BackendArg,
    /// Seconds between refreshes (fractions allowed).
    #[arg(short = 'd', long, value_name = "SECONDS", default_value = "1", value_parser = parse_seconds)]
    pub delay: Duration,
    /// One row per `connection`, per `server` endpoint, or per server and request `kind`.
    ///
    /// A server endpoint is a listener's path, or its address and port
    /// (an unnamed socket is its own), with the processes holding it; the
    /// client column then counts client processes. `kind` splits each
    /// server's row by what was asked (HTTP method and route, Redis
    /// command, rrdcached command, DNS query type, SQL verb, D-Bus
    /// interface.member; `-` for exchanges not decoded); it implies --decode, and is the default with it
    /// (`connection` otherwise).
    #[arg(long, value_name = "ROWS", value_enum)]
    pub by: Option<RowsBy>,
    /// Sort by COLUMN: largest first, names in order (requests).
    #[arg(long, value_name = "COLUMN", value_enum, default_value_t = Column::Requests)]
    pub sort: Column,
    /// Print plain text snapshots instead of the live screen.
    #[arg(short = 'b', long)]
    pub batch: bool,
    /// Stop after COUNT refreshes.
    #[arg(short = 'n', long, value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
    /// Print JSON Lines: one object per row per refresh (implies -b).
    #[arg(long)]
    pub json: bool,
    /// Ring buffer size in KiB (4096).
    ///
    /// Rounded up to a power of two, at least 128 KiB. Half of trace's:
    /// the ring's pages count in top's memory, which 10,000 live
    /// connections keep within 64 MiB; a machine busier than a few
    /// hundred thousand calls a second may need more (lost records are
    /// counted when top ends).
    #[arg(short = 'B', long, value_name = "KIB", default_value_t = TOP_BUFFER_KIB)]
    pub buffer_size: u64,
    /// Read recording FILE and print the table over all of it.
    ///
    /// Rates are over the time from its first event to its last.
    #[arg(short = 'r', value_name = "FILE", conflicts_with_all = ["delay", "iterations", "batch", "buffer_size"])]
    pub read: Option<PathBuf>,
    #[command(flatten)]
    pub decode: DecodeArgs,
}

/// Validated options for `top`.
#[derive(Clone, Debug)]
pub struct TopOptions {
    pub select: Selection,
    pub backend: Option<Backend>,
    pub delay: Duration,
    pub by: RowsBy,
    pub sort: Column,
    pub batch: bool,
    pub iterations: Option<u64>,
    pub json: bool,
    pub buffer_bytes: u64,
    pub read: Option<PathBuf>,
    /// `--decode` (implied by `--by kind`): the `--decode-as` rules.
    pub decode: Option<Vec<Rule>>,
}

impl TopArgs {
    /// What a row is of: as asked, else kinds when decoding.
    fn rows_by(&self) -> RowsBy {
        self.by.unwrap_or(if self.decode.on() {
            RowsBy::Kind
        } else {
            RowsBy::Connection
        })
    }

    pub fn validate(&self) -> Result<(), clap::Error> {
        let by = self.rows_by();
        if !Column::shown(by).contains(&self.sort) {
            let why = match self.sort {
                Column::Connections => "--by server or kind (a connection's row is one connection)",
                Column::Kind => "--by kind (or --decode)",
                _ => "--by connection or server (a request kind has no queue of its own)",
            };
            let msg = format!("--sort {} needs {why}", self.sort.name());
            return Err(Cli::command().error(ErrorKind::ArgumentConflict, msg));
        }
        self.select.validate()
    }

    pub fn options(&self) -> TopOptions {
        let by = self.rows_by();
        let decode = self.decode.on() || by == RowsBy::Kind;
        TopOptions {
            select: self.select.selection(),
            backend: self.backend.backend(),
            delay: self.delay,
            by,
            sort: self.sort,
            batch: self.batch,
            iterations: self.iterations,
            json: self.json,
            buffer_bytes: self.buffer_size.saturating_mul(1024),
            read: self.read.clone(),
            decode: decode.then(|| self.decode.decode_as.clone()),
        }
    }
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Recording files, read in order (`-` for stdin).
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub select: SelectionArgs,
    #[command(flatten)]
    pub conversation: ConversationArgs,
    /// Print JSON Lines (one object per event).
    #[arg(long)]
    pub json: bool,
    /// Stop after printing N events.
    #[arg(short = 'c', long, value_name = "N")]
    pub count: Option<u64>,
    /// Show payload as hex and ASCII, even text.
    #[arg(long)]
    pub hex: bool,
    /// Add a CGROUP column: each process's cgroup path.
    ///
    /// The text output always shows a process in a container with its
    /// short container id (`curl@3f2a9c`, `curl[4512]@3f2a9c` as a peer).
    #[arg(long)]
    pub wide: bool,
}

/// Validated options for `read`.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    pub files: Vec<PathBuf>,
    pub select: Selection,
    /// `--exchanges`, `--summaries`, `--slower-than`.
    pub conversation: Option<Wanted>,
    pub format: Format,
    pub count: Option<u64>,
    pub hex: bool,
    pub wide: bool,
}

impl ReadArgs {
    pub fn options(&self) -> ReadOptions {
        ReadOptions {
            files: self.files.clone(),
            select: self.select.selection(),
            conversation: self.conversation.wanted(),
            format: format(self.json),
            count: self.count,
            hex: self.hex,
            wide: self.wide,
        }
    }
}

fn format(json: bool) -> Format {
    if json { Format::Json } else { Format::Text }
}

/// Validated options for `trace`.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    pub select: Selection,
    /// `--exchanges`, `--summaries`, `--slower-than`.
    pub conversation: Option<Wanted>,
    pub format: Format,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub stats: bool,
    /// `--kernel-log`: print the kernel programs' diagnostics.
    pub kernel_log: bool,
    pub buffer_bytes: u64,
    /// Payload bytes to capture per call; 0 when capture is off.
    pub capture_bytes: u32,
    /// `--data`: payload is shown (with only `--decode` it is captured for
    /// the decoders alone).
    pub show_data: bool,
    pub hex: bool,
    /// `-w`: record instead of printing.
    pub record: Option<RecordOptions>,
    /// `--backend`; `None` for `auto`.
    pub backend: Option<Backend>,
    /// `--wide`: a CGROUP column.
    pub wide: bool,
}

impl TraceArgs {
    /// Checks what clap cannot; a failure is a usage error (exit status 2).
    pub fn validate(&self) -> Result<(), clap::Error> {
        let stdout = self.write.as_deref() == Some(std::path::Path::new("-"));
        let conflict = |msg: &str| Err(Cli::command().error(ErrorKind::ArgumentConflict, msg));
        if stdout && self.file_size.is_some() {
            return conflict("-C (rotation) needs a file name, not `-w -`");
        }
        if stdout && self.force {
            return conflict("--force has nothing to overwrite with `-w -`");
        }
        if self.pcap_port.is_some() && self.pcap_framing != Framing::Tcp {
            return conflict("--pcap-port needs --pcap-framing tcp");
        }
        if self
            .write
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return conflict("-w needs a file name");
        }
        self.select.validate()
    }

    /// `-r FILE`: the options to read it with.
    pub fn read_options(&self) -> Option<ReadOptions> {
        Some(ReadOptions {
            files: vec![self.read.clone()?],
            select: self.select.selection(),
            conversation: self.conversation.wanted(),
            format: format(self.json),
            count: self.count,
            hex: self.hex,
            wide: self.wide,
        })
    }

    pub fn options(&self) -> TraceOptions {
        let shown = self.data.or(self.snaplen).unwrap_or(0);
        let decode = self.conversation.wanted().is_some_and(|w| w.decode);
        let capture_bytes = if decode {
            shown.max(DECODE_CAPTURE)
        } else {
            shown
        };
        TraceOptions {
            select: self.select.selection(),
            conversation: self.conversation.wanted(),
            format: format(self.json),
            count: self.count,
            duration: self.duration,
            stats: self.stats,
            kernel_log: self.kernel_log,
            buffer_bytes: self.buffer_size.saturating_mul(1024),
            capture_bytes,
            show_data: shown > 0,
            hex: self.hex,
            record: self.write.clone().map(|path| RecordOptions {
                path,
                force: self.force,
                rotate_bytes: self.file_size,
                max_files: self.file_count,
                framing: self.pcap_framing,
                port: self.pcap_port,
                capture_bytes,
            }),
            backend: self.backend.backend(),
            wide: self.wide,
        }
    }
}

/// Bytes of each call captured for the decoders (`--decode`): the start
/// of every message they follow.
pub const DECODE_CAPTURE: u32 = 1024;

/// A duration with its unit: `250us`, `10ms`, `1.5s`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` needs a unit: us, ms or s"))?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "us" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        _ => {
            return Err(format!(
                "`{unit}` in `{text}` is not a unit: use us, ms or s"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("`{text}` is out of range"))
}

/// A file size for `-C`, in millions of bytes as tcpdump counts them.
fn parse_megabytes(text: &str) -> Result<u64, String> {
    let megabytes: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of megabytes"))?;
    if !megabytes.is_finite() || megabytes <= 0.0 || megabytes > 1e9 {
        return Err(format!("`{text}` is not a positive number of megabytes"));
    }
    Ok(((megabytes * 1e6) as u64).max(1))
}

/// A payload capture size: 1 to [`MAX_DATA_LEN`] bytes. The cap is what one
/// ring buffer record and the kernel's per-CPU scratch buffer are sized for.
fn parse_snaplen(text: &str) -> Result<u32, String> {
    let bytes: u32 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of bytes"))?;
    if bytes == 0 || bytes as usize > MAX_DATA_LEN {
        return Err(format!(
            "capture size must be 1 to {MAX_DATA_LEN} bytes, not {bytes}"
        ));
    }
    Ok(bytes)
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 || secs > 1e9 {
        return Err(format!("`{text}` is not a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn backend_is_auto_unless_named() {
        let backend = |args: &[&str]| {
            let args = ["sockspy", "check"].iter().chain(args);
            let Command::Check(check) = Cli::try_parse_from(args).unwrap().command else {
                panic!("not check");
            };
            check.backend.backend()
        };
        // The environment's default is not looked at when the flag is given.
        assert_eq!(backend(&["--backend", "auto"]), None);
        assert_eq!(backend(&["--backend", "kprobe"]), Some(Backend::Kprobe));
        assert_eq!(backend(&["--backend=fentry"]), Some(Backend::Fentry));
        assert!(Cli::try_parse_from(["sockspy", "trace", "--backend", "ebpf"]).is_err());
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["sockspy", "trace", "--count", "abc"][..],
            &["sockspy", "trace", "--duration", "-1"],
            &["sockspy", "trace", "--duration", "soon"],
            &["sockspy", "trace", "--bogus"],
            &["sockspy", "trace", "--data=0"],
            &["sockspy", "trace", "--data=16385"],
            &["sockspy", "trace", "-s", "x"],
            &["sockspy", "trace", "-s", "10", "--data=5"],
            &["sockspy", "trace", "-C", "1"],
            &["sockspy", "trace", "-w", "f", "-W", "2"],
            &["sockspy", "trace", "-w", "f", "-C", "0"],
            &["sockspy", "trace", "-w", "f", "--pcap-framing", "udp"],
            &["sockspy", "trace", "-r", "f", "-w", "g"],
            &["sockspy", "trace", "--force"],
            &["sockspy", "read"],
            &["sockspy", "trace", "--port", "http"],
            &["sockspy", "trace", "--port", "65536"],
            &["sockspy"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn options_from_flags() {
        let Cli {
            command: Command::Trace(args),
        } = Cli::try_parse_from([
            "sockspy",
            "trace",
            "--unix",
            "--json",
            "-c",
            "3",
            "--duration",
            "0.5",
        ])
        .unwrap()
        else {
            panic!("not trace")
        };
        let options = args.options();
        assert_eq!(options.format, Format::Json);
        assert_eq!(options.count, Some(3));
        assert_eq!(options.duration, Some(Duration::from_millis(500)));
        assert_eq!(options.select.families, FAMILY_UNIX);
        assert_eq!(options.capture_bytes, 0);
    }

    #[test]
    fn recording_flags() {
        let trace = |args: &[&str]| {
            let Command::Trace(trace) = Cli::try_parse_from(args).unwrap().command else {
                panic!("not trace")
            };
            trace
        };
        let args = trace(&[
            "sockspy",
            "trace",
            "--data",
            "-w",
            "cap",
            "-C",
            "0.5",
            "-W",
            "3",
            "--force",
            "--pcap-framing",
            "tcp",
            "--pcap-port",
            "80",
        ]);
        args.validate().unwrap();
        let record = args.options().record.unwrap();
        assert_eq!(record.path, PathBuf::from("cap"));
        assert_eq!(record.rotate_bytes, Some(500_000));
        assert_eq!(record.max_files, Some(3));
        assert_eq!(record.framing, Framing::Tcp);
        assert_eq!(record.port, Some(80));
        assert_eq!(record.capture_bytes, 256);
        assert!(record.force);
        for bad in [
            &["sockspy", "trace", "-w", "-", "-C", "1"][..],
            &["sockspy", "trace", "-w", "-", "--force"],
            &["sockspy", "trace", "-w", "f", "--pcap-port", "80"],
        ] {
            assert_eq!(trace(bad).validate().unwrap_err().exit_code(), 2, "{bad:?}");
        }
        let ports: Vec<String> = (1..=MAX_FILTER_PORTS + 1).map(|p| p.to_string()).collect();
        let mut many = vec!["sockspy", "trace"];
        for port in &ports {
            many.extend(["--port", port]);
        }
        let err = trace(&many).validate().unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--port given 257 times"), "{err}");
        many.truncate(many.len() - 2);
        trace(&many).validate().unwrap();
        let read = trace(&["sockspy", "trace", "-r", "cap", "--json"])
            .read_options()
            .unwrap();
        assert_eq!(read.files, [PathBuf::from("cap")]);
        assert_eq!(read.format, Format::Json);
    }

    #[test]
    fn family_flags() {
        let families = |args: &[&str]| {
            let Command::Trace(trace) = Cli::try_parse_from(args).unwrap().command else {
                panic!("not trace")
            };
            trace.options().select.families
        };
        let inet = FAMILY_INET | FAMILY_INET6;
        let all = FAMILY_UNIX | inet | PROTO_TCP | PROTO_UDP;
        assert_eq!(families(&["sockspy", "trace"]), all);
        assert_eq!(families(&["sockspy", "trace", "--unix"]), FAMILY_UNIX);
        assert_eq!(families(&["sockspy", "trace", "--tcp"]), inet | PROTO_TCP);
        assert_eq!(families(&["sockspy", "trace", "--udp"]), inet | PROTO_UDP);
        assert_eq!(
            families(&["sockspy", "trace", "--inet"]),
            inet | PROTO_TCP | PROTO_UDP
        );
        assert_eq!(
            families(&["sockspy", "trace", "--unix", "--tcp"]),
            FAMILY_UNIX | inet | PROTO_TCP
        );
        let Command::Trace(trace) =
            Cli::try_parse_from(["sockspy", "trace", "--port", "80", "--port", "53"])
                .unwrap()
                .command
        else {
            panic!("not trace")
        };
        assert_eq!(trace.options().select.ports, [80, 53]);
    }

    #[test]
    fn top_flags() {
        let top = |args: &[&str]| {
            let args = ["sockspy", "top"].iter().chain(args);
            let Command::Top(top) = Cli::try_parse_from(args).unwrap().command else {
                panic!("not top")
            };
            top
        };
        let options = top(&[]).options();
        assert_eq!(options.delay, Duration::from_secs(1));
        assert_eq!(options.sort, Column::Requests);
        assert!(options.by == RowsBy::Connection && !options.batch && !options.json);
        assert_eq!((options.iterations, options.read), (None, None));
        assert_eq!(options.decode, None);
        assert_eq!(options.buffer_bytes, 4096 * 1024);
        let args = top(&[
            "--unix", "-b", "-n", "3", "-d", "0.5", "--by", "server", "--sort", "p99", "--json",
        ]);
        args.validate().unwrap();
        let options = args.options();
        assert_eq!(options.delay, Duration::from_millis(500));
        assert_eq!((options.iterations, options.sort), (Some(3), Column::P99));
        assert!(options.by == RowsBy::Server && options.batch && options.json);
        assert_eq!(options.select.families, FAMILY_UNIX);
        let read = top(&["-r", "cap", "--sort", "connections", "--by", "server"]);
        read.validate().unwrap();
        assert_eq!(read.options().read, Some(PathBuf::from("cap")));
        let err = top(&["--sort", "connections"]).validate().unwrap_err();
        assert_eq!(err.exit_code(), 2);
        // --decode makes rows per kind, unless --by says; --by kind decodes.
        let decoded = top(&["--decode", "--sort", "kind"]);
        decoded.validate().unwrap();
        assert_eq!(decoded.options().by, RowsBy::Kind);
        assert_eq!(decoded.options().decode, Some(Vec::new()));
        let by_kind = top(&["--by", "kind"]).options();
        assert_eq!(
            (by_kind.by, by_kind.decode),
            (RowsBy::Kind, Some(Vec::new()))
        );
        let rules = top(&["--decode-as", "6380=redis", "--by", "server"]).options();
        assert_eq!(rules.by, RowsBy::Server);
        assert_eq!(rules.decode.map(|rules| rules.len()), Some(1));
        for (args, why) in [
            (&["--sort", "kind"][..], "--sort kind needs --by kind"),
            (
                &["--decode", "--sort", "queued"],
                "a request kind has no queue",
            ),
            (&["--by", "kind", "--sort", "connections"], ""),
        ] {
            let args = top(args);
            if why.is_empty() {
                args.validate().unwrap();
            } else {
                let err = args.validate().unwrap_err();
                assert!(err.to_string().contains(why), "{err}");
            }
        }
        for bad in [
            &["sockspy", "top", "-d", "0"][..],
            &["sockspy", "top", "-n", "0"],
            &["sockspy", "top", "--sort", "speed"],
            &["sockspy", "top", "--by", "client"],
            &["sockspy", "top", "-r", "cap", "-b"],
            &["sockspy", "top", "-r", "cap", "-n", "2"],
        ] {
            let err = Cli::try_parse_from(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn errors_implies_exchanges_and_decoding() {
        let trace = |args: &[&str]| {
            let args = ["sockspy", "trace"].iter().chain(args);
            let Command::Trace(trace) = Cli::try_parse_from(args).unwrap().command else {
                panic!("not trace")
            };
            trace
        };
        let errors = trace(&["--errors"]);
        let wanted = errors.conversation.wanted().unwrap();
        assert!(wanted.exchanges && wanted.decode && wanted.errors_only);
        assert!(!wanted.summaries && wanted.slower_than_us.is_none());
        // Decoding needs the start of each message: it is captured, not shown.
        assert_eq!(errors.options().capture_bytes, DECODE_CAPTURE);
        assert!(!errors.options().show_data);
        let both = trace(&["--errors", "--slower-than", "2ms", "--summaries"]);
        let both = both.conversation.wanted().unwrap();
        assert_eq!(both.slower_than_us, Some(2_000));
        assert!(both.errors_only && both.summaries);
        let decoded = trace(&["--exchanges", "--decode"]).conversation.wanted();
        assert!(!decoded.unwrap().errors_only);
        let err = Cli::try_parse_from(["sockspy", "trace", "--errors", "-w", "f"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let Command::Read(read) = Cli::try_parse_from(["sockspy", "read", "f", "--errors"])
            .unwrap()
            .command
        else {
            panic!("not read")
        };
        assert!(read.options().conversation.is_some_and(|w| w.errors_only));
    }

    #[test]
    fn data_flag_forms() {
        let capture = |args: &[&str]| {
            let Command::Trace(trace) = Cli::try_parse_from(args).unwrap().command else {
                panic!("not trace")
            };
            trace.options().capture_bytes
        };
        assert_eq!(capture(&["sockspy", "trace", "--data"]), 256);
        assert_eq!(capture(&["sockspy", "trace", "--data=4096"]), 4096);
        assert_eq!(capture(&["sockspy", "trace", "-s", "16384"]), 16384);
        assert_eq!(capture(&["sockspy", "trace", "--data", "--unix"]), 256);
    }
}
