//! sockspy: live socket tracing with peer resolution.
//!
//! Data flows one way, and the folders follow it:
//! - [`capture`]: the kernel programs, loaded and attached; their ring
//!   buffer's records, decoded;
//! - [`table`]: the socket table, seeded from /proc and sock_diag and kept
//!   current from the records, which it turns into resolved events (both
//!   ends named);
//! - [`output`]: resolved events printed (text, JSON) or recorded (pcapng),
//!   and read back;
//! - [`command`]: one file per subcommand, each wiring the stages above.
//!
//! `cli` validates arguments first; `filter` applies what the user asked
//! to see; `idmap` holds the maps keyed by kernel ids that every stage uses.

mod capture;
mod cli;
mod command;
mod conversation;
mod filter;
mod idmap;
mod output;
#[cfg(test)]
mod reference;
mod table;

use std::process::ExitCode;

use clap::Parser;

use crate::{
    capture::loader::Unfit,
    cli::{Cli, Command},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Trace(args) => {
            if let Err(err) = args.validate() {
                err.exit();
            }
            match args.read_options() {
                Some(read) => command::read::run(&read),
                None => command::trace::run(&args.options()),
            }
        }
        Command::Read(args) => command::read::run(&args.options()),
        Command::Top(args) => {
            if let Err(err) = args.validate() {
                err.exit();
            }
            command::top::run(&args.options())
        }
        Command::Check(args) => Ok(command::check::run(args.backend.backend())),
        Command::Pairs(args) => command::pairs::run(&args.select.selection(), args.json),
        Command::Completions(args) => args.run(),
    };
    result.unwrap_or_else(|err| {
        eprintln!("sockspy: {err:#}");
        // An environment that cannot trace, or an output file that cannot be
        // created, is a usage problem, not a crash.
        if err.downcast_ref::<Unfit>().is_some()
            || err.downcast_ref::<output::record::OutputError>().is_some()
        {
            ExitCode::from(2)
        } else {
            ExitCode::FAILURE
        }
    })
}
