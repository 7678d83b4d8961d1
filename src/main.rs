use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = fcache::commands::Cli::parse();
    match fcache::commands::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // The whole chain on one line: what failed, then why.
            eprintln!("fcache: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
