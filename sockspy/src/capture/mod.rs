//! Capture: from the kernel to decoded records.
//!
//! Takes the running kernel's BTF (`btf`, `offsets`: where the fields the
//! programs read are) and loads and attaches the kernel programs
//! (`loader`); hands on each ring buffer record decoded and checked
//! (`events`), in the order the kernel wrote them.

pub mod btf;
pub mod events;
pub mod loader;
pub mod offsets;
