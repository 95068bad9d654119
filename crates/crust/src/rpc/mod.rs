//! criu's RPC, as runc, crun (libcriu), podman, CRI-O and containerd speak
//! it to `criu swrk FD`: requests and responses of criu's rpc.proto over the
//! SOCK_SEQPACKET socket FD ([`wire`]), the options mapped to crust's own
//! ([`opts`]), and criu's notifications as round trips at the points of a
//! dump or restore ([`crate::notify`]): crust sends each and waits for the
//! caller's answer, which may stop the work.
//!
//! One connection is served until the caller closes it, or until a DUMP or
//! RESTORE is answered (criu's swrk ends there too: runc waits for it to
//! exit, and for success). VERSION, FEATURE_CHECK, CHECK and PRE_DUMP leave
//! it open for the next request.

pub mod opts;
pub mod wire;

/// criu's RPC messages (crates/crust/proto/rpc.proto).
#[allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/criu.rs"));
}

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crate::dump::{dump, pre_dump, DumpStats};
use crate::error::{Error, Result};
use crate::notify::Notify;
use crate::restore::restore;
use opts::Action;
use proto::{CriuDumpResp, CriuFeatures, CriuNotify, CriuOpts, CriuReqType, CriuResp, CriuRestoreResp, CriuVersion};
use wire::Conn;

/// How a dump is run: the CLI runs it in a worker that puts the tree back
/// if crust itself dies half-way (see crust-cli's guard); a test may run it
/// directly.
pub type Isolate<'a> = &'a dyn Fn(&dyn Fn() -> Result<DumpStats>) -> Result<DumpStats>;

/// How a served connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The caller closed the socket.
    Closed,
    /// A DUMP or RESTORE was answered; whether it succeeded.
    Done(bool),
}

/// Serve criu's RPC on `fd` until the caller closes it or a DUMP or
/// RESTORE is answered. A request that cannot be read (damaged, too
/// large) is answered with an error and ends the connection with it.
pub fn serve(fd: OwnedFd, isolate: Isolate) -> Result<Ending> {
    let conn = Arc::new(Conn::new(fd));
    let caller = conn.peer_pid()?;
    loop {
        let (req, raw) = match conn.recv() {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(Ending::Closed),
            Err(e) => {
                let _ = conn.send(&failure(CriuReqType::Empty as i32, &e));
                return Err(e);
            }
        };
        let Ok(kind) = CriuReqType::try_from(req.r#type) else {
            let e = Error::Invalid(format!("request type {} is not one of criu's", req.r#type));
            conn.send(&failure(req.r#type, &e))?;
            continue;
        };
        let unknown = wire::unknown_fields(&raw)?;
        if !unknown.is_empty() {
            let e = Error::unsupported("criu's RPC", format!("{} unknown to crust: refused rather than ignored", unknown.join(", ")));
            conn.send(&failure(req.r#type, &e))?;
            if matches!(kind, CriuReqType::Dump | CriuReqType::Restore) {
                return Ok(Ending::Done(false));
            }
            continue;
        }
        let resp = match kind {
            CriuReqType::Version => version(),
            CriuReqType::FeatureCheck => features(req.features.as_ref()),
            CriuReqType::Check => check(),
            CriuReqType::Dump | CriuReqType::PreDump | CriuReqType::Restore => {
                let action = match kind {
                    CriuReqType::Dump => Action::Dump,
                    CriuReqType::PreDump => Action::PreDump,
                    _ => Action::Restore,
                };
                let opts = req.opts.unwrap_or_default();
                let resp = work(&conn, caller, &opts, action, isolate);
                conn.send(&resp)?;
                if action == Action::PreDump {
                    continue;
                }
                return Ok(Ending::Done(resp.success));
            }
            CriuReqType::Notify => failure(req.r#type, &Error::Invalid("a NOTIFY answer came with no notification waiting for it".into())),
            CriuReqType::Empty
            | CriuReqType::PageServer
            | CriuReqType::PageServerChld
            | CriuReqType::CpuinfoDump
            | CriuReqType::CpuinfoCheck
            | CriuReqType::WaitPid
            | CriuReqType::SinglePreDump => failure(req.r#type, &Error::unsupported("criu's RPC", format!("{} requests are not supported by crust", kind.as_str_name()))),
        };
        conn.send(&resp)?;
    }
}

fn failure(kind: i32, e: &Error) -> CriuResp {
    // go-criu reads responses into 8 KiB: the message must fit.
    let mut msg = e.to_string();
    if msg.len() > 4000 {
        let mut cut = 4000;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push_str(" ...");
    }
    let errno = match e {
        Error::Sys { err, .. } => Some(*err as i32),
        Error::InTask { errno, .. } => Some(*errno as i32),
        Error::Io { err, .. } => err.raw_os_error(),
        _ => None,
    };
    CriuResp { r#type: kind, success: false, cr_errmsg: Some(msg), cr_errno: errno, ..Default::default() }
}

fn ok(kind: CriuReqType) -> CriuResp {
    CriuResp { r#type: kind as i32, success: true, ..Default::default() }
}

fn version() -> CriuResp {
    // The release crust answers for (crate::CRIU_COMPAT_VERSION says why).
    let v = crate::CRIU_COMPAT_VERSION;
    let (major_number, minor_number, sublevel) = (v.major as i32, v.minor as i32, Some(v.sublevel as i32));
    let name = Some(format!("crust {}", env!("CARGO_PKG_VERSION")));
    CriuResp { version: Some(CriuVersion { major_number, minor_number, sublevel, name, ..Default::default() }), ..ok(CriuReqType::Version) }
}

/// What crust has of criu's optional features. mem_track: a pre-dump and a
/// dump taking it as parent (parent_img) write only the pages changed since,
/// which is what engines ask it for; crust finds them by comparing pages
/// with the parent's, not by the kernel's dirty tracking. No lazy pages,
/// and no pidfd store. Only the features asked for are answered (all three
/// when none is named).
fn features(asked: Option<&CriuFeatures>) -> CriuResp {
    let all = asked.is_none_or(|a| a.mem_track.is_none() && a.lazy_pages.is_none() && a.pidfd_store.is_none());
    let asked = asked.cloned().unwrap_or_default();
    let answer = |q: Option<bool>, have: bool| (all || q.is_some()).then_some(have);
    let features = CriuFeatures {
        mem_track: answer(asked.mem_track, true),
        lazy_pages: answer(asked.lazy_pages, false),
        pidfd_store: answer(asked.pidfd_store, false),
    };
    CriuResp { features: Some(features), ..ok(CriuReqType::FeatureCheck) }
}

/// criu's check: can crust work on this host at all. It needs root (ptrace
/// of any process, clone3 with set_tid, pidfd_getfd).
fn check() -> CriuResp {
    if nix::unistd::geteuid().is_root() {
        return ok(CriuReqType::Check);
    }
    failure(CriuReqType::Check as i32, &Error::Invalid("crust needs root to dump and restore".into()))
}

/// The log file criu's clients ask for (and runc quotes the "Error" lines
/// of when criu fails): what crust was asked and how it ended. log_level
/// as criu's: 1 errors, 2 warnings, 3 info, 4 and more the request's options.
struct Log {
    file: Option<std::fs::File>,
    level: i32,
    start: Instant,
}

impl Log {
    fn open(path: Option<PathBuf>, level: i32) -> Log {
        let file = path.and_then(|p| match std::fs::File::create(&p) {
            Ok(f) => Some(f),
            Err(e) => {
                log::warn!("cannot write the log file {}: {e}", p.display());
                None
            }
        });
        Log { file, level, start: Instant::now() }
    }

    fn line(&mut self, level: i32, text: &str) {
        if level > self.level {
            return;
        }
        if let Some(f) = &mut self.file {
            let t = self.start.elapsed().as_secs_f64();
            let prefix = if level <= 1 { "Error (crust): " } else { "" };
            let _ = writeln!(f, "({t:.6}) {prefix}{text}");
        }
    }
}

/// The round trip of one notification: sent, then the caller's answer
/// awaited; a failed or missing answer stops the work there.
fn notifier(conn: Arc<Conn>) -> Notify {
    Notify::new(move |point, pid| {
        let name = point.criu_name();
        let notify = CriuNotify { script: Some(name.to_string()), pid };
        conn.send(&CriuResp { notify: Some(notify), ..ok(CriuReqType::Notify) })?;
        match conn.recv_during_work()? {
            Some((r, _)) if r.r#type == CriuReqType::Notify as i32 && r.notify_success == Some(true) => Ok(()),
            Some((r, _)) if r.r#type == CriuReqType::Notify as i32 => Err(Error::Invalid(format!("the caller failed its {name} step"))),
            Some((r, _)) => Err(Error::Invalid(format!("the caller answered the {name} notification with a request of type {}", r.r#type))),
            None => Err(Error::Invalid(format!("the caller closed the RPC socket at {name}"))),
        }
    })
}

/// A DUMP, PRE_DUMP or RESTORE: options checked and mapped, the work done,
/// the response made.
fn work(conn: &Arc<Conn>, caller: i32, o: &CriuOpts, action: Action, isolate: Isolate) -> CriuResp {
    let kind = match action {
        Action::Dump => CriuReqType::Dump,
        Action::PreDump => CriuReqType::PreDump,
        Action::Restore => CriuReqType::Restore,
    };
    let mut log = Log::open(opts::log_path(o, caller), o.log_level.unwrap_or(2));
    log.line(4, &format!("crust {} as criu {}.{} (swrk), for process {caller}: {o:?}", env!("CARGO_PKG_VERSION"), crate::CRIU_COMPAT_VERSION.major, crate::CRIU_COMPAT_VERSION.minor));
    let notify = if o.notify_scripts == Some(true) { notifier(conn.clone()) } else { Notify::default() };
    let result = opts::resolve(o, action, caller, notify).and_then(|r| match action {
        Action::Dump => {
            let stats = isolate(&|| dump(&r.dump))?;
            // criu writes its stats in the work directory, where podman
            // reads them; crust's stay beside the images too.
            if let Some(work) = r.work_dir.as_ref().filter(|w| **w != r.images_dir) {
                if let Err(e) = std::fs::copy(r.images_dir.join("stats-dump"), work.join("stats-dump")) {
                    log::warn!("copying stats-dump to the work directory {}: {e}", work.display());
                }
            }
            Ok((stats, None))
        }
        Action::PreDump => isolate(&|| pre_dump(&r.dump)).map(|s| (s, None)),
        Action::Restore => {
            let restored = restore(&r.restore)?;
            // As criu's, the numbers stay beside the images; the tree runs
            // whether or not they can be written.
            let stats_path = r.work_dir.as_ref().unwrap_or(&r.images_dir).join("stats-restore");
            if let Err(e) = crate::images::write_image_file(&stats_path, crate::images::Kind::Stats, &restored.stats.entry()) {
                log::warn!("{e}");
            }
            Ok((DumpStats::default(), Some(restored.root)))
        }
    });
    match result {
        Ok((stats, None)) => {
            log.line(3, &format!("{} done: {} process(es), {} pages written", kind.as_str_name(), stats.processes, stats.pages_written));
            CriuResp { dump: Some(CriuDumpResp { restored: Some(false) }), ..ok(kind) }
        }
        Ok((_, Some(pid))) => {
            log.line(3, &format!("restored, root pid {pid}"));
            CriuResp { restore: Some(CriuRestoreResp { pid }), ..ok(kind) }
        }
        Err(e) => {
            log.line(1, &e.to_string());
            failure(kind as i32, &e)
        }
    }
}
