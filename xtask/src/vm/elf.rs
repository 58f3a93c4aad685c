//! Just enough ELF reading for the guest's files: a section's contents,
//! to read a module's `.modinfo` and tell a static program from one that
//! needs a dynamic loader.

use anyhow::{Context, Result, bail};

/// Whether `elf` runs without a dynamic loader (it has no `.interp`).
pub fn is_static(elf: &[u8]) -> Result<bool> {
    Ok(section(elf, ".interp")?.is_none())
}

/// The contents of the section called `name` in a little-endian ELF64
/// file, the only kind an x86-64 kernel loads.
pub fn section<'a>(elf: &'a [u8], name: &str) -> Result<Option<&'a [u8]>> {
    let short = || anyhow::anyhow!("truncated ELF file");
    let u16_at = |at: usize| -> Result<usize> {
        let bytes = elf.get(at..at + 2).ok_or_else(short)?;
        Ok(usize::from(u16::from_le_bytes([bytes[0], bytes[1]])))
    };
    let u64_at = |at: usize| -> Result<usize> {
        let bytes = elf.get(at..at + 8).ok_or_else(short)?;
        let value = u64::from_le_bytes(bytes.try_into().expect("eight bytes"));
        usize::try_from(value).context("ELF offset out of range")
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        bail!("not a little-endian 64-bit ELF file");
    }
    // e_shoff, e_shentsize, e_shnum, e_shstrndx of the ELF64 header.
    let (table, entry_size, count, names_index) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let header = |index: usize| table + index * entry_size;
    // sh_name, sh_offset and sh_size of a section header.
    let contents = |index: usize| -> Result<&'a [u8]> {
        let (offset, size) = (u64_at(header(index) + 0x18)?, u64_at(header(index) + 0x20)?);
        elf.get(offset..offset + size).ok_or_else(short)
    };
    let names = contents(names_index)?;
    for index in 0..count {
        let at = elf
            .get(header(index)..header(index) + 4)
            .ok_or_else(short)?;
        let name_at = u32::from_le_bytes(at.try_into().expect("four bytes")) as usize;
        let found = names
            .get(name_at..)
            .and_then(|rest| rest.split(|&byte| byte == 0).next());
        if found == Some(name.as_bytes()) {
            return contents(index).map(Some);
        }
    }
    Ok(None)
}
