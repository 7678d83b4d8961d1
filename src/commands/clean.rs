use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use super::{Context, shown, stdio};
use crate::filter;

pub fn run(path: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let mut ctx = Context::open()?;
    let (mut stdin, mut stdout) = stdio()?;
    let now = ctx.store.config.clock.current_time();
    filter::clean(&ctx.store, ctx.index.as_mut(), now, &mut stdin, &mut stdout)
        .with_context(|| format!("clean {}", shown(&path)))?;
    ctx.finish()?;
    Ok(ExitCode::SUCCESS)
}
