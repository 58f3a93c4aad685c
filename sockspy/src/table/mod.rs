//! The socket table: from decoded records to resolved events.
//!
//! Takes decoded records in ring order and what the kernel says about
//! sockets that existed before the trace (`procfs`, `diag`); keeps a
//! record back until the record that names its peer has come (`hold`);
//! hands on events with both ends named, process, descriptor and socket
//! (`resolve`), in ring order.

pub mod container;
pub mod diag;
pub mod hold;
pub mod procfs;
pub mod resolve;
