//! Progress of the long copies (the pages of memory), reported to whoever
//! drives the engine: a dump writing them, a migration sending them, a
//! restore putting them into the new tasks. The engine only reports; drawing
//! a bar, or not, is the caller's business.

use std::sync::Arc;

/// What is being copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// A dump writing the pages into its images.
    DumpingPages,
    /// A migration sending the pages to the destination.
    SendingPages,
    /// A restore putting the saved pages into the new tasks.
    RestoringPages,
}

/// `done` bytes of `total` copied in `phase`. A phase is reported only if it
/// has bytes to copy: from done = 0 up to done = total, never past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgressEvent {
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
}

/// Where the reports go: a callback, or nowhere (the default). The callback
/// is called on the thread doing the copy, once per chunk copied.
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<dyn Fn(ProgressEvent) + Send + Sync>>);

impl Progress {
    pub fn new(report: impl Fn(ProgressEvent) + Send + Sync + 'static) -> Progress {
        Progress(Some(Arc::new(report)))
    }

    /// Start counting the bytes of `phase`, `total` in all.
    pub fn start(&self, phase: Phase, total: u64) -> Meter<'_> {
        let meter = Meter { progress: self, phase, done: 0, total };
        meter.report();
        meter
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Progress(reported)" } else { "Progress(none)" })
    }
}

/// The bytes of one phase copied so far.
pub struct Meter<'a> {
    progress: &'a Progress,
    phase: Phase,
    done: u64,
    total: u64,
}

impl Meter<'_> {
    /// `bytes` more are copied.
    pub fn add(&mut self, bytes: u64) {
        self.done = (self.done + bytes).min(self.total);
        self.report();
    }

    fn report(&self) {
        if let (Some(report), true) = (&self.progress.0, self.total > 0) {
            report(ProgressEvent { phase: self.phase, done: self.done, total: self.total });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn a_phase_goes_from_nothing_to_its_total_and_an_empty_one_is_not_reported() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let progress = Progress::new(move |e| log.lock().unwrap().push((e.phase, e.done, e.total)));
        let mut m = progress.start(Phase::DumpingPages, 10);
        m.add(4);
        m.add(8);
        progress.start(Phase::SendingPages, 0).add(0);
        let seen = seen.lock().unwrap().clone();
        let p = Phase::DumpingPages;
        assert_eq!(seen, [(p, 0, 10), (p, 4, 10), (p, 10, 10)]);
        // Nowhere: nothing to call.
        Progress::default().start(Phase::RestoringPages, 5).add(5);
    }
}
