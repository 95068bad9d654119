//! crust: checkpoint/restore of Linux process trees, in CRIU's image format.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod arch;
pub mod cancel;
pub mod cgroups;
pub mod dump;
pub mod error;
pub mod explain;
pub mod inventory;
pub mod files;
pub mod images;
pub mod mem;
pub mod netlock;
pub mod notify;
pub mod migrate;
pub mod proc;
pub mod ranges;
pub mod progress;
pub mod show;
pub mod state;
pub mod task;
pub mod ptrace;
pub mod remote;
pub mod restore;
pub mod track;
pub mod tree;

pub use error::{Error, Result};
