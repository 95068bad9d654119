//! A migration with clients attached: the tree's established TCP
//! connections (`crust migrate --tcp-established`) move with it, and their
//! peers, elsewhere, see neither a reset nor a byte lost or repeated.
//!
//! The service address must move too: packets for it must reach the
//! destination once the tree runs there. That is the operator's part (a
//! floating IP moved from one host to the other, a route changed), done from
//! an action script (`--action-script`, criu's), which hears, on the source
//! host and in this order:
//! - `pre-dump`: before the tree is frozen;
//! - `network-lock`: the tree is frozen here and its connections held here;
//! - `pre-restore`: the images are there and the connections are held there
//!   too, nothing is restored yet: the moment to move the address (from
//!   here to there); the destination checks the images against its host
//!   after this, so a listener's address must be there by then;
//! - `post-dump`: every image, pages included, has been sent;
//! - `post-restore`: the tree is built there, held (CRTOOLS_INIT_PID: its root);
//! - `pre-resume`: just before it is let go there;
//! - `network-unlock`: it runs there, both locks are gone;
//! - `post-resume`: the move is done.
//!
//! A script that fails at any point up to pre-resume stops the move: the
//! tree runs on here. A move that fails after `pre-restore` leaves the
//! address where the script put it: the error says so, and the operator
//! moves it back (the connections are intact here meanwhile: held, not
//! reset).
//!
//! The two network locks ([`crate::netlock`], an nftables table each):
//! - here, from the freeze (taken by the dump, as `crust dump
//!   --tcp-established` takes it) until the tree dies here once it runs
//!   there; the tree's sockets are closed silently (in repair mode) and the
//!   lock removed. A move that fails removes it as the tree resumes.
//! - there, taken when the images have arrived (the `LOCK` frame), before
//!   the address can arrive: from then until the restored sockets exist, a
//!   client's packet reaching that host would meet no socket and draw a
//!   reset. It goes once the tree runs there; a failed restore, a broken
//!   link or a refused check remove it with whatever else was made there.
//! - a crust killed (SIGKILL) on either side leaves its table, which `crust
//!   network-unlock` removes on that host (its crust is gone, no dump kept it).

use super::channel::{LOCK, QUICK_TIMEOUT};
use super::{Link, MigrateOptions, Restored};
use crate::error::{Error, Result};
use crate::files::tcp::Mode;
use crate::notify::Point;

/// How the restore's mode travels in the hello.
pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Refuse => "",
        Mode::Established => "established",
        Mode::Close => "close",
    }
}

/// The mode the source asked for.
pub fn mode_of(name: &str) -> Result<Mode> {
    match name {
        "" => Ok(Mode::Refuse),
        "established" => Ok(Mode::Established),
        "close" => Ok(Mode::Close),
        other => Err(Error::Protocol(format!("unknown TCP mode {other:?} in the hello"))),
    }
}

/// The images are there: have the destination hold the tree's connections,
/// then let the operator move their address (pre-restore). True once the
/// script has heard pre-restore (the address may have moved).
pub fn hold_there(link: &Link, opts: &MigrateOptions) -> Result<bool> {
    if opts.tcp == Mode::Established {
        link.request(LOCK, &[], QUICK_TIMEOUT)?;
    }
    opts.notify.at(Point::PreRestore, None)?;
    Ok(opts.notify.is_heard())
}

/// The destination answered that the tree is built and held: post-restore
/// and pre-resume, with its root's pid.
pub fn built_there(opts: &MigrateOptions, answer: &[u8]) -> Result<()> {
    let root = serde_json::from_slice::<Restored>(answer).ok().map(|r| r.root).filter(|&r| r > 0);
    opts.notify.at(Point::PostRestore, root)?;
    opts.notify.at(Point::PreResume, root)
}

/// It runs there and is gone here: the last points. Nothing can be undone
/// now, so a script failing here is reported, not obeyed.
pub fn running_there(opts: &MigrateOptions, remote: &Restored) {
    let root = Some(remote.root).filter(|&r| r > 0);
    for point in [Point::NetworkUnlock, Point::PostResume] {
        if let Err(e) = opts.notify.at(point, root) {
            log::error!("the tree runs there; {e}");
        }
    }
}

/// The error of a failed move, with what the operator must undo.
pub fn explain(err: Error, moved: bool) -> Error {
    if !moved {
        return err;
    }
    Error::Protocol(format!(
        "{err}\nthe action script heard pre-restore (the service address may have moved to the destination): \
         the tree and its connections are back here, held until now; move the address back"
    ))
}
