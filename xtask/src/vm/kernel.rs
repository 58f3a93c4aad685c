//! The guest kernels: Debian's own packages, fetched with apt through a
//! private source list and state (this machine's /etc/apt is left as it
//! is, and bookworm-backports is not in it), unpacked with `dpkg -x` and
//! never installed. Everything lives under `target/vm/`; a kernel already
//! unpacked there is used as it is, without asking the network.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use super::bzimage;
use crate::exec;

/// A kernel of the matrix: a Debian series and the suite that has it.
pub struct Kernel {
    /// What `--kernel` calls it, and the start of its version.
    pub name: &'static str,
    suite: &'static str,
}

/// Debian 12's own kernel, and the newer one its backports offer.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        name: "6.1",
        suite: "bookworm",
    },
    Kernel {
        name: "6.12",
        suite: "bookworm-backports",
    },
];

const MIRROR: &str = "http://deb.debian.org/debian";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The metapackage that depends on the suite's current kernel image.
const METAPACKAGE: &str = "linux-image-amd64";

/// A kernel unpacked and ready to boot.
pub struct Unpacked {
    /// The Debian package it came from.
    pub package: String,
    /// `uname -r` in the guest, and the name of its modules directory.
    pub release: String,
    /// The uncompressed ELF kernel.
    pub vmlinux: PathBuf,
    /// `lib/modules/RELEASE` of the package.
    pub modules: PathBuf,
}

impl Kernel {
    /// Fetches and unpacks this kernel under `vm_dir`, unless that was
    /// done before, and extracts its `vmlinux`.
    pub fn prepare(&self, vm_dir: &Path) -> Result<Unpacked> {
        let dir = vm_dir.join(self.name);
        let root = dir.join("root");
        // Written last, so that an interrupted fetch is taken up again.
        let stamp = dir.join("package");
        let package = match fs::read_to_string(&stamp) {
            Ok(package) => package.trim().to_owned(),
            Err(_) => {
                let package = self
                    .fetch(vm_dir, &dir, &root)
                    .with_context(|| format!("fetching Debian's {} kernel", self.name))?;
                fs::write(&stamp, format!("{package}\n"))?;
                package
            }
        };
        let release = only_entry(&root.join("lib/modules"))?;
        let vmlinux = dir.join("vmlinux");
        if !vmlinux.exists() {
            let image = root.join("boot").join(format!("vmlinuz-{release}"));
            eprintln!("xtask vm-test: extracting vmlinux from {}", image.display());
            bzimage::extract_vmlinux(&image, &vmlinux)?;
        }
        let modules = root.join("lib/modules").join(&release);
        Ok(Unpacked {
            package,
            release,
            vmlinux,
            modules,
        })
    }

    /// Downloads the suite's current kernel package into `dir` (unless
    /// it is there) and unpacks it into `root`; returns its name.
    fn fetch(&self, vm_dir: &Path, dir: &Path, root: &Path) -> Result<String> {
        let apt = PrivateApt::new(&vm_dir.join("apt").join(self.suite), self.suite)?;
        exec::run_quiet(apt.get().arg("update"))?;
        let shown = exec::stdout(apt.command("apt-cache").args([
            "show",
            "--no-all-versions",
            METAPACKAGE,
        ]))?;
        let package = image_package(&shown, self.name)
            .with_context(|| format!("{METAPACKAGE} in {}", self.suite))?;
        fs::create_dir_all(dir)?;
        let deb = match deb_file(dir, &package)? {
            Some(deb) => deb,
            None => {
                eprintln!("xtask vm-test: downloading {package} ({})", self.suite);
                exec::run_quiet(apt.get().current_dir(dir).args(["download", &package]))?;
                deb_file(dir, &package)?
                    .with_context(|| format!("apt-get download left no {package} .deb"))?
            }
        };
        let partial = dir.join("root.partial");
        if partial.exists() {
            fs::remove_dir_all(&partial)?;
        }
        if root.exists() {
            fs::remove_dir_all(root)?;
        }
        exec::run_quiet(Command::new("dpkg").arg("-x").arg(&deb).arg(&partial))?;
        fs::rename(&partial, root)?;
        Ok(package)
    }
}

/// apt with its own source list, package lists and cache, for one suite.
struct PrivateApt {
    options: Vec<String>,
}

impl PrivateApt {
    fn new(dir: &Path, suite: &str) -> Result<Self> {
        let lists = dir.join("lists");
        let cache = dir.join("cache");
        // apt wants these to exist; it does not create them.
        for needed in [lists.join("partial"), cache.join("archives/partial")] {
            fs::create_dir_all(&needed)
                .with_context(|| format!("creating {}", needed.display()))?;
        }
        let sources = dir.join("sources.list");
        fs::write(
            &sources,
            format!("deb [signed-by={KEYRING}] {MIRROR} {suite} main\n"),
        )?;
        let option = |name: &str, value: &Path| format!("{name}={}", value.display());
        Ok(PrivateApt {
            options: vec![
                option("Dir::Etc::SourceList", &sources),
                option("Dir::Etc::SourceParts", Path::new("/dev/null")),
                option("Dir::State::Lists", &lists),
                option("Dir::Cache", &cache),
                // Downloads go into target/, which the _apt user may not
                // be able to write.
                "APT::Sandbox::User=root".into(),
            ],
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        for option in &self.options {
            cmd.args(["-o", option]);
        }
        cmd
    }

    fn get(&self) -> Command {
        let mut cmd = self.command("apt-get");
        cmd.arg("-q");
        cmd
    }
}

/// The kernel image package that `apt-cache show` says the metapackage
/// depends on, which must belong to `series` (`6.1` names
/// `linux-image-6.1.0-NN-amd64`, `6.12` names `linux-image-6.12.NN+debNN-amd64`).
fn image_package(shown: &str, series: &str) -> Result<String> {
    let depends = shown
        .lines()
        .find_map(|line| line.strip_prefix("Depends:"))
        .context("no Depends line")?;
    let prefix = format!("linux-image-{series}.");
    let names: Vec<&str> = depends
        .split([',', '|'])
        .filter_map(|dependency| dependency.split_whitespace().next())
        .collect();
    match names.iter().find(|name| name.starts_with(&prefix)) {
        Some(name) => Ok((*name).to_owned()),
        None => bail!(
            "it depends on {}, none of them a {series} kernel",
            names.join(", ")
        ),
    }
}

/// The downloaded `.deb` of `package` in `dir`, if there is one.
fn deb_file(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// The name of the one entry in `dir` (the release under lib/modules).
fn only_entry(dir: &Path) -> Result<String> {
    let names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    ensure!(
        names.len() == 1,
        "{} should hold one kernel release, it holds {names:?}",
        dir.display()
    );
    Ok(names.into_iter().next().expect("one"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_image_the_metapackage_depends_on() {
        let bookworm = "Package: linux-image-amd64\nSource: linux-signed-amd64 (6.1.158+1)\n\
                        Version: 6.1.158-1\nDepends: linux-image-6.1.0-56-amd64 (= 6.1.158-1)\n\
                        Description: Linux for 64-bit PCs (meta-package)\n";
        assert_eq!(
            image_package(bookworm, "6.1").unwrap(),
            "linux-image-6.1.0-56-amd64"
        );
        let backports = "Package: linux-image-amd64\nVersion: 6.12.95-1~bpo12+1\n\
                         Depends: linux-image-6.12.95+deb12-amd64 (= 6.12.95-1~bpo12+1)\n";
        assert_eq!(
            image_package(backports, "6.12").unwrap(),
            "linux-image-6.12.95+deb12-amd64"
        );
    }

    #[test]
    fn a_series_is_matched_whole() {
        let backports = "Depends: linux-image-6.12.95+deb12-amd64 (= 6.12.95-1~bpo12+1)\n";
        let err = image_package(backports, "6.1").expect_err("6.12 is not 6.1");
        assert!(
            format!("{err:#}").contains("none of them a 6.1 kernel"),
            "{err:#}"
        );
        assert!(image_package("Package: linux-image-amd64\n", "6.1").is_err());
    }

    #[test]
    fn alternatives_are_considered() {
        let shown = "Depends: initramfs-tools | linux-initramfs-tool, linux-image-6.1.0-9-amd64\n";
        assert_eq!(
            image_package(shown, "6.1").unwrap(),
            "linux-image-6.1.0-9-amd64"
        );
    }
}
