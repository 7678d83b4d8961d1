//! `fsck`: re-hash every cached object (and, asked, the archive's copies).

use std::collections::BTreeSet;
use std::io;
use std::process::ExitCode;

use super::Context;
use crate::archive::ArchiveError;
use crate::cache::Lookup;
use crate::hashing::HashingWriter;
use crate::marker::Marker;

pub fn run(check_archive: bool) -> anyhow::Result<ExitCode> {
    let ctx = Context::open()?;
    let objects = ctx.store.cache.objects()?;
    let mut corrupt = 0usize;
    for id in objects.iter().map(|o| &o.id) {
        if let Lookup::Corrupt { quarantined } = ctx.store.cache.open_verified(id)? {
            corrupt += 1;
            eprintln!(
                "fcache: error: cached object {id} is corrupt; moved to {}",
                quarantined.display()
            );
        }
    }
    eprintln!(
        "fcache: checked {} cached object(s) in {}: {corrupt} corrupt",
        objects.len(),
        ctx.store.cache.root().display()
    );
    if check_archive {
        let known: BTreeSet<_> = ctx
            .index
            .entries()?
            .into_iter()
            .map(|e| Marker::new(e.id, e.size))
            .chain(ctx.repo.head_markers()?.into_values())
            .collect();
        let (mut checked, mut bad) = (0usize, 0usize);
        for m in &known {
            let id = &m.id;
            let mut sink = HashingWriter::new(io::sink());
            match ctx.store.archive.get(m, &mut sink) {
                Ok(_) => {
                    checked += 1;
                    let (actual, _, _) = sink.finish();
                    if actual != *id {
                        bad += 1;
                        eprintln!(
                            "fcache: error: archived object {id} is corrupt (hashes to {actual}) in {}",
                            ctx.store.archive.location()
                        );
                    }
                }
                Err(ArchiveError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        eprintln!(
            "fcache: checked {checked} archived object(s) in {}: {bad} corrupt",
            ctx.store.archive.location()
        );
        corrupt += bad;
    }
    Ok(if corrupt == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
