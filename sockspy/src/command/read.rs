//! `sockspy read` (and `trace -r`): print a recording as the live view did.
//!
//! Events come back resolved, so the same printers print them, with the
//! payload rendering the recording was made with. Damage stops the reading
//! with one line naming the file and offset, after everything before it was
//! printed; a file that merely ends inside its last block (a capture that
//! was killed) is a warning: every whole event in it was printed.

use std::{
    io::{self, BufWriter, Read, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

use crate::{
    cli::ReadOptions,
    conversation::{CallDecoding, Conversation},
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
    let each = |item: Item, out: &mut BufWriter<io::Stdout>| match item {
        Item::Section(section) => {
            let first = shown.printer.is_none();
            let style = PayloadStyle {
                captured: section.capture_bytes > 0,
                hex: options.hex,
            };
            let next = shown
                .printer
                .insert(Printer::new(options.format, Clock::epoch(), style).wide(options.wide));
            match &conversation {
                _ if !first => Ok(()),
                Some(c) if !c.calls_too() => next.exchange_header(out),
                _ => next.header(out),
            }
            .map_err(|_| ())
        }
        Item::Event(event) => {
            if !filter.keeps(&event) {
                return Ok(());
            }
            match &mut conversation {
                Some(conversation) => {
                    conversation.event(&event);
                    if conversation.calls_too() {
                        shown.show(out, Output::Call(&event, conversation.decoded()))
                    } else {
                        Ok(())
                    }
                    .and_then(|()| shown.found(out, conversation))
                }
                None => shown.show(out, Output::Call(&event, &CallDecoding::NONE)),
            }
        }
    };
    if let Some(code) = each_item(&options.files, &mut out, each) {
        return Ok(code);
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

/// Hands every item of the files, in order, to `each`, which writes to
/// `out`. A file that cannot be opened or is damaged ends the reading
/// with one line on stderr (after `out` is flushed) and the exit status
/// to end with; so does `each` failing to write (a closed pipe, `-c`
/// reached: a clean end). A file that ends inside its last record is a
/// warning, and the next file is read.
pub fn each_item<W: Write>(
    files: &[PathBuf],
    out: &mut W,
    mut each: impl FnMut(Item, &mut W) -> Result<(), ()>,
) -> Option<ExitCode> {
    for file in files {
        let name = file.display();
        let input = match open(file) {
            Ok(input) => input,
            Err(err) => {
                let _ = out.flush();
                eprintln!("sockspy: cannot read {name}: {err}");
                return Some(ExitCode::from(2));
            }
        };
        for item in Reader::new(input) {
            let written = match item {
                Ok(item) => each(item, out),
                Err(err) => {
                    if out.flush().is_err() {
                        return Some(ExitCode::SUCCESS);
                    }
                    if err.torn {
                        eprintln!(
                            "sockspy: warning: {name} ends inside a record ({err}); \
                             the capture was cut short, every complete event was printed"
                        );
                        break;
                    }
                    eprintln!("sockspy: {name}: {err}");
                    return Some(ExitCode::FAILURE);
                }
            };
            // A closed pipe (`sockspy read f | head`) or `-c` ends the
            // reading quietly.
            if written.is_err() {
                let _ = out.flush();
                return Some(ExitCode::SUCCESS);
            }
        }
    }
    None
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
