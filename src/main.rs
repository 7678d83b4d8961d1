use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = fcache::commands::Cli::parse();
    let code = match fcache::commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // The whole chain on one line: what failed, then why.
            eprintln!("fcache: error: {err:#}");
            ExitCode::from(2)
        }
    };
    if let Some(target) = std::env::var_os("FCACHE_REPORT_PEAK_MEMORY")
        && let Some(kib) = fcache::diagnostics::peak_memory_kib()
    {
        // Under git, stderr is git's: a benchmark names a file to collect the
        // figure of every fcache process a git command started.
        if target == "1" {
            eprintln!("fcache: peak memory {kib} KiB");
        } else {
            let command = std::env::args().nth(1).unwrap_or_default();
            let line = format!("{command} {kib}\n");
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&target)
                .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        }
    }
    code
}
