//! `push`: send the objects of the commits being pushed to the archive.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{Context as _, bail};

use super::Context;
use super::progress::Bar;
use crate::store::{Pushed, StoreError};

pub fn run(all: bool, remote: Option<String>, url: Option<String>) -> anyhow::Result<ExitCode> {
    let ctx = Context::open()?;
    let (include, exclude) = if let Some(remote) = &remote {
        // Called by the pre-push hook: "<local ref> <local sha> <remote ref> <remote sha>" per line.
        let _ = url;
        let mut include = Vec::new();
        let mut exclude = ctx.repo.remote_tips(remote)?;
        for line in std::io::stdin().lock().lines() {
            let line = line.context("cannot read the refs being pushed from stdin")?;
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [_, local, _, remote_sha] = fields[..] else {
                bail!("unexpected line from git's pre-push hook: {line:?}");
            };
            if local.bytes().all(|b| b == b'0') {
                continue; // a deletion pushes nothing
            }
            include.push(ctx.repo.resolve_commit(local)?);
            if !remote_sha.bytes().all(|b| b == b'0')
                && let Ok(oid) = ctx.repo.resolve_commit(remote_sha)
            {
                exclude.push(oid);
            }
        }
        (include, exclude)
    } else if all {
        (ctx.repo.all_ref_tips()?, Vec::new())
    } else {
        match ctx.repo.resolve_commit("HEAD") {
            Ok(head) => (vec![head], Vec::new()),
            Err(_) => (Vec::new(), Vec::new()),
        }
    };
    let markers = ctx.repo.markers_in_commits(&include, &exclude)?;
    let objects: Vec<_> = markers.keys().copied().collect();
    let (mut sent, mut present, mut failed) = (0usize, 0usize, 0usize);
    let results = ctx
        .store
        .push_many(&objects, &Bar::new(&ctx.store.config, "sending"))?;
    for ((m, path), result) in markers.iter().zip(results) {
        match result {
            Ok(Pushed::Sent) => sent += 1,
            Ok(Pushed::AlreadyThere) => present += usize::from(m.size > 0),
            Err(e @ (StoreError::NotCached { .. } | StoreError::CorruptCached { .. })) => {
                failed += 1;
                eprintln!("fcache: error: {path}: {e}");
            }
            Err(e) => {
                return Err(e).with_context(|| format!("{path}: cannot push object {}", m.id));
            }
        }
    }
    eprintln!(
        "fcache: sent {sent} object(s) to {}; {present} already there",
        ctx.store.archive.location()
    );
    if failed > 0 {
        bail!(
            "{failed} object(s) could not be sent to {}; the push is stopped so the remote never references content nobody can fetch",
            ctx.store.archive.location()
        );
    }
    Ok(ExitCode::SUCCESS)
}
