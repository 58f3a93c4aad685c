//! `top`'s live screen, drawn with ratatui on crossterm.
//!
//! ratatui keeps the last frame and writes only the cells that changed,
//! so a refresh never blanks the screen (no flicker), and it sizes each
//! frame to the terminal as it is now (a resized window is redrawn at
//! once). The terminal is put back as it was (raw mode off, the main
//! screen, the cursor shown) when the screen is dropped, which every way
//! out of `top` does, and by ratatui's panic hook on a panic.

use std::{io, time::Duration};

use ratatui::{
    DefaultTerminal, Frame,
    crossterm::{
        cursor::Show,
        event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
        execute,
    },
    layout::{Alignment, Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Cell, Paragraph, Row as TableRow, Table},
};

use super::{
    Column, Row, RowsBy, sort,
    table::{self, Interval},
};

/// What a key asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    Nothing,
    Quit,
}

/// The terminal in raw mode on its alternate screen, and what it shows.
pub struct Screen {
    terminal: DefaultTerminal,
    rows: Vec<Row>,
    interval: Option<Interval>,
    sort: Column,
    by: RowsBy,
    /// Shown until the first refresh.
    waiting: String,
}

impl Screen {
    /// Takes over the terminal.
    pub fn open(sort: Column, by: RowsBy, waiting: String) -> io::Result<Self> {
        let terminal = ratatui::try_init().inspect_err(|_| restore())?;
        let mut screen = Self {
            terminal,
            rows: Vec::new(),
            interval: None,
            sort,
            by,
            waiting,
        };
        screen.draw()?;
        Ok(screen)
    }

    /// Shows the rows of a new interval.
    pub fn show(&mut self, mut rows: Vec<Row>, interval: Interval) -> io::Result<()> {
        sort(&mut rows, self.sort);
        self.rows = rows;
        self.interval = Some(interval);
        self.draw()
    }

    /// Takes the keys pressed (and resizes) since last asked, without
    /// waiting: `q`, Esc or Ctrl-C quit; `<` and `>` (or the arrows)
    /// change the sort column.
    pub fn keys(&mut self) -> io::Result<Asked> {
        let mut redraw = false;
        while event::poll(Duration::ZERO)? {
            match event::read()? {
                Event::Key(key) if key.kind != KeyEventKind::Release => match key.code {
                    KeyCode::Char('q' | 'Q') | KeyCode::Esc => return Ok(Asked::Quit),
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(Asked::Quit);
                    }
                    KeyCode::Char('<') | KeyCode::Left => {
                        self.resort(false);
                        redraw = true;
                    }
                    KeyCode::Char('>') | KeyCode::Right => {
                        self.resort(true);
                        redraw = true;
                    }
                    _ => {}
                },
                Event::Resize(..) => redraw = true,
                _ => {}
            }
        }
        if redraw {
            self.draw()?;
        }
        Ok(Asked::Nothing)
    }

    fn resort(&mut self, forward: bool) {
        self.sort = self.sort.step(forward, self.by);
        sort(&mut self.rows, self.sort);
    }

    fn draw(&mut self) -> io::Result<()> {
        let Self {
            terminal,
            rows,
            interval,
            sort,
            by,
            waiting,
        } = self;
        terminal.draw(|frame| render(frame, rows, interval.as_ref(), *sort, *by, waiting))?;
        Ok(())
    }
}

/// Space between columns.
const SPACING: usize = 1;

/// A cell's line, numbers right-aligned.
fn aligned(column: Column, text: String) -> Line<'static> {
    let line = Line::from(text);
    if table::width(column).is_some() {
        line.alignment(Alignment::Right)
    } else {
        line
    }
}

/// Every column's width in `width` characters: the numbers' own; of what
/// is left, the client and then the kind what their widest shown cell
/// needs, up to two fifths of what is left at their turn, and the server
/// the rest.
fn end_widths(columns: &[Column], rows: &[Row], width: usize) -> Vec<usize> {
    let numbers: usize = columns.iter().filter_map(|c| table::width(*c)).sum();
    let mut left = width.saturating_sub(numbers + SPACING * (columns.len() - 1));
    let mut fitted = |column: Column| {
        let widest = rows
            .iter()
            .map(|row| table::cell(row, column, 1.0).chars().count())
            .max()
            .unwrap_or(0)
            .max(table::title(column).len());
        let width = widest.min((left * 2 / 5).max(6));
        left = left.saturating_sub(width + SPACING);
        width
    };
    let client = fitted(Column::Client);
    let kind = if columns.contains(&Column::Kind) {
        fitted(Column::Kind)
    } else {
        0
    };
    let server = left.max(6);
    columns
        .iter()
        .map(|column| match (table::width(*column), column) {
            (Some(width), _) => width,
            (None, Column::Client) => client,
            (None, Column::Kind) => kind,
            (None, _) => server,
        })
        .collect()
}

fn render(
    frame: &mut Frame,
    rows: &[Row],
    interval: Option<&Interval>,
    sort: Column,
    by: RowsBy,
    waiting: &str,
) {
    let [status, body, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let status_text = match interval {
        Some(interval) => format!(
            "sockspy top {}  {}",
            table::time_text(interval, true),
            table::status_line(rows, interval, by)
        ),
        None => waiting.to_owned(),
    };
    frame.render_widget(Paragraph::new(status_text), status);
    // Only the rows that fit are made into cells.
    let shown = &rows[..rows.len().min(usize::from(body.height.saturating_sub(1)))];
    let secs = interval.map_or(1.0, |interval| interval.secs);
    let columns = Column::shown(by);
    let widths = end_widths(&columns, shown, usize::from(body.width));
    let header = TableRow::new(columns.iter().map(|column| {
        let cell = Cell::from(aligned(*column, table::title(*column).to_owned()));
        if *column == sort {
            cell.style(Style::new().add_modifier(Modifier::REVERSED))
        } else {
            cell
        }
    }))
    .style(Style::new().add_modifier(Modifier::BOLD));
    let lines = shown.iter().map(|row| {
        TableRow::new(columns.iter().zip(&widths).map(|(column, width)| {
            let text = table::fit(&table::cell(row, *column, secs), *width);
            Cell::from(aligned(*column, text))
        }))
    });
    let constraints = widths.iter().map(|width| Constraint::Length(*width as u16));
    frame.render_widget(
        Table::new(lines, constraints)
            .header(header)
            .column_spacing(SPACING as u16),
        body,
    );
    let help_text = format!("q quit  < > sort (by {})  {} rows", sort.name(), rows.len());
    frame.render_widget(Paragraph::new(help_text), help);
}

/// Raw mode off, the main screen back, the cursor shown.
fn restore() {
    ratatui::restore();
    let _ = execute!(io::stdout(), Show);
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}
