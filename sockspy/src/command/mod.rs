//! One file per subcommand: each takes its validated options from `cli`
//! and wires the pipeline's stages for its job.
//!
//! `trace` runs capture -> table -> output live; `read` (and `trace -r`)
//! runs a recording through output's printers; `pairs` reads the kernel's
//! socket lists once, without eBPF; `check` reports what the kernel offers;
//! `top` runs the live capture (`live`, shared with `trace`) or a recording
//! into a table of the busiest conversations.

pub mod check;
pub mod live;
pub mod pairs;
pub mod read;
pub mod top;
pub mod trace;
