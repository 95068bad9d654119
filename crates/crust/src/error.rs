//! Typed errors of the engine. Every error carries what crust was doing, so the CLI
//! can print one line that a user can act on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {err}")]
    Io { context: String, err: std::io::Error },
    /// A kernel call crust made itself failed.
    #[error("{context}: {err}")]
    Sys { context: String, err: nix::Error },
    /// A syscall crust ran inside a task (by ptrace) failed there.
    #[error("task {tid}: {call} failed inside the task: {errno}")]
    InTask { tid: i32, call: String, errno: nix::errno::Errno },
    /// A malformed, truncated or unexpected image, located by file and byte offset.
    #[error("{}: at offset {offset}: {what}", file.display())]
    Image {
        file: PathBuf,
        offset: u64,
        what: String,
    },
    /// Something in the target crust does not handle yet; the message names it.
    #[error("{0}")]
    Unsupported(String),
    /// The request itself cannot be carried out (no such pid, bad argument, ...).
    #[error("{0}")]
    Invalid(String),
    /// crust was asked to stop (a signal, or the death of its parent).
    #[error("interrupted: crust was asked to stop, and put everything back as it was")]
    Cancelled,
}

pub type Result<T> = std::result::Result<T, Error>;

/// Attach a description of the operation to low-level errors.
pub trait Context<T> {
    fn ctx<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn ctx<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|err| Error::Io { context: f().into(), err })
    }
}

impl<T> Context<T> for nix::Result<T> {
    fn ctx<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|err| Error::Sys { context: f().into(), err })
    }
}

/// rustix's errors read as nix's: the same errno, the same message.
impl<T> Context<T> for rustix::io::Result<T> {
    fn ctx<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::Sys { context: f().into(), err: nix::errno::Errno::from_raw(e.raw_os_error()) })
    }
}
