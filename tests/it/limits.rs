//! A limited cache: size and count limits, least-recently-used eviction that
//! never drops the only copy, objects larger than the limit, many processes
//! on one cache, and processes killed halfway.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

/// The identifiers in a user's cache.
fn cached_ids(user: &User) -> Vec<String> {
    user.cached_objects()
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches(".cache")
                .to_owned()
        })
        .collect()
}

fn archived_ids(env: &TestEnv) -> Vec<String> {
    files_under(&env.archive.join("objects"))
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
        .filter(|name| !name.starts_with("incoming-"))
        .collect()
}

/// Every object in the cache is whole: it hashes to its name.
fn assert_cache_consistent(user: &User) {
    for path in user.cached_objects() {
        let name = path.file_name().unwrap().to_str().unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(
            format!("{}.cache", sha256_hex(&bytes)),
            name,
            "torn or wrong object {}",
            path.display()
        );
    }
}

fn limited(env: &TestEnv, name: &str, key: &str, value: &str) -> User {
    let user = env.user(name);
    user.git(env.path(), ["config", "--global", key, value]);
    user
}

#[test]
fn a_count_limit_keeps_at_most_that_many_and_checkout_restores_everything() {
    let env = TestEnv::new();
    let alice = limited(&env, "alice", "fcache.cachemaxfiles", "3");
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| {
            (
                format!("f{i}.bin"),
                random_bytes(100 + i, 20_000 + i as usize),
            )
        })
        .collect();
    for (name, bytes) in &files {
        fs::write(repo.join(name), bytes).unwrap();
    }
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "six files"]);
    assert!(
        alice.cached_objects().len() <= 3,
        "{:?}",
        cached_ids(&alice)
    );
    // Everything evicted is in the archive: the limited cache archived each
    // object as it took it in.
    let archived = archived_ids(&env);
    for (_, bytes) in &files {
        assert!(archived.contains(&sha256_hex(bytes)));
    }
    assert_eq!(alice.git(&repo, ["status", "--porcelain"]), "");

    for (name, _) in &files {
        fs::remove_file(repo.join(name)).unwrap();
    }
    alice.git(&repo, ["checkout", "--", "."]);
    for (name, bytes) in &files {
        assert_eq!(&fs::read(repo.join(name)).unwrap(), bytes, "{name}");
    }
    assert!(
        alice.cached_objects().len() <= 3,
        "{:?}",
        cached_ids(&alice)
    );
    assert_eq!(alice.git(&repo, ["status", "--porcelain"]), "");
    let status = alice.fcache(&repo, ["status", "--json"]).success().stdout();
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(json["cache"]["limit_files"], 3);
    assert_eq!(json["cache"]["over_limit"], false);
    assert!(json["cache"]["objects"].as_u64().unwrap() <= 3);
}

#[test]
fn eviction_follows_least_recent_use_exactly() {
    let env = TestEnv::new();
    let alice = limited(&env, "alice", "fcache.cachelimit", "100KB");
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let blob = |i: u64| random_bytes(200 + i, 30_000);
    let at = |day: u32| alice.with_env("FCACHE_NOW", &format!("2026-03-{day:02}T12:00:00Z"));
    let add = |user: &User, name: &str, bytes: &[u8]| {
        let path = repo.join(name);
        fs::write(&path, bytes).unwrap();
        // An old modification time, so that git never finds the file racily
        // clean and cleans it again later (a clean counts as a use).
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
        user.git(&repo, ["add", name]);
    };
    add(&at(1), "a.bin", &blob(1));
    add(&at(2), "b.bin", &blob(2));
    add(&at(3), "c.bin", &blob(3));
    let id = |i: u64| sha256_hex(&blob(i));
    let mut expected = vec![id(1), id(2), id(3)];
    expected.sort();
    assert_eq!(cached_ids(&alice), expected);

    // a is used again on day 4, so b is now the least recently used.
    at(4).fcache(&repo, ["cat", "a.bin"]).success();
    add(&at(5), "d.bin", &blob(4));
    let mut expected = vec![id(1), id(3), id(4)];
    expected.sort();
    assert_eq!(cached_ids(&alice), expected, "b should have gone first");

    // Use c on day 6; adding e evicts a (last used day 4), not c or d.
    at(6).fcache(&repo, ["cat", "c.bin"]).success();
    add(&at(7), "e.bin", &blob(5));
    let mut expected = vec![id(3), id(4), id(5)];
    expected.sort();
    assert_eq!(cached_ids(&alice), expected, "a should have gone next");

    // Evicted objects are still to be had, from the archive; fetching b back
    // on day 8 makes room by evicting d (day 5).
    let b = at(8).fcache(&repo, ["cat", "b.bin"]).success();
    assert!(b.output.stdout == blob(2));
    let mut expected = vec![id(2), id(3), id(5)];
    expected.sort();
    assert_eq!(cached_ids(&alice), expected, "d should have gone");

    // Within the limits, gc --dry-run lists nothing. With a lower limit it
    // names what would go (c, used day 6, the oldest) and changes nothing.
    let dry = at(9).fcache(&repo, ["gc", "--dry-run"]).success();
    assert!(dry.stdout().is_empty(), "{}", dry.stdout());
    alice.git(
        env.path(),
        ["config", "--global", "fcache.cachelimit", "70KB"],
    );
    let dry = at(9).fcache(&repo, ["gc", "--dry-run"]).success();
    assert_eq!(cached_ids(&alice), expected);
    let listed = dry.stdout();
    let would: Vec<&str> = listed.lines().collect();
    assert_eq!(would.len(), 1, "{listed}");
    assert!(would[0].contains(&id(3)), "{would:?}");
    at(9).fcache(&repo, ["gc"]).success();
    let mut expected = vec![id(2), id(5)];
    expected.sort();
    assert_eq!(cached_ids(&alice), expected);
}

#[test]
fn a_file_larger_than_the_whole_limit_commits_pushes_and_restores() {
    let env = TestEnv::new();
    let alice = limited(&env, "alice", "fcache.cachelimit", "100KiB");
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let big = random_bytes(300, 400_000);
    let small = random_bytes(301, 10_000);
    fs::write(repo.join("big.bin"), &big).unwrap();
    fs::write(repo.join("small.bin"), &small).unwrap();
    let add = alice.run("git", &repo, ["add", "."]).success();
    assert!(
        add.stderr().contains(&sha256_hex(&big)) && add.stderr().contains("archive only"),
        "the user is told: {}",
        add.stderr()
    );
    alice.git(&repo, ["commit", "-q", "-m", "big"]);
    assert_eq!(cached_ids(&alice), vec![sha256_hex(&small)]);
    assert_eq!(fs::read(repo.join("big.bin")).unwrap(), big);
    let remote = env.bare(&alice, "remote.git");
    alice.git(&repo, ["push", "-q", remote.to_str().unwrap(), "main"]);

    let bob = limited(&env, "bob", "fcache.cachelimit", "100KiB");
    bob.git(
        env.path(),
        ["clone", "-q", remote.to_str().unwrap(), "clone"],
    );
    let clone = env.path().join("clone");
    assert_eq!(fs::read(clone.join("big.bin")).unwrap(), big);
    assert_eq!(fs::read(clone.join("small.bin")).unwrap(), small);
    assert_eq!(cached_ids(&bob), vec![sha256_hex(&small)]);
    assert_eq!(bob.git(&clone, ["status", "--porcelain"]), "");
    // Nothing was left in the cache's temporary area by the streamed checkout.
    assert!(files_under(&bob.cache.join("tmp")).is_empty());
    let cat = bob.fcache(&clone, ["cat", "big.bin"]).success();
    assert!(cat.output.stdout == big);
}

#[test]
fn an_unreachable_archive_keeps_objects_over_the_limit_and_status_says_why() {
    let env = TestEnv::new();
    let alice = limited(&env, "alice", "fcache.cachemaxfiles", "1");
    // The archive cannot be created: a file stands where its directory would be.
    fs::write(env.path().join("blocked"), b"").unwrap();
    let alice = User {
        archive: env.path().join("blocked/archive"),
        ..alice
    };
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    for i in 0..3 {
        fs::write(repo.join(format!("f{i}.bin")), random_bytes(400 + i, 5000)).unwrap();
    }
    let add = alice.run("git", &repo, ["add", "."]).success();
    assert!(
        add.stderr().contains("could not be sent to the archive"),
        "{}",
        add.stderr()
    );
    assert_eq!(alice.cached_objects().len(), 3, "nothing may be evicted");
    let status = alice.fcache(&repo, ["status"]).success().stdout();
    assert!(
        status.contains("over its limit") && status.contains("blocked/archive"),
        "{status}"
    );
    let gc = alice.fcache(&repo, ["gc"]).failure();
    assert!(gc.stderr().contains("kept"), "{}", gc.stderr());
    assert_eq!(alice.cached_objects().len(), 3);

    // Once the archive can be reached, gc archives them and evicts.
    fs::remove_file(env.path().join("blocked")).unwrap();
    alice.fcache(&repo, ["gc"]).success();
    assert_eq!(alice.cached_objects().len(), 1);
    // The two evicted went to the archive first; the one kept was never needed there.
    assert_eq!(
        files_under(&env.path().join("blocked/archive/objects")).len(),
        2
    );
}

#[test]
fn many_processes_on_one_tightly_limited_cache_lose_nothing() {
    let env = TestEnv::new();
    let alice = limited(&env, "alice", "fcache.cachemaxfiles", "3");
    alice.git(
        env.path(),
        ["config", "--global", "fcache.cachelimit", "150KB"],
    );
    let blobs: Vec<Vec<u8>> = (0..10)
        .map(|i| random_bytes(500 + i, 20_000 + 999 * i as usize))
        .collect();
    let repos: Vec<PathBuf> = ["one", "two"]
        .iter()
        .map(|n| alice.repo(&env, n, &["*.bin"]))
        .collect();
    std::thread::scope(|s| {
        // In each repository, a writer commits overlapping sets of files and
        // checks them out again, over and over.
        for (r, repo) in repos.iter().enumerate() {
            let (alice, blobs) = (&alice, &blobs);
            s.spawn(move || {
                for round in 0..4 {
                    let picked: Vec<usize> = (0..4)
                        .map(|k| (r * 3 + round * 2 + k) % blobs.len())
                        .collect();
                    for (k, &b) in picked.iter().enumerate() {
                        fs::write(repo.join(format!("f{k}.bin")), &blobs[b]).unwrap();
                    }
                    alice.git(repo, ["add", "."]);
                    alice.git(repo, ["commit", "-q", "--allow-empty", "-m", "round"]);
                    for k in 0..4 {
                        fs::remove_file(repo.join(format!("f{k}.bin"))).unwrap();
                    }
                    alice.git(repo, ["checkout", "--", "."]);
                    for (k, &b) in picked.iter().enumerate() {
                        assert!(
                            fs::read(repo.join(format!("f{k}.bin"))).unwrap() == blobs[b],
                            "wrong bytes in {} f{k}.bin",
                            repo.display()
                        );
                    }
                }
            });
        }
        // Meanwhile other processes clean and smudge the same objects.
        for t in 0..3 {
            let (alice, blobs, repo) = (&alice, &blobs, &repos[t % 2]);
            s.spawn(move || {
                for i in 0..6 {
                    let blob = &blobs[(t * 5 + i) % blobs.len()];
                    let marker = alice
                        .pipe("fcache", repo, &["clean", "--", "x.bin"], blob)
                        .success()
                        .stdout();
                    assert_eq!(marker, marker_for(blob));
                    let back = alice
                        .pipe(
                            "fcache",
                            repo,
                            &["smudge", "--", "x.bin"],
                            marker.as_bytes(),
                        )
                        .success();
                    assert!(back.output.stdout == *blob, "smudge gave wrong bytes");
                }
            });
        }
        // And gc runs now and then.
        let (alice, repo) = (&alice, &repos[0]);
        s.spawn(move || {
            for _ in 0..5 {
                alice.fcache(repo, ["gc"]).success();
                std::thread::sleep(Duration::from_millis(30));
            }
        });
    });
    alice.fcache(&repos[0], ["gc"]).success();
    assert!(alice.cached_objects().len() <= 3);
    assert_cache_consistent(&alice);
    // No object was lost: each is in the cache or the archive, whole.
    for blob in &blobs {
        let id = sha256_hex(blob);
        let cat = alice.fcache(&repos[0], ["cat", &id]).success();
        assert!(cat.output.stdout == *blob, "object {id} lost or wrong");
    }
}

/// Write part of a big input into `fcache clean`, then SIGKILL it.
fn kill_clean_midway(user: &User, repo: &Path, seed: u64) {
    let mut child = user
        .command("fcache", repo)
        .args(["clean", "--", "huge.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&random_bytes(seed, 4 << 20)).unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn sigkill_in_the_middle_of_add_or_gc_leaves_everything_retrievable() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let blobs: Vec<Vec<u8>> = (0..24).map(|i| random_bytes(600 + i, 300_000)).collect();
    for (i, b) in blobs.iter().enumerate() {
        fs::write(repo.join(format!("f{i:02}.bin")), b).unwrap();
    }
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "data"]);

    // Killed while adding: no object appears for the half-read input, the
    // others are untouched; what is left is a temporary file that gc sweeps
    // once it is old.
    kill_clean_midway(&alice, &repo, 700);
    assert_eq!(alice.cached_objects().len(), blobs.len());
    assert_cache_consistent(&alice);
    let leftovers = files_under(&alice.cache.join("tmp"));
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    alice.fcache(&repo, ["gc"]).success();
    assert_eq!(
        files_under(&alice.cache.join("tmp")).len(),
        1,
        "a fresh temp file stays"
    );
    let old = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    fs::File::options()
        .write(true)
        .open(&leftovers[0])
        .unwrap()
        .set_modified(old)
        .unwrap();
    alice.fcache(&repo, ["gc"]).success();
    assert!(files_under(&alice.cache.join("tmp")).is_empty());

    // Killed during gc, at several moments: gc first archives the objects
    // it evicts, so however far it got, every object is somewhere, whole.
    for delay_ms in [5, 20, 35, 50, 150] {
        alice.git(
            env.path(),
            ["config", "--global", "fcache.cachemaxfiles", "2"],
        );
        let mut gc = alice
            .command("fcache", &repo)
            .arg("gc")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = gc.kill();
        gc.wait().unwrap();
        assert_cache_consistent(&alice);
        let cached = cached_ids(&alice);
        let archived = archived_ids(&env);
        eprintln!(
            "gc killed at {delay_ms} ms: {} cached, {} archived",
            cached.len(),
            archived.len()
        );
        for b in &blobs {
            let id = sha256_hex(b);
            assert!(
                cached.contains(&id) || archived.contains(&id),
                "object {id} lost after gc was killed at {delay_ms} ms"
            );
        }
        // Whole under its name, or not there; a temporary file the killed
        // gc was still writing does not count.
        for path in files_under(&env.archive.join("objects")) {
            if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("incoming-")
            {
                continue;
            }
            let bytes = fs::read(&path).unwrap();
            assert_eq!(
                sha256_hex(&bytes),
                path.file_name().unwrap().to_str().unwrap()
            );
        }
        // Put back what this round evicted, for the next round.
        alice.git(
            env.path(),
            ["config", "--global", "--unset", "fcache.cachemaxfiles"],
        );
        alice.fcache(&repo, ["fetch"]).success();
        assert_eq!(alice.cached_objects().len(), blobs.len());
    }
    alice.git(
        env.path(),
        ["config", "--global", "fcache.cachemaxfiles", "2"],
    );
    alice.fcache(&repo, ["gc"]).success();
    assert_eq!(alice.cached_objects().len(), 2);
    for (i, b) in blobs.iter().enumerate() {
        let cat = alice
            .fcache(&repo, ["cat", &format!("f{i:02}.bin")])
            .success();
        assert!(cat.output.stdout == *b, "f{i:02}.bin");
    }
}
