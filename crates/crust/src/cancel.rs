//! Stopping a dump half-way on request, cleanly: a signal handler only sets a
//! flag, and the dump checks it between steps, so it never leaves a task with
//! crust's registers or signal mask, and lets the tree go before it returns.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Ask the running dump to stop. Async-signal-safe.
pub fn request() {
    CANCELLED.store(true, Ordering::SeqCst);
}

/// An error once a stop was requested.
pub fn check() -> Result<()> {
    if CANCELLED.load(Ordering::SeqCst) {
        Err(Error::Cancelled)
    } else {
        Ok(())
    }
}
