//! The index in each format (`fcache.index` = csv, json, sqlite) through real
//! git: switching formats, concurrent writers, a writer killed mid-save, a
//! corrupt file, and rebuilding.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

const FORMATS: [&str; 3] = ["csv", "json", "sqlite"];

fn index_file(repo: &Path, format: &str) -> PathBuf {
    repo.join(".git/fcache").join(format!("index.{format}"))
}

/// What `fcache status --json` says the index holds: identifier → (added, last_used).
fn indexed(user: &User, repo: &Path) -> BTreeMap<String, (String, String)> {
    let out = user.fcache(repo, ["status", "--json"]).success().stdout();
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["objects"]
        .as_array()
        .unwrap()
        .iter()
        // Objects only HEAD's markers name, which the index lacks, have no timestamps.
        .filter(|o| !o["added"].is_null())
        .map(|o| {
            (
                o["identifier"].as_str().unwrap().to_owned(),
                (
                    o["added"].as_str().unwrap().to_owned(),
                    o["last_used"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

fn ids(map: &BTreeMap<String, (String, String)>) -> Vec<String> {
    map.keys().cloned().collect()
}

/// A repository using `format` whose objects are spread over history: one
/// only in an old commit, one only on another branch, one only staged.
/// Returns the repository and every identifier it references.
fn repo_with_history(env: &TestEnv, user: &User, format: &str) -> (PathBuf, Vec<String>) {
    let repo = user.repo(env, "repo", &["*.bin"]);
    user.git(&repo, ["config", "fcache.index", format]);
    let files: Vec<Vec<u8>> = (0..5).map(|i| random_bytes(40 + i, 3000)).collect();
    fs::write(repo.join("a.bin"), &files[0]).unwrap();
    fs::write(repo.join("b.bin"), &files[1]).unwrap();
    user.git(&repo, ["add", "."]);
    user.git(&repo, ["commit", "-q", "-m", "first"]);
    fs::write(repo.join("a.bin"), &files[2]).unwrap();
    user.git(&repo, ["commit", "-q", "-am", "a changes"]);
    user.git(&repo, ["checkout", "-q", "-b", "side"]);
    fs::write(repo.join("c.bin"), &files[3]).unwrap();
    user.git(&repo, ["add", "c.bin"]);
    user.git(&repo, ["commit", "-q", "-m", "side"]);
    user.git(&repo, ["checkout", "-q", "main"]);
    fs::write(repo.join("d.bin"), &files[4]).unwrap();
    user.git(&repo, ["add", "d.bin"]);
    let mut all: Vec<String> = files.iter().map(|f| sha256_hex(f)).collect();
    all.sort();
    assert_eq!(ids(&indexed(user, &repo)), all);
    assert!(index_file(&repo, format).is_file());
    (repo, all)
}

/// Only `format`'s file is left in `.git/fcache`.
fn only_file_is(repo: &Path, format: &str) {
    for f in FORMATS {
        assert_eq!(
            index_file(repo, f).exists(),
            f == format,
            "index.{f} with fcache.index = {format}"
        );
    }
}

#[test]
fn switching_format_in_a_repository_with_history_keeps_every_entry() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let (repo, mut all) = repo_with_history(&env, &alice, "csv");
    let before = indexed(&alice, &repo);

    for (n, format) in ["json", "sqlite", "csv", "sqlite", "json", "csv"]
        .into_iter()
        .enumerate()
    {
        alice.git(&repo, ["config", "fcache.index", format]);
        let after = indexed(&alice, &repo);
        // Every entry, with its timestamps (git may have cleaned a file again
        // meanwhile, which uses it later), plus what was added meanwhile.
        for (id, (added, last_used)) in &before {
            let (now_added, now_last_used) = &after[id];
            assert_eq!(now_added, added, "{id} after switching to {format}");
            assert!(
                now_last_used >= last_used,
                "{id} after switching to {format}"
            );
        }
        assert_eq!(ids(&after), all, "after switching to {format}");
        only_file_is(&repo, format);
        // Work goes on in the new format.
        let data = random_bytes(100 + n as u64, 2000);
        fs::write(repo.join(format!("new{n}.bin")), &data).unwrap();
        alice.git(&repo, ["add", "."]);
        all.push(sha256_hex(&data));
        all.sort();
        assert_eq!(ids(&indexed(&alice, &repo)), all, "adding in {format}");
    }
    let text = alice.fcache(&repo, ["status"]).success().stdout();
    assert!(
        text.contains(&format!("Objects known to this repository: {}", all.len())),
        "{text}"
    );
    for id in &all {
        assert!(text.contains(id.as_str()), "status lacks {id}:\n{text}");
    }
}

#[test]
fn index_convert_moves_every_entry_and_sets_the_format() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let (repo, all) = repo_with_history(&env, &alice, "json");
    let before = indexed(&alice, &repo);

    let out = alice
        .fcache(&repo, ["index", "convert", "--to", "sqlite"])
        .success()
        .stdout();
    assert!(
        out.contains("5 entries") && out.contains("index.json"),
        "{out}"
    );
    assert_eq!(alice.git(&repo, ["config", "fcache.index"]), "sqlite\n");
    only_file_is(&repo, "sqlite");
    assert_eq!(indexed(&alice, &repo), before);

    let again = alice
        .fcache(&repo, ["index", "convert", "--to", "sqlite"])
        .success()
        .stdout();
    assert!(again.contains("already sqlite"), "{again}");
    let bad = alice
        .fcache(&repo, ["index", "convert", "--to", "yaml"])
        .failure();
    assert!(
        bad.stderr().contains("csv, json or sqlite"),
        "{}",
        bad.stderr()
    );
    assert_eq!(ids(&indexed(&alice, &repo)), all);
}

fn concurrent_writers_lose_no_entry(format: &str) {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &[]);
    alice.git(&repo, ["config", "fcache.index", format]);
    // Two writers, each a stream of clean processes, saving all the time.
    let per_writer = 12u64;
    let mut expected: Vec<String> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let (alice, repo) = (&alice, &repo);
                s.spawn(move || {
                    (0..per_writer)
                        .map(|k| {
                            let data = random_bytes(1000 + w * 100 + k, 1000);
                            alice
                                .pipe("fcache", repo, &["clean", "--", "f.bin"], &data)
                                .success();
                            sha256_hex(&data)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        writers
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    expected.sort();
    assert_eq!(ids(&indexed(&alice, &repo)), expected);
    only_file_is(&repo, format);
}

#[test]
fn concurrent_writers_lose_no_entry_csv() {
    concurrent_writers_lose_no_entry("csv");
}

#[test]
fn concurrent_writers_lose_no_entry_json() {
    concurrent_writers_lose_no_entry("json");
}

#[test]
fn concurrent_writers_lose_no_entry_sqlite() {
    concurrent_writers_lose_no_entry("sqlite");
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn killed_mid_save_leaves_the_old_state(format: &str) {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let (repo, all) = repo_with_history(&env, &alice, format);
    let before = indexed(&alice, &repo);
    let file = index_file(&repo, format);
    let old_bytes = fs::read(&file).unwrap();

    // A clean filter that stops half way through writing the index, killed there.
    let signal = env.path().join("paused");
    let mut cmd = alice.command("fcache", &repo);
    cmd.args(["clean", "--", "new.bin"])
        .env("FCACHE_TEST_PAUSE_IN_SAVE", &signal)
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let new = random_bytes(77, 5000);
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&new).unwrap();
    }
    wait_for(&signal);
    child.kill().unwrap(); // SIGKILL: no destructor, no cleanup runs.
    assert!(!child.wait().unwrap().success());

    // It really was mid-save: a half-written temporary file, or SQLite's
    // journal of an uncommitted transaction.
    let dir = repo.join(".git/fcache");
    let leftovers: Vec<PathBuf> = files_under(&dir)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(&format!(".index.{format}.")) || name == "index.sqlite-journal"
        })
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    if format != "sqlite" {
        let torn = fs::read_to_string(&leftovers[0]).unwrap();
        assert!(torn.len() < old_bytes.len(), "{torn}");
        // The file in place is untouched, byte for byte.
        assert_eq!(fs::read(&file).unwrap(), old_bytes);
    }

    // The old state, whole.
    assert_eq!(indexed(&alice, &repo), before);
    // And the next writer works, leaving nothing behind.
    alice
        .pipe("fcache", &repo, &["clean", "--", "new.bin"], &new)
        .success();
    let mut expected = all.clone();
    expected.push(sha256_hex(&new));
    expected.sort();
    assert_eq!(ids(&indexed(&alice, &repo)), expected);
    for p in leftovers {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

#[test]
fn killed_mid_save_leaves_the_old_state_csv() {
    killed_mid_save_leaves_the_old_state("csv");
}

#[test]
fn killed_mid_save_leaves_the_old_state_json() {
    killed_mid_save_leaves_the_old_state("json");
}

#[test]
fn killed_mid_save_leaves_the_old_state_sqlite() {
    killed_mid_save_leaves_the_old_state("sqlite");
}

#[test]
fn a_switch_killed_mid_carry_over_loses_nothing() {
    for (from, to) in [("csv", "sqlite"), ("sqlite", "json")] {
        let env = TestEnv::new();
        let alice = env.user("alice");
        let (repo, _) = repo_with_history(&env, &alice, from);
        let before = indexed(&alice, &repo);
        let old_bytes = fs::read(index_file(&repo, from)).unwrap();

        alice.git(&repo, ["config", "fcache.index", to]);
        let signal = env.path().join("paused");
        let mut child = alice
            .command("fcache", &repo)
            .args(["status"])
            .env("FCACHE_TEST_PAUSE_IN_SAVE", &signal)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(&signal);
        child.kill().unwrap();
        child.wait().unwrap();
        // The old file is untouched; the new one is absent or not yet committed.
        assert_eq!(
            fs::read(index_file(&repo, from)).unwrap(),
            old_bytes,
            "{from} -> {to}"
        );

        assert_eq!(indexed(&alice, &repo), before, "{from} -> {to}");
        only_file_is(&repo, to);
    }
}

/// Damage the index as a bad hand edit or a broken disk would; returns what
/// the error must say about where.
fn corrupt(file: &Path, format: &str) -> &'static str {
    match format {
        "csv" => {
            let text = fs::read_to_string(file).unwrap();
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            lines[3] = lines[3].replacen(",3000,", ",3 kB,", 1);
            fs::write(file, lines.join("\n") + "\n").unwrap();
            "at line 4: invalid size \"3 kB\""
        }
        "json" => {
            let text = fs::read_to_string(file).unwrap();
            // Cut off mid-entry, as a truncated copy would be.
            let cut = text.find("\"size\"").unwrap();
            fs::write(file, &text[..cut]).unwrap();
            "at line 4, column"
        }
        "sqlite" => {
            let mut bytes = fs::read(file).unwrap();
            bytes[..100].copy_from_slice(&[b'#'; 100]);
            fs::write(file, bytes).unwrap();
            "file is not a database"
        }
        _ => unreachable!(),
    }
}

fn corrupt_index_is_named_and_rebuilt(format: &str) {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let (repo, all) = repo_with_history(&env, &alice, format);
    let before = indexed(&alice, &repo);
    let file = index_file(&repo, format);
    let damaged_at = corrupt(&file, format);
    let damaged = fs::read(&file).unwrap();

    for args in [&["status"][..], &["index", "convert", "--to", "csv"][..]] {
        let run = alice.fcache(&repo, args).failure();
        let err = run.stderr();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains(damaged_at), "{err}");
        assert!(err.contains("fcache index rebuild"), "{err}");
    }
    // git add fails rather than dropping the new entry.
    fs::write(repo.join("e.bin"), random_bytes(9, 100)).unwrap();
    let add = alice.run("git", &repo, ["add", "e.bin"]).failure();
    assert!(
        add.stderr().contains("fcache index rebuild"),
        "{}",
        add.stderr()
    );
    fs::remove_file(repo.join("e.bin")).unwrap();

    let rebuilt = alice.fcache(&repo, ["index", "rebuild"]).success();
    assert!(
        rebuilt.stderr().contains("could not be read; moved it to"),
        "{}",
        rebuilt.stderr()
    );
    assert!(
        rebuilt.stdout().contains("5 entries, 5 recovered"),
        "{}",
        rebuilt.stdout()
    );
    // The damaged file is kept, byte for byte, beside the new one.
    let aside: Vec<PathBuf> = files_under(&repo.join(".git/fcache"))
        .into_iter()
        .filter(|p| {
            p.to_string_lossy()
                .contains(&format!("index.{format}.corrupt-"))
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(fs::read(&aside[0]).unwrap(), damaged);

    let after = indexed(&alice, &repo);
    assert_eq!(ids(&after), all);
    // Recovered entries are dated by when the cache got each object, which
    // was when it was first added: the cache file is made just before the
    // index notes the object, so the two may straddle a second.
    let time = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
    for (id, (added, _)) in &after {
        let (recovered, noted) = (time(added), time(&before[id].0));
        assert!(
            recovered <= noted && noted - recovered <= chrono::TimeDelta::seconds(1),
            "{id}: recovered {added}, noted {}",
            before[id].0
        );
    }
    only_file_is(&repo, format);
}

#[test]
fn corrupt_index_is_named_and_rebuilt_csv() {
    corrupt_index_is_named_and_rebuilt("csv");
}

#[test]
fn corrupt_index_is_named_and_rebuilt_json() {
    corrupt_index_is_named_and_rebuilt("json");
}

#[test]
fn corrupt_index_is_named_and_rebuilt_sqlite() {
    corrupt_index_is_named_and_rebuilt("sqlite");
}

#[test]
fn rebuild_recovers_a_deleted_index_and_keeps_what_a_live_one_knows() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let (repo, all) = repo_with_history(&env, &alice, "sqlite");
    // An identifier the repository no longer references: only the index knows it.
    let orphan = random_bytes(55, 100);
    alice
        .pipe("fcache", &repo, &["clean", "--", "gone.bin"], &orphan)
        .success();
    let before = indexed(&alice, &repo);
    assert_eq!(before.len(), all.len() + 1);

    // A live index: nothing is lost, nothing is changed.
    let out = alice.fcache(&repo, ["index", "rebuild"]).success().stdout();
    assert!(out.contains("6 entries, 0 recovered"), "{out}");
    assert_eq!(indexed(&alice, &repo), before);

    // A deleted one: everything the repository references comes back.
    fs::remove_file(index_file(&repo, "sqlite")).unwrap();
    let out = alice.fcache(&repo, ["index", "rebuild"]).success().stdout();
    assert!(out.contains("5 entries, 5 recovered"), "{out}");
    assert_eq!(ids(&indexed(&alice, &repo)), all);
}
