//! timerfd: its clock, the time left to its next expiry, its period, and the
//! expirations not read yet. A timer comes back with as long to run as it had
//! when it was frozen (an absolute one as an absolute deadline that far from
//! now). fdinfo counts one unread expiration for a periodic timer however
//! many periods passed unread: the others are not in the image.

use super::{fown_of, FdRestorer, FileTable, FileKind, OpenFd};
use crate::error::{Error, Result};
use crate::images::proto::{FdTypes, FileEntry, TimerfdEntry};

pub struct Timerfd;

impl FileKind for Timerfd {
    fn name(&self) -> &'static str {
        "timerfd"
    }

    fn fd_type(&self) -> FdTypes {
        FdTypes::Timerfd
    }

    fn matches(&self, fd: &OpenFd) -> bool {
        fd.link == "anon_inode:[timerfd]"
    }

    fn dump(&self, fd: &OpenFd, table: &mut FileTable) -> Result<FileEntry> {
        let time = |name: &str| -> Result<(u64, u64)> {
            let v = fd.info_field(name)?;
            parse_time(v).ok_or_else(|| Error::io_other(format!("reading /proc/{}/fdinfo/{}", fd.pid, fd.fd), format!("timerfd {name} {v:?}")))
        };
        let settime_flags = fd.info_number("settime flags:", 8)? as u32;
        if settime_flags & TFD_TIMER_CANCEL_ON_SET != 0 {
            return Err(fd.unsupported("timerfds cancelled when the clock is set are"));
        }
        let (vsec, vnsec) = time("it_value:")?;
        let (isec, insec) = time("it_interval:")?;
        let id = table.new_id();
        let entry = TimerfdEntry {
            id,
            flags: fd.flags,
            fown: fown_of(fd, table)?,
            clockid: fd.info_number("clockid:", 10)? as u32,
            ticks: fd.info_number("ticks:", 10)?,
            settime_flags,
            vsec,
            vnsec,
            isec,
            insec,
        };
        Ok(FileEntry { r#type: FdTypes::Timerfd as i32, id, tfd: Some(entry), ..Default::default() })
    }

    fn restore(&self, entry: &FileEntry, r: &mut FdRestorer) -> Result<u64> {
        let t = entry.tfd.as_ref().ok_or_else(|| super::missing(entry, "timerfd"))?;
        if t.vnsec >= NSEC || t.insec >= NSEC {
            return Err(Error::image("files.img", format!("file {}: timerfd times with {} and {} ns", entry.id, t.vnsec, t.insec)));
        }
        let bad = |what: String| Error::Invalid(format!("file {}: timerfd {what}", entry.id));
        let clockid = libc::clockid_t::try_from(t.clockid).map_err(|_| bad(format!("clock {}", t.clockid)))?;
        // A timespec's seconds are signed.
        if i64::try_from(t.vsec).is_err() || i64::try_from(t.isec).is_err() {
            return Err(bad(format!("times of {} s and {} s", t.vsec, t.isec)));
        }
        let nonblock = t.flags & libc::O_NONBLOCK as u32;
        let fd = r.task.call("timerfd_create", libc::SYS_timerfd_create, [clockid as u64, nonblock as u64, 0, 0, 0, 0])?;
        // A periodic timer that expired with its expirations unread shows no time
        // left; a zero value would disarm it, so it fires again after a period.
        let (mut vsec, mut vnsec) = if (t.vsec, t.vnsec) == (0, 0) { (t.isec, t.insec) } else { (t.vsec, t.vnsec) };
        if (vsec, vnsec) != (0, 0) {
            // An absolute timer stays absolute: the time left, from now on this clock.
            let abs = t.settime_flags & TFD_TIMER_ABSTIME;
            if abs != 0 {
                let now = nix::time::clock_gettime(nix::time::ClockId::from_raw(clockid))
                    .map_err(|e| Error::Sys { context: format!("reading clock {}", t.clockid), err: e })?;
                // Both below 10^9: no overflow.
                let ns = now.tv_nsec() as u64 + vnsec;
                let sec = u64::try_from(now.tv_sec()).ok().and_then(|s| s.checked_add(vsec)?.checked_add(ns / NSEC));
                let sec = sec.filter(|&s| i64::try_from(s).is_ok()).ok_or_else(|| bad(format!("deadline {vsec} s from now")))?;
                (vsec, vnsec) = (sec, ns % NSEC);
            }
            let spec = r.scratch.reset().put_u64s(&[t.isec, t.insec, vsec, vnsec])?;
            r.task.call("timerfd_settime", libc::SYS_timerfd_settime, [fd, abs as u64, spec, 0, 0, 0])?;
        }
        if t.ticks != 0 {
            let ticks = r.scratch.reset().put(&t.ticks.to_le_bytes())?;
            r.task.call("ioctl(TFD_IOC_SET_TICKS)", libc::SYS_ioctl, [fd, TFD_IOC_SET_TICKS, ticks, 0, 0, 0])?;
        }
        r.to_high(fd)
    }
}

/// _IOW('T', 0, __u64): set the count of unread expirations.
const TFD_IOC_SET_TICKS: u64 = 0x4008_5400;
const TFD_TIMER_ABSTIME: u32 = 1;
const TFD_TIMER_CANCEL_ON_SET: u32 = 2;
const NSEC: u64 = 1_000_000_000;

/// `(sec, nsec)` as fdinfo prints a time.
fn parse_time(v: &str) -> Option<(u64, u64)> {
    let (s, ns) = v.trim().strip_prefix('(')?.strip_suffix(')')?.split_once(',')?;
    Some((s.trim().parse().ok()?, ns.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn fdinfo_times_are_read() {
        assert_eq!(parse_time("(0, 50000000)"), Some((0, 50_000_000)));
        assert_eq!(parse_time(" (3600, 0)"), Some((3600, 0)));
        assert_eq!(parse_time("(1 2)"), None);
    }
}
