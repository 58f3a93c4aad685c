//! The README's `sockspy pairs` example against a real run: a listener
//! and a connection of this test's own, listed by the built sockspy (no
//! root needed), must print lines of the example's shape.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use sockspy_tests::{python3, run_sockspy, socket_dir, sockspy_bin};

/// Listens at argv[1], connects to itself, says `ready` and holds both
/// ends until its stdin closes.
const LISTENER_AND_CONNECTION: &str = "
import socket, sys
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1])
srv.listen(1)
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
client.connect(sys.argv[1])
server, _ = srv.accept()
print('ready', flush=True)
sys.stdin.read()
";

/// A line with what varies from run to run (process names and ids,
/// descriptors, inodes, paths, byte counts) replaced by placeholders; the
/// spacing is kept, since the columns are part of the shape.
fn shape(line: &str) -> String {
    line.split(' ')
        .map(|word| {
            if let Some((_, pid)) = word.strip_suffix(']').and_then(|w| w.split_once('[')) {
                assert!(pid.parse::<u32>().is_ok(), "{line}");
                "COMM[PID]".to_owned()
            } else if word.starts_with('/') || word.starts_with('@') {
                "PATH".to_owned()
            } else if !word.is_empty() && word.chars().all(|c| c.is_ascii_digit() || c == '/') {
                word.split('/').map(|_| "N").collect::<Vec<_>>().join("/")
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The lines of the README's `sockspy pairs` example that go to stdout.
fn readme_pairs_example() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("reading README.md");
    let mut lines = readme
        .lines()
        .skip_while(|l| !l.starts_with("    $ sockspy pairs"));
    lines
        .next()
        .expect("the README has a `$ sockspy pairs` example");
    lines
        .take_while(|l| l.starts_with("    ") && !l.starts_with("    $ "))
        .map(|l| l[4..].to_owned())
        .filter(|l| !l.starts_with("sockspy: "))
        .collect()
}

#[test]
fn pairs_prints_what_the_readme_shows() {
    if !sockspy_bin().exists() {
        eprintln!("skipped pairs_prints_what_the_readme_shows: sockspy is not built");
        return;
    }
    let dir = socket_dir("readme-pairs");
    let mut holder = Command::new(python3())
        .args(["-c", LISTENER_AND_CONNECTION, dir.path()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting python3");
    let mut ready = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    let output = run_sockspy(&["pairs", "--unix", "--path", dir.path()]);
    // Closing its stdin lets the holder go.
    drop(holder.stdin.take());
    holder.wait().unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).unwrap();
    let shown: Vec<String> = readme_pairs_example().iter().map(|l| shape(l)).collect();
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 2, "a listener and a connection: {printed}");
    for line in lines {
        assert!(
            shown.contains(&shape(line)),
            "sockspy pairs printed a line of a shape the README does not show:\n{line}\nREADME shapes:\n{}",
            shown.join("\n")
        );
    }
}
