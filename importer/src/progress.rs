//! What the user sees while the import runs: progress bars (indicatif) on a terminal, plain
//! lines otherwise (logs, CI), with rates and the waits the API asks for.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::Notice;

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

    /// Videos finished so far, and how they ended.
    pub fn finished(&self, done: u64, imported: u64, skipped: u64, failed: u64) {
        self.videos.set_position(done);
        self.videos.set_message(format!(
            "imported {imported}, skipped {skipped}, failed {failed}"
        ));
        if self.plain {
            eprintln!("finished {done}: imported {imported}, skipped {skipped}, failed {failed}");
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
