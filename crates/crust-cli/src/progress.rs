//! The engine's progress drawn as a bar on stderr: bytes, rate and time left
//! of each page copy. Drawn only when stderr is a terminal and the output is
//! not JSON; otherwise the engine is given nowhere to report to.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use crust::progress::{Phase, Progress, ProgressEvent};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar of the phase being copied, made at its first report.
type Shown = Mutex<Option<(Phase, ProgressBar)>>;

/// Where the engine's reports are drawn, if anywhere.
#[derive(Clone, Default)]
pub struct Bar {
    shown: Option<Arc<Shown>>,
}

impl Bar {
    /// A bar if stderr is a terminal and `json` is not asked for; else one that draws nothing.
    pub fn on_stderr(json: bool) -> Bar {
        let shown = (!json && std::io::stderr().is_terminal()).then(Arc::default);
        Bar { shown }
    }

    /// What the engine reports to.
    pub fn progress(&self) -> Progress {
        match &self.shown {
            Some(shown) => {
                let shown = shown.clone();
                Progress::new(move |e| show(&shown, e))
            }
            None => Progress::default(),
        }
    }

    /// Run `work`, and end the bar after it however it went: a copy cut short
    /// leaves its bar where it stopped, on a line of its own.
    pub fn around<T>(&self, work: impl FnOnce() -> T) -> T {
        let out = work();
        if let Some(shown) = &self.shown {
            if let Some((_, bar)) = lock(shown).take() {
                if !bar.is_finished() {
                    bar.abandon();
                }
            }
        }
        out
    }
}

fn lock(shown: &Shown) -> std::sync::MutexGuard<'_, Option<(Phase, ProgressBar)>> {
    shown.lock().unwrap_or_else(|p| p.into_inner())
}

fn show(shown: &Shown, e: ProgressEvent) {
    let mut shown = lock(shown);
    if shown.as_ref().map(|(phase, _)| *phase) != Some(e.phase) {
        if let Some((_, old)) = shown.take() {
            if !old.is_finished() {
                old.abandon();
            }
        }
        *shown = Some((e.phase, new_bar(e.phase, e.total)));
    }
    let Some((_, bar)) = shown.as_ref() else { return };
    bar.set_length(e.total);
    bar.set_position(e.done);
    if e.done >= e.total {
        bar.finish();
    }
}

fn new_bar(phase: Phase, total: u64) -> ProgressBar {
    let label = match phase {
        Phase::DumpingPages => "dumping pages",
        Phase::SendingPages => "sending pages",
        Phase::RestoringPages => "restoring pages",
    };
    let style = ProgressStyle::with_template(
        "{msg:>15} [{bar:40}] {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12} ETA {eta}",
    )
    .expect("a valid template")
    .progress_chars("#>-");
    ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr()).with_style(style).with_message(label)
}
