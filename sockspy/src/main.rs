//! sockspy: live socket tracing with peer resolution.
//!
//! Data flows one way: `loader` attaches the kernel programs, `trace` reads
//! their ring buffer, `events` decodes records, `hold` keeps a record back
//! until the record that names its peer has come, `resolve` names who is
//! who (seeded by `procfs`), and `output` prints or `record` writes a pcapng
//! recording (blocks from `pcapng`), which `replay` prints back later.
//! `cli` validates arguments first; `check` reports what the kernel offers.

mod btf;
mod check;
mod cli;
mod diag;
mod events;
mod filter;
mod hold;
mod idmap;
mod loader;
mod offsets;
mod output;
mod pairs;
mod pcapng;
mod procfs;
mod record;
#[cfg(test)]
mod reference;
mod replay;
mod resolve;
mod side;
mod trace;

use std::process::ExitCode;

use clap::Parser;

use crate::{
    cli::{Cli, Command},
    loader::Unfit,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Trace(args) => {
            if let Err(err) = args.validate() {
                err.exit();
            }
            match args.read_options() {
                Some(read) => replay::run(&read),
                None => trace::run(&args.options()),
            }
        }
        Command::Read(args) => replay::run(&args.options()),
        Command::Check(args) => Ok(check::run(args.backend.backend())),
        Command::Pairs(args) => pairs::run(&args.select.selection(), args.json),
        Command::Completions(args) => args.run(),
    };
    result.unwrap_or_else(|err| {
        eprintln!("sockspy: {err:#}");
        // An environment that cannot trace, or an output file that cannot be
        // created, is a usage problem, not a crash.
        if err.downcast_ref::<Unfit>().is_some()
            || err.downcast_ref::<record::OutputError>().is_some()
        {
            ExitCode::from(2)
        } else {
            ExitCode::FAILURE
        }
    })
}
