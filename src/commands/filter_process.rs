//! `filter-process`: git's long-running filter protocol on stdin/stdout.
//! stdout carries protocol bytes only; messages go to stderr (git shows them).

use std::io::{BufReader, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;

use super::smudge::missing_warning;
use super::{Context, stdio};
use crate::filter::Cleaned;
use crate::filter::process::{self, Filter, Observer};
use crate::filter::statcache::StatCache;
use crate::marker::Marker;
use crate::store::Unavailable;
use crate::transfer::Progress;

pub fn run() -> anyhow::Result<ExitCode> {
    let mut ctx = Context::open()?;
    // A damaged index stops the process before git hands it any file, as it
    // stops a one-shot filter: found only at the end, git would not see it.
    ctx.index.contains(&crate::oid::ObjectId::empty())?;
    let (stdin, stdout) = stdio()?;
    widen_pipe(&stdin);
    widen_pipe(&stdout);
    let mut stat_cache = StatCache::open(&ctx.repo.stat_cache_dir());
    let mut observer = Messages {
        debug_log: match &ctx.store.config.debug_log {
            Some(path) => Some(
                fs_err::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => None,
        },
    };
    let progress = Downloads::default();
    let workdir = ctx.repo.workdir().map(|p| p.to_owned());
    let served = process::serve(
        Filter {
            store: &ctx.store,
            index: ctx.index.as_mut(),
            stat_cache: &mut stat_cache,
            workdir: workdir.as_deref(),
            progress: &progress,
            observer: &mut observer,
        },
        // Small requests in few reads; content packets bypass the buffer.
        BufReader::with_capacity(16 * 1024, stdin),
        stdout,
    );
    // Whatever happened, keep what was learnt: one save per process (and
    // the cache kept within its limits, notices told).
    let finished = ctx.finish();
    // The stat cache only saves work later: losing it is worth a warning.
    if let Err(e) = stat_cache.save(workdir.as_deref()) {
        eprintln!("fcache: warning: {}", crate::diagnostics::one_line(&e));
    }
    // The process's own failure first, then the saves'.
    let summary = served.context("filter-process")?;
    finished?;
    let fetched = progress.objects.load(Ordering::Relaxed);
    if fetched > 0 {
        eprintln!(
            "fcache: downloaded {fetched} object(s), {} bytes, from {}",
            progress.bytes.load(Ordering::Relaxed),
            ctx.store.archive.location()
        );
    }
    if let Some(log) = &mut observer.debug_log {
        writeln!(log, "summary {summary:?}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// git's pipes hold 64 KiB: one content packet. A larger pipe lets git and
/// fcache each run ahead instead of switching turns every packet. Not a pipe,
/// or over the system's limit: left as it is.
fn widen_pipe(file: &std::fs::File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: F_SETPIPE_SZ only reads the descriptor, which `file` keeps open.
        unsafe {
            libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

struct Messages {
    debug_log: Option<fs_err::File>,
}

impl Messages {
    fn log(&mut self, line: std::fmt::Arguments<'_>) {
        if let Some(log) = &mut self.debug_log {
            // A debug log that cannot be written must not fail the user's git command.
            let _ = writeln!(log, "{line}");
        }
    }
}

impl Observer for Messages {
    fn failed(&mut self, command: &str, path: &str, error: &dyn std::error::Error) {
        let message = crate::diagnostics::one_line(error);
        eprintln!("fcache: error: {command} {path}: {message}");
        self.log(format_args!("{command} failed {path}"));
    }

    fn missing(&mut self, path: &str, unavailable: &Unavailable) {
        eprintln!("{}", missing_warning(path, unavailable));
        self.log(format_args!("smudge missing {path} {}", unavailable.id));
    }

    fn cleaned(&mut self, path: &str, outcome: &Cleaned) {
        let (what, id) = match outcome {
            Cleaned::Empty => ("empty", String::new()),
            Cleaned::AlreadyMarker(m) => ("marker", m.id.to_string()),
            Cleaned::Stored(m) => ("hashed", m.id.to_string()),
            Cleaned::Known(m) => ("unchanged", m.id.to_string()),
        };
        self.log(format_args!("clean {what} {path} {id}"));
    }

    fn delayed(&mut self, path: &str, marker: &Marker) {
        self.log(format_args!("smudge delayed {path} {}", marker.id));
    }
}

/// Counts what came from the archive, for one line at the end.
#[derive(Default)]
struct Downloads {
    objects: AtomicU64,
    bytes: AtomicU64,
}

impl Progress for Downloads {
    fn bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn object_done(&self) {
        self.objects.fetch_add(1, Ordering::Relaxed);
    }
}
