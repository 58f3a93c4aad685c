//! The uncompressed kernel inside a bzImage. QEMU boots an ELF `vmlinux`
//! through its PVH entry point directly, while a bzImage first unpacks
//! itself, and under TCG that alone costs seconds (6.1's xz image about
//! six). So the harness takes the compressed payload out once, on the host,
//! and decompresses it with the system's own tool.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result, ensure};

use crate::exec;

/// How a kernel payload is compressed, known by its magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    const ALL: [Compression; 3] = [Compression::Gzip, Compression::Xz, Compression::Zstd];

    fn magic(self) -> &'static [u8] {
        match self {
            // gzip's magic and the deflate method byte.
            Compression::Gzip => &[0x1f, 0x8b, 0x08],
            Compression::Xz => &[0xfd, b'7', b'z', b'X', b'Z', 0x00],
            Compression::Zstd => &[0x28, 0xb5, 0x2f, 0xfd],
        }
    }

    /// The decompressor that writes to stdout. xz stops after the first
    /// stream, whatever follows it.
    fn tool(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Compression::Gzip => ("gzip", &["-dc"]),
            Compression::Xz => ("xz", &["-dc", "--single-stream"]),
            Compression::Zstd => ("zstd", &["-dcq"]),
        }
    }

    /// Whether the kernel build appends the uncompressed size (4 bytes,
    /// little endian) after the stream: it does for xz and zstd
    /// (`size_append`); gzip carries its own size.
    fn has_size_trailer(self) -> bool {
        self != Compression::Gzip
    }
}

/// The compressed kernel in a bzImage.
#[derive(Debug, PartialEq, Eq)]
pub struct Payload<'a> {
    pub compression: Compression,
    /// The compressed stream, without the size the build appended.
    pub stream: &'a [u8],
    /// The uncompressed size, where the build appended it.
    pub size: Option<u32>,
}

/// Offsets into the real-mode header of the x86 boot protocol
/// (Documentation/arch/x86/boot.rst).
const SETUP_SECTS: usize = 0x1f1;
const HEADER_MAGIC: usize = 0x202;
const VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;

/// Finds the compressed kernel in `image`. Boot protocol 2.08 and later
/// say where it is (`payload_offset`, `payload_length`); without that
/// header, the first compression magic in the image is taken, to its end.
pub fn find_payload(image: &[u8]) -> Result<Payload<'_>> {
    if let Some(stream) = payload_from_header(image) {
        let compression = Compression::ALL
            .into_iter()
            .find(|c| stream.starts_with(c.magic()))
            .with_context(|| {
                format!(
                    "the bzImage's payload starts with {:02x?}, no compression magic known here",
                    &stream[..stream.len().min(6)]
                )
            })?;
        return Ok(with_trailer(compression, stream));
    }
    let (at, compression) = (0..image.len())
        .find_map(|at| {
            Compression::ALL
                .into_iter()
                .find(|c| image[at..].starts_with(c.magic()))
                .map(|c| (at, c))
        })
        .context("no gzip, xz or zstd stream in the image: not a bzImage?")?;
    // Without a length, the trailer (if any) cannot be told apart from
    // what follows the stream; the tools stop at the stream's end.
    Ok(Payload {
        compression,
        stream: &image[at..],
        size: None,
    })
}

fn payload_from_header(image: &[u8]) -> Option<&[u8]> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(image.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(image.get(at..at + 4)?.try_into().ok()?));
    if image.get(HEADER_MAGIC..HEADER_MAGIC + 4)? != b"HdrS" || u16_at(VERSION)? < 0x0208 {
        return None;
    }
    // The protected-mode kernel follows the boot sector and the setup
    // sectors (0 meaning 4, for old images).
    let setup_sects = match *image.get(SETUP_SECTS)? {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + usize::try_from(u32_at(PAYLOAD_OFFSET)?).ok()?;
    let length = usize::try_from(u32_at(PAYLOAD_LENGTH)?).ok()?;
    image.get(start..start.checked_add(length)?)
}

fn with_trailer(compression: Compression, stream: &[u8]) -> Payload<'_> {
    if compression.has_size_trailer() && stream.len() > 4 {
        let (stream, trailer) = stream.split_at(stream.len() - 4);
        let size = u32::from_le_bytes(trailer.try_into().expect("four bytes"));
        return Payload {
            compression,
            stream,
            size: Some(size),
        };
    }
    Payload {
        compression,
        stream,
        size: None,
    }
}

/// Writes the ELF kernel inside the bzImage `image` to `vmlinux`.
pub fn extract_vmlinux(image: &Path, vmlinux: &Path) -> Result<()> {
    let bytes = fs::read(image).with_context(|| format!("reading {}", image.display()))?;
    let payload = find_payload(&bytes).with_context(|| format!("in {}", image.display()))?;
    let kernel = decompress(payload.compression, payload.stream)?;
    ensure!(
        kernel.starts_with(b"\x7fELF"),
        "{} holds a {:?} stream that is not an ELF kernel",
        image.display(),
        payload.compression
    );
    if let Some(size) = payload.size {
        ensure!(
            kernel.len() == size as usize,
            "{}: the kernel decompressed to {} bytes, the image says {size}",
            image.display(),
            kernel.len()
        );
    }
    let partial = vmlinux.with_extension("partial");
    fs::write(&partial, &kernel).with_context(|| format!("writing {}", partial.display()))?;
    fs::rename(&partial, vmlinux).with_context(|| format!("writing {}", vmlinux.display()))
}

/// `input` decompressed by the system's tool.
pub fn decompress(compression: Compression, input: &[u8]) -> Result<Vec<u8>> {
    let (program, args) = compression.tool();
    exec::filter(Command::new(program).args(args), input)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage-shaped buffer: `setup_sects` setup sectors, then
    /// `payload` at `offset` into the protected-mode part.
    fn image(setup_sects: u8, version: u16, offset: u32, payload: &[u8]) -> Vec<u8> {
        let sects = if setup_sects == 0 { 4 } else { setup_sects };
        let start = (usize::from(sects) + 1) * 512 + offset as usize;
        let mut image = vec![0u8; start];
        image[SETUP_SECTS] = setup_sects;
        image[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        image[VERSION..VERSION + 2].copy_from_slice(&version.to_le_bytes());
        image[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&offset.to_le_bytes());
        let length = payload.len() as u32;
        image[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4].copy_from_slice(&length.to_le_bytes());
        image.extend_from_slice(payload);
        image.extend_from_slice(b"trailing setup data");
        image
    }

    #[test]
    fn the_header_locates_a_zstd_payload_and_its_size() {
        let payload = [0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3, 0x40, 0x1f, 0, 0];
        let image = image(39, 0x020f, 0x2cc, &payload);
        let found = find_payload(&image).expect("found");
        assert_eq!(found.compression, Compression::Zstd);
        assert_eq!(found.stream, &payload[..7]);
        assert_eq!(found.size, Some(0x1f40));
    }

    #[test]
    fn gzip_has_no_appended_size() {
        let payload = [0x1f, 0x8b, 0x08, 0, 9, 9, 9, 9];
        let found_in = image(0, 0x020d, 0x100, &payload);
        let found = find_payload(&found_in).expect("found");
        assert_eq!(found.compression, Compression::Gzip);
        assert_eq!(found.stream, &payload);
        assert_eq!(found.size, None);
    }

    #[test]
    fn an_old_header_falls_back_to_the_first_magic() {
        let xz = [0xfd, b'7', b'z', b'X', b'Z', 0x00, 5, 5];
        let image = image(4, 0x0207, 0x40, &xz);
        let found = find_payload(&image).expect("found");
        assert_eq!(found.compression, Compression::Xz);
        assert!(found.stream.starts_with(&xz));
        assert_eq!(found.size, None);
    }

    #[test]
    fn an_unknown_payload_is_named() {
        let image = image(39, 0x020f, 0x10, b"LZ4!garbage");
        let err = find_payload(&image).expect_err("unknown magic");
        assert!(
            format!("{err:#}").contains("no compression magic"),
            "{err:#}"
        );
        assert!(find_payload(b"not a kernel at all").is_err());
    }

    #[test]
    fn decompresses_with_the_system_tool() {
        let original = b"\x7fELF and the rest of a kernel".repeat(100);
        let compressed = exec::filter(Command::new("gzip").arg("-c"), &original).expect("gzip");
        let payload = find_payload(&compressed).expect("gzip magic");
        let unpacked = decompress(payload.compression, payload.stream).expect("decompressed");
        assert_eq!(unpacked, original);
    }
}
