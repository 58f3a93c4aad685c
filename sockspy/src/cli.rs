//! Command-line arguments, parsed and validated into options before any work.
//!
//! clap reports usage errors itself (one message, exit code 2); what clap
//! cannot check is checked in [`TraceArgs::options`].

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sockspy_common::{FAMILY_INET, FAMILY_INET6, FAMILY_UNIX, MAX_DATA_LEN, PROTO_TCP, PROTO_UDP};

use crate::output::Format;

/// Live socket tracer: who talks to whom over Unix, TCP and UDP sockets, and what flows.
#[derive(Debug, Parser)]
#[command(name = "sockspy", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace socket events live (needs root).
    Trace(TraceArgs),
    /// Report what this kernel offers for tracing; exits non-zero when tracing cannot work.
    Check,
}

#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Trace Unix domain sockets. Without any family flag, Unix, TCP and UDP are traced.
    #[arg(long)]
    pub unix: bool,
    /// Trace TCP over IPv4 and IPv6.
    #[arg(long)]
    pub tcp: bool,
    /// Trace UDP over IPv4 and IPv6.
    #[arg(long)]
    pub udp: bool,
    /// Trace TCP and UDP (same as --tcp --udp).
    #[arg(long)]
    pub inet: bool,
    /// Keep only events whose local or remote port is N (repeatable).
    #[arg(long, value_name = "N")]
    pub port: Vec<u16>,
    /// Print JSON Lines (one object per event) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Stop after printing N events.
    #[arg(short = 'c', long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after SECONDS (fractions allowed).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    /// Print kernel-side counters (events, lost, read failures) to stderr every second.
    #[arg(long)]
    pub stats: bool,
    /// Ring buffer size in KiB (rounded up to a power of two).
    #[arg(short = 'B', long, value_name = "KIB", default_value_t = 8192)]
    pub buffer_size: u64,
    /// Capture payload: up to BYTES per send/recv call (default 256, at most 16384).
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
    /// Show captured payload as a hex and ASCII dump even when it looks like text.
    #[arg(long)]
    pub hex: bool,
}

/// Validated options for `trace`.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// `FAMILY_*` and `PROTO_*` bits.
    pub families: u32,
    /// Ports to keep (empty: all events).
    pub ports: Vec<u16>,
    pub format: Format,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub stats: bool,
    pub buffer_bytes: u64,
    /// Payload bytes to capture per call; 0 when capture is off.
    pub capture_bytes: u32,
    pub hex: bool,
}

impl TraceArgs {
    pub fn options(&self) -> TraceOptions {
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
        TraceOptions {
            families,
            ports: self.port.clone(),
            format: if self.json {
                Format::Json
            } else {
                Format::Text
            },
            count: self.count,
            duration: self.duration,
            stats: self.stats,
            buffer_bytes: self.buffer_size.saturating_mul(1024),
            capture_bytes: self.data.or(self.snaplen).unwrap_or(0),
            hex: self.hex,
        }
    }
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
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
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
        assert_eq!(options.families, FAMILY_UNIX);
        assert_eq!(options.capture_bytes, 0);
    }

    #[test]
    fn family_flags() {
        let families = |args: &[&str]| {
            let Command::Trace(trace) = Cli::try_parse_from(args).unwrap().command else {
                panic!("not trace")
            };
            trace.options().families
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
        assert_eq!(trace.options().ports, [80, 53]);
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
