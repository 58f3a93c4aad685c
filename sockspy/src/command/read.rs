//! `sockspy read` (and `trace -r`): print a recording as the live view did.
//!
//! Events come back resolved, so the same printers print them, with the
//! payload rendering the recording was made with. Damage stops the reading
//! with one line naming the file and offset, after everything before it was
//! printed; a file that merely ends inside its last block (a capture that
//! was killed) is a warning: every whole event in it was printed.

use std::{
    io::{self, BufWriter, Read, Write},
    path::Path,
    process::ExitCode,
};

use crate::{
    cli::ReadOptions,
    filter::Filter,
    output::print::{Clock, PayloadStyle, Printer},
    output::record::{Item, Reader},
};

/// Reads the files in order; stops at the first damaged one.
pub fn run(options: &ReadOptions) -> anyhow::Result<ExitCode> {
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout());
    let mut printer: Option<Printer> = None;
    let mut printed = 0u64;
    let mut filter = Filter::new(options.select.clone());
    for file in &options.files {
        let name = file.display();
        let input = match open(file) {
            Ok(input) => input,
            Err(err) => {
                let _ = out.flush();
                eprintln!("sockspy: cannot read {name}: {err}");
                return Ok(ExitCode::from(2));
            }
        };
        for item in Reader::new(input) {
            let written = match item {
                Ok(Item::Section(section)) => {
                    let first = printer.is_none();
                    let style = PayloadStyle {
                        captured: section.capture_bytes > 0,
                        hex: options.hex,
                    };
                    let next = printer.insert(
                        Printer::new(options.format, Clock::epoch(), style).wide(options.wide),
                    );
                    if first { next.header(&mut out) } else { Ok(()) }
                }
                Ok(Item::Event(event)) => {
                    if !filter.keeps(&event) {
                        continue;
                    }
                    let Some(printer) = printer.as_mut() else {
                        continue;
                    };
                    printed += 1;
                    printer.event(&mut out, &event)
                }
                Err(err) => {
                    if out.flush().is_err() {
                        return Ok(ExitCode::SUCCESS);
                    }
                    if err.torn {
                        eprintln!(
                            "sockspy: warning: {name} ends inside a record ({err}); \
                             the capture was cut short, every complete event was printed"
                        );
                        break;
                    }
                    eprintln!("sockspy: {name}: {err}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            // A closed pipe (`sockspy read f | head`) ends the reading quietly.
            if written.is_err() {
                return Ok(ExitCode::SUCCESS);
            }
            if options.count.is_some_and(|count| printed >= count) {
                let _ = out.flush();
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

/// A recording to read; `-` is stdin.
fn open(file: &Path) -> io::Result<Box<dyn Read>> {
    if file == Path::new("-") {
        Ok(Box::new(io::stdin().lock()))
    } else {
        let file = std::fs::File::open(file)?;
        Ok(Box::new(io::BufReader::with_capacity(1 << 16, file)))
    }
}
