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
    if std::env::var_os("FCACHE_REPORT_PEAK_MEMORY").is_some()
        && let Some(kib) = fcache::diagnostics::peak_memory_kib()
    {
        eprintln!("fcache: peak memory {kib} KiB");
    }
    code
}
