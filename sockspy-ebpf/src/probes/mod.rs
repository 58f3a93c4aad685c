//! The hooks, one file per area. Each entry point is a thin wrapper around a
//! `try_*` function; a hook never fails the traced program, it only counts.

pub mod data;
pub mod functions;
pub mod inet;
pub mod process;
pub mod syscalls;
