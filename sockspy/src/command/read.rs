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
    conversation::Conversation,
    filter::Filter,
    output::{
        conversation::Output,
        print::{Clock, PayloadStyle, Printer},
        record::{Item, Reader},
    },
};

/// The printer and what it printed.
struct Shown {
    printer: Option<Printer>,
    printed: u64,
    count: Option<u64>,
}

impl Shown {
    /// Prints one thing; breaks when the reader went away or `-c` is reached.
    fn show(&mut self, out: &mut impl Write, output: Output<'_>) -> Result<(), ()> {
        let Some(printer) = self.printer.as_mut() else {
            return Ok(());
        };
        self.printed += 1;
        output.print(printer, out).map_err(|_| ())?;
        if self.count.is_some_and(|count| self.printed >= count) {
            return Err(());
        }
        Ok(())
    }

    /// Prints what the conversations found.
    fn found(&mut self, out: &mut impl Write, conversation: &mut Conversation) -> Result<(), ()> {
        let found = conversation.take();
        let shown = found
            .iter()
            .try_for_each(|finding| self.show(out, Output::Finding(finding)));
        conversation.give_back(found);
        shown
    }
}

/// Reads the files in order; stops at the first damaged one.
pub fn run(options: &ReadOptions) -> anyhow::Result<ExitCode> {
    let mut out = BufWriter::with_capacity(1 << 16, io::stdout());
    let mut shown = Shown {
        printer: None,
        printed: 0,
        count: options.count,
    };
    let mut conversation = options.conversation.clone().map(Conversation::new);
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
                    let first = shown.printer.is_none();
                    let style = PayloadStyle {
                        captured: section.capture_bytes > 0,
                        hex: options.hex,
                    };
                    let next =
                        shown
                            .printer
                            .insert(Printer::new(options.format, Clock::epoch(), style));
                    let header = match &conversation {
                        _ if !first => Ok(()),
                        Some(c) if !c.calls_too() => next.exchange_header(&mut out),
                        _ => next.header(&mut out),
                    };
                    header.map_err(|_| ())
                }
                Ok(Item::Event(event)) => {
                    if !filter.keeps(&event) {
                        continue;
                    }
                    match &mut conversation {
                        Some(conversation) => {
                            conversation.event(&event);
                            if conversation.calls_too() {
                                shown.show(&mut out, Output::Event(&event))
                            } else {
                                Ok(())
                            }
                            .and_then(|()| shown.found(&mut out, conversation))
                        }
                        None => shown.show(&mut out, Output::Event(&event)),
                    }
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
            // A closed pipe (`sockspy read f | head`) or `-c` ends the
            // reading quietly.
            if written.is_err() {
                let _ = out.flush();
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    // What the conversations still hold: open exchanges, and a summary of
    // each connection open when the recording ended.
    if let Some(conversation) = &mut conversation {
        conversation.finish();
        let _ = shown.found(&mut out, conversation);
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
