//! Typed errors of the engine. Every error carries what crust was doing, so the CLI
//! can print one line that a user can act on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call crust made itself failed (reading /proc, writing an image...).
    #[error("{context}: {err}")]
    Io { context: String, err: std::io::Error },
    /// A kernel call crust made itself failed.
    #[error("{context}: {err}")]
    Sys { context: String, err: nix::Error },
    /// A syscall crust ran inside a task (by ptrace) failed there.
    #[error("task {tid}: {call} failed inside the task: {errno}")]
    InTask { tid: i32, call: String, errno: nix::errno::Errno },
    /// A task under ptrace did what crust did not expect of it (another stop,
    /// an exit, a syscall that ended elsewhere).
    #[error("task {tid}: {what}")]
    Ptrace { tid: i32, what: String },
    /// A malformed, truncated or unexpected image, located by file and byte offset.
    #[error("{}: at offset {offset}: {what}", file.display())]
    Image { file: PathBuf, offset: u64, what: String },
    /// State of the target crust does not handle (yet): what it is, and where
    /// (a process, an fd, a file of the images).
    #[error("{place}: {what}")]
    Unsupported { place: String, what: String },
    /// This host cannot restore the images: every problem found, at once.
    #[error("this host cannot restore {}:\n  {}", dir.display(), problems.join("\n  "))]
    Host { dir: PathBuf, problems: Vec<String> },
    /// The other end of a migration broke the protocol, failed, or went away.
    #[error("{0}")]
    Protocol(String),
    /// The request itself cannot be carried out (no such pid, a bad argument,
    /// a pid taken, ...).
    #[error("{0}")]
    Invalid(String),
    /// crust was asked to stop (a signal, or the death of its parent).
    #[error("interrupted: crust was asked to stop, and put everything back as it was")]
    Cancelled,
}

impl Error {
    /// State crust refuses: `place` says where, `what` what (ending in "not
    /// supported yet" or saying why).
    pub fn unsupported(place: impl Into<String>, what: impl Into<String>) -> Error {
        Error::Unsupported { place: place.into(), what: what.into() }
    }

    /// Something wrong with an image as a whole (no offset to point at).
    pub fn image(file: impl Into<PathBuf>, what: impl Into<String>) -> Error {
        Error::Image { file: file.into(), offset: 0, what: what.into() }
    }

    /// An error from a library that reports neither errno nor io::Error
    /// (procfs, serde), as an I/O failure of crust's.
    pub fn io_other(context: impl Into<String>, err: impl std::fmt::Display) -> Error {
        Error::Io { context: context.into(), err: std::io::Error::other(err.to_string()) }
    }
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
