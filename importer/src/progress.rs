//! What the user sees while the import runs: progress bars (indicatif) on a terminal, plain
//! lines otherwise (logs, CI), with rates and the waits the API asks for.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::Notice;
use crate::report::{Changes, Snapshot};

/// The bars of one run.
pub struct Progress {
    multi: MultiProgress,
    rows: ProgressBar,
    videos: ProgressBar,
    plain: bool,
}

impl Progress {
    /// Bars for `total` rows (on a terminal; plain lines otherwise).
    pub fn new(total: u64) -> Self {
        let plain = !std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if plain {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        });
        let style = ProgressStyle::with_template(
            "{prefix:>10} [{bar:40}] {pos}/{len} {per_sec} ETA {eta} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> ");
        let rows = multi.add(
            ProgressBar::new(total)
                .with_style(style.clone())
                .with_prefix("accepted"),
        );
        let videos = multi.add(
            ProgressBar::new(total)
                .with_style(style)
                .with_prefix("finished"),
        );
        videos.enable_steady_tick(Duration::from_millis(500));
        Self {
            multi,
            rows,
            videos,
            plain,
        }
    }

    /// A line above the bars (or on its own).
    pub fn say(&self, line: &str) {
        if self.plain {
            eprintln!("{line}");
        } else {
            let _ = self.multi.println(line);
        }
    }

    /// A batch of `rows` rows was accepted as `job`.
    pub fn accepted(&self, batch: u64, rows: u64, job: &str) {
        self.rows.inc(rows);
        if self.plain {
            eprintln!(
                "batch {batch}: {rows} videos accepted as job {job} ({}/{} rows)",
                self.rows.position(),
                self.rows.length().unwrap_or(0)
            );
        }
    }

    /// What a poll of the jobs found, and what it changed: plain lines only for changes,
    /// the bar follows every poll.
    pub fn watched(&self, now: &Snapshot, changes: &Changes) {
        self.videos.set_length(now.total);
        self.videos.set_position(now.done());
        self.videos.set_message(format!(
            "imported {}, skipped {}, failed {}, pending {}",
            now.imported, now.skipped, now.failed, now.pending
        ));
        if self.plain {
            if let Some(counts) = &changes.counts {
                eprintln!("{counts}");
            }
        }
        for line in &changes.waiting {
            self.say(&format!("  {line}"));
        }
    }

    /// Removes the bars.
    pub fn done(&self) {
        self.rows.finish_and_clear();
        self.videos.finish_and_clear();
    }
}

impl Notice for Progress {
    fn waiting(&self, secs: u64, why: &str) {
        self.say(&format!("waiting {secs} s: {why}"));
    }
}
