//! `status`: what this repository knows, and where each object is.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::process::ExitCode;

use serde::Serialize;

use super::Context;
use crate::clock::{self, Timestamp};
use crate::marker::Marker;
use crate::oid::ObjectId;
use crate::repo::file_holds_marker;

#[derive(Serialize)]
struct Object {
    identifier: ObjectId,
    size: u64,
    #[serde(serialize_with = "opt_time")]
    added: Option<Timestamp>,
    #[serde(serialize_with = "opt_time")]
    last_used: Option<Timestamp>,
    in_cache: bool,
    /// `None` when the archive could not be asked.
    in_archive: Option<bool>,
    missing: bool,
    paths: Vec<String>,
}

#[derive(Serialize)]
struct Report {
    objects: Vec<Object>,
    /// Work-tree files that hold a marker instead of their content.
    not_checked_out: Vec<String>,
    cache: CacheUsage,
    archive: String,
    /// Why the archive could not be asked, if it could not.
    archive_error: Option<String>,
    /// Whether this repository's pre-push hook calls fcache.
    pre_push_hook: bool,
}

#[derive(Serialize)]
struct CacheUsage {
    dir: String,
    objects: usize,
    bytes: u64,
    /// `fcache.cachelimit`, if set.
    limit_bytes: Option<u64>,
    /// `fcache.cachemaxfiles`, if set.
    limit_files: Option<u64>,
    over_limit: bool,
    /// Why the cache is over its limits, when it is.
    over_limit_reason: Option<String>,
}

/// The cache's usage against its limits, and if it is over them, why.
fn cache_usage(ctx: &Context) -> anyhow::Result<CacheUsage> {
    let cached = ctx.store.cache.objects()?;
    let bytes = cached.iter().map(|o| o.size).sum();
    let limits = ctx.store.config.limits;
    let over_limit = !limits.within(cached.len() as u64, bytes);
    let over_limit_reason = if over_limit {
        // What a gc would do now says why the cache is where it is.
        let plan = ctx.store.collect(true, false)?;
        Some(if let Some((_, why)) = plan.kept.first() {
            format!(
                "{} object(s) that should go cannot be evicted because the archive cannot confirm it holds them ({why})",
                plan.kept.len()
            )
        } else if !plan.archived.is_empty() {
            format!(
                "{} object(s) that should go are not in the archive yet; `fcache gc` sends them there, then evicts them",
                plan.archived.len()
            )
        } else {
            "the last command could not take the cache lock to evict; `fcache gc` does it now"
                .to_owned()
        })
    } else {
        None
    };
    Ok(CacheUsage {
        dir: ctx.store.cache.root().display().to_string(),
        objects: cached.len(),
        bytes,
        limit_bytes: limits.bytes,
        limit_files: limits.files,
        over_limit,
        over_limit_reason,
    })
}

fn opt_time<S: serde::Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&clock::format(t)),
        None => s.serialize_none(),
    }
}

pub fn run(json: bool) -> anyhow::Result<ExitCode> {
    let ctx = Context::open()?;
    let mut objects: BTreeMap<ObjectId, Object> = BTreeMap::new();
    for e in ctx.index.entries()? {
        objects.insert(
            e.id,
            Object {
                identifier: e.id,
                size: e.size,
                added: Some(e.added),
                last_used: Some(e.last_used),
                in_cache: false,
                in_archive: None,
                missing: false,
                paths: Vec::new(),
            },
        );
    }
    for (path, m) in ctx.repo.head_markers()? {
        objects
            .entry(m.id)
            .or_insert_with(|| Object {
                identifier: m.id,
                size: m.size,
                added: None,
                last_used: None,
                in_cache: false,
                in_archive: None,
                missing: false,
                paths: Vec::new(),
            })
            .paths
            .push(path);
    }
    let mut archive_error = None;
    for o in objects.values_mut() {
        o.in_cache = o.size == 0 || ctx.store.cache.contains(&o.identifier);
    }
    // Ask the archive in batches; once it cannot be reached, stop asking.
    let asked: Vec<Marker> = objects
        .values()
        .map(|o| Marker::new(o.identifier, o.size))
        .collect();
    for chunk in asked.chunks(ctx.store.archive.batch_size().max(1)) {
        match ctx.store.archive.contains_many(chunk) {
            Ok(found) => {
                for (m, found) in chunk.iter().zip(found) {
                    let o = objects.get_mut(&m.id).expect("asked about a known object");
                    o.in_archive = Some(found);
                    o.missing = !o.in_cache && !found;
                }
            }
            Err(e) => {
                archive_error = Some(format!("{:#}", anyhow::Error::from(e)));
                break;
            }
        }
    }
    let mut not_checked_out = Vec::new();
    if let Some(workdir) = ctx.repo.workdir() {
        for (path, m, _) in ctx.repo.index_markers()? {
            if file_holds_marker(&workdir.join(&path)).is_some_and(|f| f == m) {
                not_checked_out.push(path.display().to_string());
            }
        }
    }
    let report = Report {
        objects: objects.into_values().collect(),
        not_checked_out,
        cache: cache_usage(&ctx)?,
        archive: ctx.store.archive.location().to_owned(),
        archive_error,
        pre_push_hook: fs_err::read_to_string(ctx.repo.hooks_dir()?.join("pre-push"))
            .is_ok_and(|hook| hook.contains("fcache push")),
    };
    let mut out = io::stdout().lock();
    let printed = if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)
    } else {
        print_text(&mut out, &report)
    };
    match printed {
        // A reader that went away (`fcache status | head`) is not a failure.
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn yes_no(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "?",
    }
}

fn print_text(out: &mut dyn Write, r: &Report) -> io::Result<()> {
    let time = |t: &Option<Timestamp>| t.as_ref().map(clock::format).unwrap_or_else(|| "-".into());
    writeln!(out, "Objects known to this repository: {}", r.objects.len())?;
    if !r.objects.is_empty() {
        writeln!(
            out,
            "{:<64}  {:>12}  {:<20}  {:<20}  {:<5}  {:<7}  PATHS",
            "IDENTIFIER", "SIZE", "ADDED", "LAST USED", "CACHE", "ARCHIVE"
        )?;
    }
    for o in &r.objects {
        writeln!(
            out,
            "{}  {:>12}  {:<20}  {:<20}  {:<5}  {:<7}  {}{}",
            o.identifier,
            o.size,
            time(&o.added),
            time(&o.last_used),
            yes_no(Some(o.in_cache)),
            yes_no(o.in_archive),
            o.paths.join(", "),
            if o.missing { "  MISSING" } else { "" }
        )?;
    }
    let missing: Vec<_> = r.objects.iter().filter(|o| o.missing).collect();
    if !missing.is_empty() {
        writeln!(
            out,
            "\nMissing: {} object(s) in neither the cache nor the archive; whoever added them must run `fcache push`:",
            missing.len()
        )?;
        for o in missing {
            writeln!(out, "    {}  {}", o.identifier, o.paths.join(", "))?;
        }
    }
    if !r.not_checked_out.is_empty() {
        writeln!(
            out,
            "\nFiles holding a marker instead of their content (run `fcache pull`): {}",
            r.not_checked_out.len()
        )?;
        for p in &r.not_checked_out {
            writeln!(out, "    {p}")?;
        }
    }
    let c = &r.cache;
    let limit = |l: Option<u64>, unit: &str| match l {
        Some(l) => format!(" of {l}{unit}"),
        None => String::new(),
    };
    writeln!(
        out,
        "\nCache {}: {} object(s){}, {} bytes{}{}",
        c.dir,
        c.objects,
        limit(c.limit_files, ""),
        c.bytes,
        limit(c.limit_bytes, ""),
        if c.limit_files.is_none() && c.limit_bytes.is_none() {
            " (no limits set)"
        } else {
            ""
        }
    )?;
    if let Some(why) = &c.over_limit_reason {
        writeln!(out, "The cache is over its limit: {why}")?;
    }
    match &r.archive_error {
        Some(e) => writeln!(out, "Archive {}: cannot be reached: {e}", r.archive)?,
        None => writeln!(out, "Archive {}", r.archive)?,
    }
    if !r.pre_push_hook {
        writeln!(
            out,
            "The pre-push hook is not installed: run `fcache install` here, or `git push` will not send objects to the archive"
        )?;
    }
    Ok(())
}
