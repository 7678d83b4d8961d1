//! Progress bars on stderr for transfers, when stderr is a terminal.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicU64, Ordering};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::Config;
use crate::transfer::Progress;

/// A bar of bytes moved, with objects done out of objects to do. Hidden when
/// stderr is not a terminal or `FCACHE_NO_PROGRESS` is set.
pub struct Bar {
    bar: ProgressBar,
    verb: &'static str,
    objects: AtomicU64,
    done: AtomicU64,
}

impl Bar {
    pub fn new(config: &Config, verb: &'static str) -> Self {
        let bar = ProgressBar::hidden();
        if !config.no_progress && std::io::stderr().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        bar.set_style(
            ProgressStyle::with_template(
                "fcache: {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        Self {
            bar,
            verb,
            objects: AtomicU64::new(0),
            done: AtomicU64::new(0),
        }
    }

    fn message(&self) {
        self.bar.set_message(format!(
            "{} {}/{} object(s)",
            self.verb,
            self.done.load(Ordering::Relaxed),
            self.objects.load(Ordering::Relaxed)
        ));
    }
}

impl Progress for Bar {
    fn start(&self, objects: u64, bytes: u64) {
        self.objects.store(objects, Ordering::Relaxed);
        self.bar.set_length(bytes);
        self.message();
    }

    fn bytes(&self, n: u64) {
        self.bar.inc(n);
    }

    fn object_done(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
        self.message();
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
