//! Terminal output shared by the `sealer` CLI and the installer stub: short forms of sizes and
//! digests ([`format`]), the one byte-progress renderer ([`progress`]), the install's host lines and
//! report table ([`install`]), the run log file ([`log`]) and the one-sentence error ([`error`]).
//!
//! It only prints: it calls no engine, store or registry function and decides nothing. The library
//! reports what it does through events; these modules turn them into text.

pub mod error;
pub mod format;
pub mod install;
pub mod log;
pub mod progress;

pub use format::{human_bytes, short_digest};
