//! Figures about the running process, for tests and the benchmark.

/// This process's peak resident memory (the kernel's `VmHWM`), in KiB.
/// `None` where the platform does not say.
pub fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
