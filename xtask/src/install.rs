//! `cargo xtask man` and `cargo xtask install`: the man pages in docs/man,
//! and sockspy with its pages and shell completions under a prefix.
//!
//! The pages are rendered from sockspy's clap definitions by a unit test
//! of the sockspy crate (`reference::man_pages_are_current`), which
//! compares them with docs/man, or writes them when `SOCKSPY_WRITE_MAN` is
//! set: one renderer for the check and the regeneration.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};
use clap::Args;

use crate::exec;

/// Options of `cargo xtask install`.
#[derive(Args)]
pub struct Options {
    /// Where to install: PREFIX/bin, PREFIX/share/man/man1 and the shells'
    /// completion directories under PREFIX/share
    #[arg(long, value_name = "PREFIX", default_value = "/usr/local")]
    prefix: PathBuf,
}

/// Each shell sockspy writes completions for, and where under PREFIX/share
/// that shell looks for them.
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "bash-completion/completions/sockspy"),
    ("zsh", "zsh/site-functions/_sockspy"),
    ("fish", "fish/vendor_completions.d/sockspy.fish"),
];

/// Regenerates docs/man from the CLI definitions.
pub fn man(root: &Path, cargo: &mut Command) -> Result<()> {
    exec::run(
        cargo
            .args(["test", "--release", "--quiet", "-p", "sockspy"])
            .args(["reference::man_pages_are_current", "--", "--exact"])
            .env("SOCKSPY_WRITE_MAN", "1"),
    )?;
    eprintln!("xtask man: wrote {}", root.join("docs/man").display());
    Ok(())
}

/// Copies the built sockspy, its man pages and its completions under the
/// prefix.
pub fn install(root: &Path, sockspy: &Path, options: &Options) -> Result<()> {
    let prefix = &options.prefix;
    let bin = prefix.join("bin/sockspy");
    copy(sockspy, &bin)?;
    let man1 = prefix.join("share/man/man1");
    for entry in fs::read_dir(root.join("docs/man")).context("reading docs/man")? {
        let page = entry?.path();
        copy(
            &page,
            &man1.join(page.file_name().context("a page without a name")?),
        )?;
    }
    for (shell, place) in COMPLETIONS {
        let script = exec::stdout(Command::new(sockspy).args(["completions", shell]))?;
        write(&prefix.join("share").join(place), script.as_bytes())?;
    }
    eprintln!(
        "xtask install: {}, its man pages in {} and completions for bash, zsh and fish",
        bin.display(),
        man1.display()
    );
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    let contents = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write(to, &contents)?;
    let mode = fs::metadata(from)?.permissions();
    fs::set_permissions(to, mode).with_context(|| format!("setting the mode of {}", to.display()))
}

fn write(to: &Path, contents: &[u8]) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(to, contents).with_context(|| format!("writing {}", to.display()))
}
