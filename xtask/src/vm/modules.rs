//! The few kernel modules the guest loads before it can reach the host's
//! files (9p over virtio), with what they depend on, in load order.
//!
//! The Debian package ships no `modules.dep` (depmod makes it when the
//! package is installed, which it never is here), so the dependencies are
//! read where depmod reads them: the `depends=` entry of each module's
//! `.modinfo` ELF section.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use super::{
    bzimage::{self, Compression},
    elf,
};

/// A kernel's modules directory (`lib/modules/RELEASE`).
pub struct Modules {
    /// Module name (with `_`, as the kernel names it) to its file.
    files: HashMap<String, PathBuf>,
    /// Names of the modules built into the kernel.
    builtin: Vec<String>,
}

/// A module ready for `insmod`: its name and its uncompressed ELF bytes.
pub struct Module {
    pub name: String,
    pub elf: Vec<u8>,
}

impl Modules {
    pub fn open(dir: &Path) -> Result<Self> {
        let mut files = HashMap::new();
        index(&dir.join("kernel"), &mut files)?;
        let builtin_list = dir.join("modules.builtin");
        let builtin = fs::read_to_string(&builtin_list)
            .with_context(|| format!("reading {}", builtin_list.display()))?
            .lines()
            .filter_map(|line| module_name(Path::new(line)))
            .collect();
        Ok(Modules { files, builtin })
    }

    /// `wanted` and everything they need, each after its dependencies,
    /// leaving out what is built into the kernel.
    pub fn load_order(&self, wanted: &[&str]) -> Result<Vec<Module>> {
        let mut elves = HashMap::new();
        let order = load_order(wanted, |name| {
            let name = normalize(name);
            if self.builtin.contains(&name) {
                return Ok(None);
            }
            let file = self
                .files
                .get(&name)
                .with_context(|| format!("module {name} is neither in the package nor built in"))?;
            let elf = read_module(file)?;
            let depends = depends(&elf).with_context(|| format!("in {}", file.display()))?;
            elves.insert(name, elf);
            Ok(Some(depends))
        })?;
        Ok(order
            .into_iter()
            .map(|name| {
                let elf = elves.remove(&name).expect("each listed module was read");
                Module { name, elf }
            })
            .collect())
    }
}

/// Module names use `_` where file names may use `-`.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// `9pnet_virtio` for `kernel/net/9p/9pnet_virtio.ko.xz`.
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let (stem, _) = file.split_once(".ko")?;
    Some(normalize(stem))
}

fn index(dir: &Path, files: &mut HashMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index(&path, files)?;
        } else if let Some(name) = module_name(&path) {
            files.insert(name, path);
        }
    }
    Ok(())
}

/// A module file's ELF, decompressed when Debian shipped it compressed
/// (`.ko.xz` since 6.x backports; busybox's insmod takes plain ELF only).
fn read_module(file: &Path) -> Result<Vec<u8>> {
    let bytes = fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let name = file.to_string_lossy();
    let compression = if name.ends_with(".ko.xz") {
        Compression::Xz
    } else if name.ends_with(".ko.zst") {
        Compression::Zstd
    } else if name.ends_with(".ko.gz") {
        Compression::Gzip
    } else {
        return Ok(bytes);
    };
    bzimage::decompress(compression, &bytes).with_context(|| format!("unpacking {name}"))
}

/// Orders `wanted` and their dependencies so that each comes after the
/// modules it needs. `depends` gives a module's direct dependencies, or
/// `None` for one that needs no loading (built in).
fn load_order(
    wanted: &[&str],
    mut depends: impl FnMut(&str) -> Result<Option<Vec<String>>>,
) -> Result<Vec<String>> {
    fn visit(
        name: &str,
        depends: &mut dyn FnMut(&str) -> Result<Option<Vec<String>>>,
        visiting: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<()> {
        let name = normalize(name);
        if order.contains(&name) {
            return Ok(());
        }
        if visiting.contains(&name) {
            bail!(
                "modules depend on each other in a cycle: {}",
                visiting.join(" -> ")
            );
        }
        let Some(needs) = depends(&name)? else {
            return Ok(());
        };
        visiting.push(name.clone());
        for need in &needs {
            visit(need, depends, visiting, order)?;
        }
        visiting.pop();
        order.push(name);
        Ok(())
    }
    let mut order = Vec::new();
    for name in wanted {
        visit(name, &mut depends, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

/// The `depends=` entry of a module's `.modinfo` section: comma-separated
/// module names, empty for none.
fn depends(elf: &[u8]) -> Result<Vec<String>> {
    let modinfo = elf::section(elf, ".modinfo")?.context("no .modinfo section: not a module")?;
    Ok(modinfo
        .split(|&byte| byte == 0)
        .find_map(|entry| entry.strip_prefix(b"depends="))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|name| !name.is_empty())
                .map(normalize)
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 file with a section-name table and one `.modinfo`.
    fn module_elf(modinfo: &[u8]) -> Vec<u8> {
        let names = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let names_at = elf.len();
        elf.extend_from_slice(names);
        let modinfo_at = elf.len();
        elf.extend_from_slice(modinfo);
        let table = elf.len();
        // Null section, .shstrtab, .modinfo.
        for (name, offset, size) in [
            (0u32, 0usize, 0usize),
            (1, names_at, names.len()),
            (11, modinfo_at, modinfo.len()),
        ] {
            let mut header = [0u8; 64];
            header[..4].copy_from_slice(&name.to_le_bytes());
            header[0x18..0x20].copy_from_slice(&(offset as u64).to_le_bytes());
            header[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&header);
        }
        elf[0x28..0x30].copy_from_slice(&(table as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn reads_depends_from_modinfo() {
        let elf = module_elf(b"license=GPL\0depends=9pnet,netfs\0name=9p\0");
        assert_eq!(depends(&elf).unwrap(), ["9pnet", "netfs"]);
        let alone = module_elf(b"license=GPL\0depends=\0name=netfs\0");
        assert!(depends(&alone).unwrap().is_empty());
        assert!(depends(b"\x7fELF\x02\x01").is_err(), "truncated");
        assert!(depends(b"MZ").is_err(), "not ELF");
    }

    #[test]
    fn orders_dependencies_first_once_each_without_builtins() {
        let graph: HashMap<&str, Option<Vec<&str>>> = HashMap::from([
            ("9p", Some(vec!["9pnet", "netfs"])),
            ("9pnet_virtio", Some(vec!["9pnet", "virtio"])),
            ("9pnet", Some(vec![])),
            ("netfs", Some(vec![])),
            ("virtio", None),
        ]);
        let order = load_order(&["9p", "9pnet-virtio"], |name| {
            Ok(graph[name]
                .as_ref()
                .map(|needs| needs.iter().map(|n| n.to_string()).collect()))
        })
        .unwrap();
        assert_eq!(order, ["9pnet", "netfs", "9p", "9pnet_virtio"]);
    }

    #[test]
    fn a_cycle_is_an_error() {
        let err = load_order(&["a"], |name| {
            Ok(Some(vec![if name == "a" { "b" } else { "a" }.to_string()]))
        })
        .expect_err("cycle");
        assert!(format!("{err:#}").contains("a -> b"), "{err:#}");
    }

    #[test]
    fn names_modules_by_their_file() {
        let name = |path: &str| module_name(Path::new(path));
        assert_eq!(
            name("kernel/net/9p/9pnet_virtio.ko.xz").as_deref(),
            Some("9pnet_virtio")
        );
        assert_eq!(
            name("kernel/fs/fuse/virtio-fs.ko").as_deref(),
            Some("virtio_fs")
        );
        assert_eq!(name("modules.order"), None);
    }
}
