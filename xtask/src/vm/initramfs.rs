//! The guest's initramfs: busybox, the kernel modules that mount the
//! host's root over virtio-9p, the scripts that run the tests, and the
//! run's configuration. Written as a `newc` cpio archive (the format the
//! kernel unpacks) and gzipped; a few megabytes, built anew for every run.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result};

use crate::exec;

/// A `newc` cpio archive being built in memory.
#[derive(Default)]
pub struct Cpio {
    bytes: Vec<u8>,
    next_ino: u32,
}

const DIR: u32 = 0o040_000;
const FILE: u32 = 0o100_000;
const CHAR_DEVICE: u32 = 0o020_000;

impl Cpio {
    /// A directory; parents must come first.
    pub fn dir(&mut self, path: &str) {
        self.entry(path, DIR | 0o755, 2, (0, 0), &[]);
    }

    /// A regular file with `mode`'s permission bits.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, FILE | mode, 1, (0, 0), data);
    }

    /// A character device node, such as the `/dev/console` the kernel
    /// opens for init before anything is mounted.
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.entry(path, CHAR_DEVICE | 0o600, 1, (major, minor), &[]);
    }

    /// The archive, closed by its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.bytes
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.next_ino += 1;
        let name_size = path.len() + 1;
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: the same archive for the same inputs
            u32::try_from(data.len()).expect("initramfs files are small"),
            0, // device major
            0, // device minor
            rdev.0,
            rdev.1,
            u32::try_from(name_size).expect("short names"),
            0, // check: unused by newc
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(path.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    /// Names and data start on 4-byte boundaries.
    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

/// Writes `archive` gzipped to `path`, through the system's gzip.
pub fn write_gzipped(archive: &[u8], path: &Path) -> Result<()> {
    let gzipped = exec::filter(Command::new("gzip").args(["-c", "-6", "-n"]), archive)?;
    fs::write(path, gzipped).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entries of a newc archive: (name, mode, rdev major, data).
    fn entries(mut bytes: &[u8]) -> Vec<(String, u32, u32, Vec<u8>)> {
        let field = |header: &[u8], index: usize| {
            let hex = std::str::from_utf8(&header[6 + index * 8..6 + (index + 1) * 8]).unwrap();
            u32::from_str_radix(hex, 16).unwrap()
        };
        let padded = |n: usize| n.div_ceil(4) * 4;
        let mut found = Vec::new();
        loop {
            assert_eq!(&bytes[..6], b"070701");
            let (size, name_size) = (field(bytes, 6) as usize, field(bytes, 11) as usize);
            let name = String::from_utf8(bytes[110..110 + name_size - 1].to_vec()).unwrap();
            let data_at = padded(110 + name_size);
            let data = bytes[data_at..data_at + size].to_vec();
            let (mode, major) = (field(bytes, 1), field(bytes, 9));
            bytes = &bytes[padded(data_at + size)..];
            if name == "TRAILER!!!" {
                assert!(bytes.is_empty(), "nothing after the trailer");
                return found;
            }
            found.push((name, mode, major, data));
        }
    }

    #[test]
    fn writes_newc_entries_aligned_and_closed_by_a_trailer() {
        let mut cpio = Cpio::default();
        cpio.dir("dev");
        cpio.char_device("dev/console", 5, 1);
        cpio.file("init", 0o755, b"#!/bin/sh\n");
        let bytes = cpio.finish();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(
            entries(&bytes),
            [
                ("dev".into(), 0o040_755, 0, vec![]),
                ("dev/console".into(), 0o020_600, 5, vec![]),
                ("init".into(), 0o100_755, 0, b"#!/bin/sh\n".to_vec()),
            ]
        );
    }
}
