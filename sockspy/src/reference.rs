//! Keeps the reference honest: the man pages in docs/man are what the clap
//! definitions render now, every flag is in docs/usage.md and in its man
//! page, the README's two commands are what CI runs, and the README's
//! example output is what the text printer writes.
//!
//! `cargo xtask man` runs [`man_pages_are_current`] with
//! `SOCKSPY_WRITE_MAN` set, which writes the pages instead of comparing.

use std::{fs, path::PathBuf, rc::Rc};

use bytes::Bytes;
use clap::CommandFactory;
use sockspy_common::{AF_INET, AF_INET6, AF_UNIX, Call, EventKind, IPPROTO_UDP};

use crate::{
    capture::events::{UnixName, kind_name, proto_name, tcp_state_name, type_name},
    cli::Cli,
    output::print::{Clock, Format, PayloadStyle, Printer, errno_name},
    table::resolve::{Event, Peer, PeerHolder},
};

/// The repository's root: this crate's directory is one level below it.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    fs::read_to_string(root().join(path)).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// Every command with a page of its own: sockspy and each visible
/// subcommand (clap's `help` subcommand has none).
fn commands() -> Vec<clap::Command> {
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let mut all = vec![root.clone()];
    all.extend(root.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    all
}

/// One man page: clap_mangen's sections, with the examples of the long
/// help as an EXAMPLES section kept as written (one example a line).
fn man_page(cmd: clap::Command) -> (String, String) {
    let examples = cmd.get_after_long_help().map(|text| text.to_string());
    let has_options = cmd.get_arguments().any(|a| !a.is_hide_set());
    let has_subcommands = cmd.has_subcommands();
    let man = clap_mangen::Man::new(cmd).source(concat!("sockspy ", env!("CARGO_PKG_VERSION")));
    let mut page = Vec::new();
    man.render_title(&mut page).unwrap();
    man.render_name_section(&mut page).unwrap();
    man.render_synopsis_section(&mut page).unwrap();
    man.render_description_section(&mut page).unwrap();
    if has_options {
        man.render_options_section(&mut page).unwrap();
    }
    if has_subcommands {
        man.render_subcommands_section(&mut page).unwrap();
    }
    // Each section is rendered with roff's quote definition in front of
    // it; a page needs it once.
    const QUOTES: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";
    let mut page = QUOTES.to_owned() + &String::from_utf8(page).unwrap().replace(QUOTES, "");
    if let Some(examples) = examples {
        page.push_str(".SH EXAMPLES\n.nf\n");
        let examples = examples.strip_prefix("Examples:\n").unwrap_or(&examples);
        for line in examples.lines() {
            page.push_str(&roff_line(line));
            page.push('\n');
        }
        page.push_str(".fi\n");
    }
    (man.get_filename(), page)
}

/// A line of literal text in roff: backslashes and hyphens escaped, and
/// a leading `.` or `'` kept from being read as a request.
fn roff_line(line: &str) -> String {
    let escaped = line.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// What a man page says once roff's escapes and font changes are taken
/// out again.
fn man_text(page: &str) -> String {
    ["\\fB", "\\fI", "\\fR"]
        .iter()
        .fold(page.to_owned(), |text, font| text.replace(font, ""))
        .replace("\\-", "-")
        .replace("\\e", "\\")
}

#[test]
fn man_pages_are_current() {
    let dir = root().join("docs/man");
    let pages: Vec<(String, String)> = commands().into_iter().map(man_page).collect();
    if std::env::var_os("SOCKSPY_WRITE_MAN").is_some() {
        fs::create_dir_all(&dir).unwrap();
        for entry in fs::read_dir(&dir).unwrap() {
            fs::remove_file(entry.unwrap().path()).unwrap();
        }
        for (name, page) in &pages {
            fs::write(dir.join(name), page).unwrap();
        }
        return;
    }
    let mut committed: Vec<String> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("docs/man: {err}; run `cargo xtask man`"))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    committed.sort();
    let mut rendered: Vec<String> = pages.iter().map(|(name, _)| name.clone()).collect();
    rendered.sort();
    assert_eq!(
        committed, rendered,
        "docs/man holds other pages than the CLI has: run `cargo xtask man`"
    );
    for (name, page) in &pages {
        let on_disk = fs::read_to_string(dir.join(name)).unwrap();
        assert!(
            on_disk == *page,
            "docs/man/{name} is not what the CLI definitions render now: run `cargo xtask man`"
        );
    }
}

/// Whether `text` names `flag` on its own: `--pid` is not found in
/// `--pid-tree`, nor `-c` in `-cat`.
fn mentions(text: &str, flag: &str) -> bool {
    let part_of_a_word = |c: char| c.is_ascii_alphanumeric() || c == '-';
    text.match_indices(flag).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + flag.len()..].chars().next();
        !before.is_some_and(part_of_a_word) && !after.is_some_and(part_of_a_word)
    })
}

#[test]
fn every_flag_is_in_the_usage_reference_and_its_man_page() {
    let usage = read("docs/usage.md");
    let mut missing = Vec::new();
    for cmd in commands() {
        let name = cmd.get_name().to_owned();
        let page = man_text(&man_page(cmd.clone()).1);
        if name != "sockspy" && !usage.contains(&format!("## `sockspy {name}`")) {
            missing.push(format!("docs/usage.md has no section `sockspy {name}`"));
        }
        for arg in cmd.get_arguments() {
            // clap's own -h and -V are in every --help; the reference says
            // how to get help, not that -h gives it.
            let id = arg.get_id().as_str();
            if arg.is_hide_set() || arg.is_positional() || id == "help" || id == "version" {
                continue;
            }
            let flags = arg
                .get_long()
                .map(|long| format!("--{long}"))
                .into_iter()
                .chain(arg.get_short().map(|short| format!("-{short}")));
            for flag in flags {
                if !mentions(&usage, &flag) {
                    missing.push(format!("{flag} of `{name}` is not in docs/usage.md"));
                }
                if !mentions(&page, &flag) {
                    missing.push(format!("{flag} is not in {name}'s man page"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

/// The commands of a README section: its indented lines.
fn indented_lines(markdown: &str, heading: &str) -> Vec<String> {
    let section = markdown
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("the README has no section {heading:?}"));
    section
        .lines()
        .filter_map(|line| line.strip_prefix("    "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_readme_commands_are_the_ones_ci_runs() {
    let readme = read("README.md");
    assert_eq!(
        indented_lines(&readme, "The two commands"),
        ["cargo xtask run -- trace --unix", "cargo xtask test"]
    );
    let ci = read(".ci/run");
    let cargo_lines: Vec<&str> = ci
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("cargo "))
        .collect();
    assert_eq!(cargo_lines, ["cargo xtask test"], ".ci/run");
}

/// The README's example blocks of `sockspy trace` output: each a header row
/// and event lines, with the payload lines under them.
fn readme_trace_examples(readme: &str) -> Vec<Vec<&str>> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(command) = line.strip_prefix("    $ ") else {
            continue;
        };
        // Calls only: exchanges have their own printer's test.
        if !command.contains("sockspy trace")
            || command.contains(" -w ")
            || command.contains("--exchanges")
        {
            continue;
        }
        let mut block = Vec::new();
        while let Some(line) = lines.next_if(|l| l.starts_with("    ") && !l.starts_with("    $ "))
        {
            block.push(&line[4..]);
        }
        blocks.push(block);
    }
    blocks
}

/// Inverse of a name table: the number in `0..256` that `name_of` names `name`.
fn number_named(name: &str, name_of: impl Fn(u16) -> Option<String>) -> Option<u16> {
    (0..256).find(|&n| name_of(n).as_deref() == Some(name))
}

fn unix_name(text: &str) -> Rc<UnixName> {
    Rc::new(match text.strip_prefix('@') {
        Some(name) => UnixName::Abstract(name.into()),
        None => UnixName::Path(text.into()),
    })
}

/// The event a README line shows, worked back from its columns.
fn event_of_line(line: &str) -> Event {
    // Each column is padded to its width and followed by a space; only
    // RESULT (right-aligned, then two spaces) and PATH may run wider.
    let mut at = 16;
    let column = |at: &mut usize, width: usize| {
        let text = line.get(*at..(*at + width).min(line.len())).unwrap_or("");
        *at += width + 1;
        text.trim()
    };
    let pid = column(&mut at, 7);
    let comm = column(&mut at, 15);
    let fd = column(&mut at, 4);
    let kind = column(&mut at, 10);
    let after = &line[at..];
    let start = after.find(|c| c != ' ').unwrap_or(0);
    let (result, end) = if start >= 8 {
        ("", 6)
    } else {
        let end = start + after[start..].find(' ').unwrap_or(0);
        (&after[start..end], end)
    };
    at += end.max(6) + 2;
    let sock_type = column(&mut at, 9);
    let sock = column(&mut at, 8);
    let rest = line.get(at..).unwrap_or("");
    let kind = (1..32)
        .filter_map(EventKind::from_u32)
        .find(|&k| kind_name(k) == kind)
        .unwrap_or_else(|| panic!("no event {kind:?}: {line}"));
    let ip = number_named(sock_type, |p| {
        proto_name(AF_INET, p)
            .filter(|&name| name != "other")
            .map(str::to_owned)
    });
    let mut event = Event {
        kind,
        ts_ns: 0,
        pid: pid.parse().unwrap(),
        tid: pid.parse().unwrap(),
        uid: 0,
        comm: comm.into(),
        thread: [0; 16],
        family: AF_UNIX,
        sock_type: 1,
        protocol: 0,
        state: 0,
        local: None,
        remote: None,
        call: Call::Unknown,
        fd: fd.parse().ok(),
        listen_fd: None,
        sock: sock.parse().ok(),
        path: None,
        ret: 0,
        flags: 0,
        data: Bytes::new(),
        passed_fds: 0,
        passed: Vec::new(),
        context: Default::default(),
        peer: None,
        unresolved: false,
        released: false,
    };
    let peer_text = match ip {
        Some(protocol) => {
            event.protocol = protocol;
            event.sock_type = if protocol == IPPROTO_UDP { 2 } else { 1 };
            let mut words = rest.split_whitespace().peekable();
            event.local = words.next().and_then(|w| w.parse().ok());
            if words.next_if_eq(&"->").is_some() {
                event.remote = words.next().and_then(|w| w.parse().ok());
            }
            let v6 = event.local.is_some_and(|a| a.is_ipv6());
            event.family = if v6 { AF_INET6 } else { AF_INET };
            words.collect::<Vec<_>>().join(" ")
        }
        None => {
            event.sock_type = number_named(sock_type, |t| Some(type_name(t).to_owned()))
                .unwrap_or_else(|| panic!("no type {sock_type:?}: {line}"));
            // An unnamed socket's PATH is all padding.
            let (path, peer) = if rest.starts_with(' ') {
                ("", rest)
            } else {
                rest.split_once(' ').unwrap_or((rest, ""))
            };
            event.path = (!path.is_empty()).then(|| unix_name(path));
            peer.trim_start().to_owned()
        }
    };
    event.ret = if let Ok(bytes) = result.parse() {
        bytes
    } else if kind == EventKind::State {
        event.state = number_named(result, |s| Some(tcp_state_name(s).to_owned()))
            .unwrap_or_else(|| panic!("no TCP state {result:?}: {line}"));
        0
    } else if result.is_empty() {
        0
    } else {
        let errno = number_named(result, |e| Some(errno_name(e.into())));
        -i64::from(errno.unwrap_or_else(|| panic!("no errno {result:?}: {line}")))
    };
    event.peer = (!peer_text.is_empty()).then(|| peer_of(&peer_text, &event));
    event
}

/// The PEER column worked back: `comm[pid]`, `fd N`, `sock M` and a name
/// (a Unix path, or the address of an IP peer no process is known for);
/// a connection not accepted yet: `comm[pid], ... listener fd N (not yet
/// accepted)` and the name.
fn peer_of(text: &str, event: &Event) -> Peer {
    let mut peer = Peer::default();
    let mut words = text.split(' ').peekable();
    let mut holders = Vec::new();
    while let Some(who) = words.next_if(|w| w.trim_end_matches(',').ends_with(']')) {
        let (comm, pid) = who
            .trim_end_matches(',')
            .trim_end_matches(']')
            .split_once('[')
            .unwrap();
        holders.push((comm.to_owned(), pid.parse().unwrap()));
    }
    if let Some((comm, pid)) = holders.first() {
        peer.pid = Some(*pid);
        peer.comm = (!comm.is_empty()).then(|| comm.as_str().into());
    }
    if words.next_if_eq(&"listener").is_some() {
        peer.pending = true;
        if words.next_if_eq(&"fd").is_some() {
            peer.listen_fd = words.next().and_then(|w| w.parse().ok());
        }
        for word in ["(not", "yet", "accepted)"] {
            assert_eq!(words.next(), Some(word), "a pending peer: {text}");
        }
        peer.holders = holders
            .into_iter()
            .map(|(comm, pid)| PeerHolder {
                pid,
                comm: comm.into(),
                fd: peer.listen_fd.unwrap_or(-1),
            })
            .collect();
    }
    if words.next_if_eq(&"fd").is_some() {
        peer.fd = words.next().and_then(|w| w.parse().ok());
    }
    if words.next_if_eq(&"sock").is_some() {
        peer.sock = words.next().and_then(|w| w.parse().ok());
    }
    let name: Vec<&str> = words.collect();
    if !name.is_empty() {
        let name = name.join(" ");
        if event.family == AF_UNIX {
            peer.path = Some(unix_name(&name));
        } else {
            peer.addr = name.parse().ok();
        }
    }
    if event.family != AF_UNIX && peer.addr.is_none() {
        peer.addr = event.remote;
    }
    peer
}

/// The payload a README example prints under its event, worked back from
/// its escapes, and the bytes the call moved beyond it.
fn payload_of(lines: &[&str]) -> (Vec<u8>, i64) {
    let mut data = Vec::new();
    let mut more = 0;
    for line in lines {
        let text = line.strip_prefix("    ").unwrap();
        if let Some(count) = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(" more bytes not captured]"))
        {
            more = count.parse().unwrap();
            continue;
        }
        let mut bytes = text.bytes();
        while let Some(byte) = bytes.next() {
            if byte != b'\\' {
                data.push(byte);
                continue;
            }
            match bytes.next() {
                Some(b'n') => data.push(b'\n'),
                Some(b'r') => data.push(b'\r'),
                Some(b'\\') => data.push(b'\\'),
                Some(b'x') => {
                    let hex = [bytes.next().unwrap(), bytes.next().unwrap()];
                    let hex = std::str::from_utf8(&hex).unwrap();
                    data.push(u8::from_str_radix(hex, 16).unwrap());
                }
                other => panic!("unknown escape {other:?} in {line:?}"),
            }
        }
    }
    (data, more)
}

/// Every example of `sockspy trace` output in the README is parsed, printed
/// again by the real text printer, and must come out as the README shows
/// it, time stamps aside: a change to the columns, the peer's form or the
/// payload's rendering fails here until the examples are made again.
#[test]
fn the_readme_examples_are_what_the_printer_writes() {
    let readme = read("README.md");
    let blocks = readme_trace_examples(&readme);
    assert!(blocks.len() >= 3, "only {} trace examples", blocks.len());
    for block in blocks {
        let mut header = Vec::new();
        let capture = block.iter().any(|l| l.starts_with("    "));
        let style = PayloadStyle {
            captured: capture,
            hex: false,
        };
        let mut printer = Printer::new(Format::Text, Clock::epoch(), style);
        printer.header(&mut header).unwrap();
        assert_eq!(block[0], String::from_utf8(header).unwrap().trim_end());
        let mut at = 1;
        while at < block.len() {
            let line = block[at];
            let payload = block[at + 1..]
                .iter()
                .take_while(|l| l.starts_with("    "))
                .count();
            at += 1 + payload;
            if line.starts_with("sockspy: ") {
                continue;
            }
            let mut event = event_of_line(line);
            let (data, more) = payload_of(&block[at - payload..at]);
            if capture && event.ret > 0 {
                assert_eq!(event.ret, data.len() as i64 + more, "{line}");
                event.data = Bytes::from(data);
            }
            let mut printed = Vec::new();
            printer
                .call(
                    &mut printed,
                    &event,
                    &crate::conversation::CallDecoding::NONE,
                )
                .unwrap();
            let printed = String::from_utf8(printed).unwrap();
            let shown = block[at - 1 - payload..at].join("\n") + "\n";
            // TIME is the reader's local time of a stamp the README does
            // not keep; everything after it must match.
            assert_eq!(printed[15..], shown[15..], "README line:\n{shown}");
        }
    }
}
