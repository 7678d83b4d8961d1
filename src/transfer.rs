//! Running many transfers at once, and telling the user how they go.

use std::io::{self, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Progress of a batch of transfers. The library reports; the command layer
/// decides whether and how to show it (a progress bar on a terminal).
pub trait Progress: Sync {
    /// About to move `objects` objects holding `bytes` bytes in all.
    fn start(&self, _objects: u64, _bytes: u64) {}
    /// `n` more bytes moved.
    fn bytes(&self, _n: u64) {}
    /// One more object done (moved, or failed).
    fn object_done(&self) {}
    /// Everything asked for is done.
    fn finish(&self) {}
}

/// Progress nobody watches.
pub struct NoProgress;

impl Progress for NoProgress {}

/// A writer that reports every byte written through it.
pub struct ProgressWriter<'a, W> {
    inner: W,
    progress: &'a dyn Progress,
}

impl<'a, W: Write> ProgressWriter<'a, W> {
    pub fn new(inner: W, progress: &'a dyn Progress) -> Self {
        Self { inner, progress }
    }
}

impl<W: Write> Write for ProgressWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.bytes(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Apply `f` to every item on up to `workers` threads; results in item order.
/// Work is handed out one item at a time, so one slow item holds up one
/// worker, not a whole share of the list.
pub fn parallel_map<T, R, F>(items: Vec<T>, workers: usize, f: F) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(T) -> R + Sync,
{
    let len = items.len();
    let workers = workers.clamp(1, len.max(1));
    if workers == 1 {
        return items.into_iter().map(f).collect();
    }
    let queue: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let results: Vec<Mutex<Option<R>>> = (0..len).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= len {
                        break;
                    }
                    let item = queue[i]
                        .lock()
                        .expect("no worker panics holding an item")
                        .take()
                        .expect("each item is taken once");
                    let r = f(item);
                    *results[i]
                        .lock()
                        .expect("no worker panics holding a result") = Some(r);
                }
            });
        }
    });
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .expect("no worker panicked")
                .expect("every item has a result")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_and_runs_everything() {
        let out = parallel_map((0..100).collect(), 7, |i: u64| i * i);
        assert_eq!(out, (0..100).map(|i| i * i).collect::<Vec<_>>());
        assert!(parallel_map(Vec::<u8>::new(), 4, |x| x).is_empty());
    }

    #[test]
    fn runs_at_once_up_to_the_worker_count() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        parallel_map((0..16).collect(), 4, |_: i32| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(20));
            running.fetch_sub(1, Ordering::SeqCst);
        });
        let peak = peak.load(Ordering::SeqCst);
        assert!((2..=4).contains(&peak), "peak {peak}");
    }
}
