//! crust: checkpoint/restore of Linux process trees, in CRIU's image format.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod arch;
pub mod cancel;
pub mod cgroups;
pub mod dump;
pub mod error;
pub mod explain;
pub mod inventory;
pub mod lazy;
pub mod files;
pub mod images;
pub mod mem;
pub mod netlock;
pub mod notify;
pub mod ns;
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
pub mod rpc;
pub mod track;
pub mod tree;

pub use error::{Error, Result};

/// The criu release whose command line, RPC and images crust answers for, as
/// `criu --version` and the RPC's VERSION request report it. 3.17: the image
/// format crust writes is checked against criu 3.17.1's own (Debian 12's
/// criu and crit), and it is past the 3.16 that CRI-O, containerd and runc's
/// LSM options require. Engines read it as major*10000 + minor*100 + sublevel.
pub const CRIU_COMPAT_VERSION: CriuVersion = CriuVersion { major: 3, minor: 17, sublevel: 0 };

/// A criu version number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CriuVersion {
    pub major: u32,
    pub minor: u32,
    pub sublevel: u32,
}

impl CriuVersion {
    /// The single number engines compare (31700 for 3.17.0).
    pub fn number(self) -> u32 {
        self.major * 10000 + self.minor * 100 + self.sublevel
    }
}

impl std::fmt::Display for CriuVersion {
    /// "X.Y", or "X.Y.Z" with a sublevel, as criu prints its version.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.sublevel {
            0 => write!(f, "{}.{}", self.major, self.minor),
            s => write!(f, "{}.{}.{s}", self.major, self.minor),
        }
    }
}
