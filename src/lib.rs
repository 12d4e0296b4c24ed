//! overdub: a scriptable multitrack recording daemon for Linux.
//!
//! The module tree mirrors the threads (DESIGN.md §2): `engine` runs in the audio callback,
//! `backend` drives it, `capture` is the disk-writer thread, `store` the SQLite thread, and
//! `control`, `dbus`, `bridge` (HTTP + WebSocket) and `daemon` run on tokio.
#![deny(missing_docs, unsafe_op_in_unsafe_fn)]

pub mod backend;
pub mod bridge;
pub mod capture;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dbus;
pub mod engine;
pub mod store;
