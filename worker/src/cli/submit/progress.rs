//! Progress on standard error: two `indicatif` bars (submitted, finished) when it is a
//! terminal, else a plain line every few seconds, so that logs of a batch run in CI or
//! under a scheduler stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain progress line is written.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Counts shown.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    /// Jobs to publish.
    pub total: u64,
    /// Publishes the broker confirmed.
    pub submitted: u64,
    /// Results received.
    pub finished: u64,
    /// Of those, succeeded.
    pub succeeded: u64,
    /// Of those, failed.
    pub failed: u64,
}

/// Where progress goes.
pub enum Progress {
    /// Bars on a terminal.
    Bars {
        /// Holds both bars.
        multi: MultiProgress,
        /// Confirmed publishes.
        submitted: ProgressBar,
        /// Results.
        finished: Option<ProgressBar>,
    },
    /// Plain lines.
    Plain {
        /// When the last line was written.
        last: Instant,
        /// What it said.
        shown: (u64, u64),
        /// Whether results are counted.
        wait: bool,
    },
}

impl Progress {
    /// Bars when standard error is a terminal, else plain lines; `wait` adds the
    /// finished bar.
    pub fn new(total: u64, wait: bool) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::Plain {
                last: Instant::now(),
                shown: (0, 0),
                wait,
            };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix:>9} [{bar:40.cyan/blue}] {pos:>7}/{len:7} {msg} {elapsed}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let submitted = multi.add(ProgressBar::new(total));
        submitted.set_style(style.clone());
        submitted.set_prefix("submitted");
        let finished = wait.then(|| {
            let bar = multi.add(ProgressBar::new(total));
            bar.set_style(style);
            bar.set_prefix("finished");
            bar
        });
        Progress::Bars {
            multi,
            submitted,
            finished,
        }
    }

    /// Shows `counts`; plain lines only when they changed, and only every few seconds
    /// unless `now` is set.
    pub fn show(&mut self, counts: Counts, now: bool) {
        match self {
            Progress::Bars {
                submitted,
                finished,
                ..
            } => {
                submitted.set_position(counts.submitted);
                if let Some(finished) = finished {
                    finished.set_position(counts.finished);
                    finished.set_message(format!(
                        "succeeded {}, failed {}",
                        counts.succeeded, counts.failed
                    ));
                }
            }
            Progress::Plain { last, shown, wait } => {
                let changed = *shown != (counts.submitted, counts.finished);
                if changed && (now || last.elapsed() >= PLAIN_EVERY) {
                    if *wait {
                        eprintln!(
                            "progress: submitted {}/{}, finished {} (succeeded {}, failed {})",
                            counts.submitted,
                            counts.total,
                            counts.finished,
                            counts.succeeded,
                            counts.failed
                        );
                    } else {
                        eprintln!("progress: submitted {}/{}", counts.submitted, counts.total);
                    }
                    *last = Instant::now();
                    *shown = (counts.submitted, counts.finished);
                }
            }
        }
    }

    /// Prints a line (above the bars on a terminal).
    pub fn say(&self, line: &str) {
        match self {
            Progress::Bars { multi, .. } => {
                if multi.println(line).is_err() {
                    eprintln!("{line}");
                }
            }
            Progress::Plain { .. } => eprintln!("{line}"),
        }
    }

    /// Removes the bars (before the summary is printed).
    pub fn finish(&self) {
        if let Progress::Bars {
            submitted,
            finished,
            ..
        } = self
        {
            submitted.finish();
            if let Some(finished) = finished {
                finished.finish();
            }
        }
    }
}
