use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use super::{Context, shown, stdio};
use crate::filter::{self, Smudged};

pub fn run(path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let mut ctx = Context::open()?;
    let (mut stdin, mut stdout) = stdio()?;
    let now = ctx.store.config.clock.current_time();
    let outcome = filter::smudge(&ctx.store, ctx.index.as_mut(), now, &mut stdin, &mut stdout)
        .with_context(|| format!("smudge {}", shown(&path)))?;
    if let Smudged::Missing(_, unavailable) = &outcome {
        eprintln!("{}", missing_warning(&shown(&path), unavailable));
    }
    ctx.finish()?;
    Ok(ExitCode::SUCCESS)
}

/// The one line a user sees for a file whose object could not be had.
pub(super) fn missing_warning(path: &str, unavailable: &crate::store::Unavailable) -> String {
    format!(
        "fcache: warning: {path}: object {} is not in the cache and could not be fetched ({unavailable}); the file holds its marker for now: run `fcache pull` once the archive has it",
        unavailable.id
    )
}
