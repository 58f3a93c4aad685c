//! Output: resolved events shown, recorded and read back.
//!
//! Takes resolved events; prints them as a text table or JSON Lines
//! (`print`), or writes them to a pcapng recording (`record`, blocks from
//! `pcapng`) that reads back into the same events. Both keep what they
//! rendered of a busy socket's side (`side`). `conversation` prints
//! exchanges and summaries; `top` turns them into its table of the
//! busiest connections.

pub mod conversation;
pub mod pcapng;
pub mod print;
pub mod record;
pub mod side;
pub mod top;
