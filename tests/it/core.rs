//! The core workflow through real git: track, add, commit, push, clone.

use std::fs;

use crate::common::*;

#[test]
fn add_and_commit_store_a_marker_in_git_and_the_bytes_in_the_cache() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let data = random_bytes(1, 300_000);
    fs::write(repo.join("data.bin"), &data).unwrap();
    fs::write(repo.join("notes.txt"), "not tracked\n").unwrap();
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "data"]);

    let blob = alice.git(&repo, ["cat-file", "-p", "HEAD:data.bin"]);
    assert_eq!(blob, marker_for(&data));
    assert_eq!(
        alice.git(&repo, ["cat-file", "-p", "HEAD:notes.txt"]),
        "not tracked\n"
    );
    assert_eq!(fs::read(repo.join("data.bin")).unwrap(), data);
    assert_eq!(alice.git(&repo, ["status", "--porcelain"]), "");

    let id = sha256_hex(&data);
    let object = alice.cached(&id);
    assert_eq!(fs::read(&object).unwrap(), data);
    assert!(fs::metadata(&object).unwrap().permissions().readonly());

    let index = fs::read_to_string(repo.join(".git/fcache/index.csv")).unwrap();
    let mut lines = index.lines();
    assert_eq!(lines.next(), Some("identifier,size,added,last_used"));
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(row[0], id);
    assert_eq!(row[1], "300000");
    assert!(row[2].ends_with('Z') && row[2].contains('T'), "{row:?}");
    assert_eq!(lines.next(), None);
}

#[test]
fn the_same_bytes_in_two_repositories_are_stored_once() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let data = random_bytes(2, 50_000);
    for name in ["one", "two"] {
        let repo = alice.repo(&env, name, &["*.bin"]);
        fs::write(repo.join("shared.bin"), &data).unwrap();
        alice.git(&repo, ["add", "shared.bin"]);
        alice.git(&repo, ["commit", "-q", "-m", "add"]);
    }
    assert_eq!(alice.cached_objects().len(), 1);
    // Nothing was left behind in the cache's temporary area either.
    assert!(files_under(&alice.cache.join("tmp")).is_empty());
}

#[test]
fn push_then_clone_as_another_user_restores_every_file() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &["*.bin", "*.dat"]);
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("big.bin", random_bytes(3, 2 << 20)),
        ("empty.bin", Vec::new()),
        ("one.dat", b"x".to_vec()),
        ("sub/dir/nested.bin", random_bytes(4, 70_000)),
    ];
    for (name, bytes) in &files {
        let path = repo.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "data"]);
    // An empty file stays empty in git too, as in git-lfs.
    assert_eq!(
        alice.git(&repo, ["cat-file", "-s", "HEAD:empty.bin"]),
        "0\n"
    );
    let remote = env.bare(&alice, "remote.git");
    alice.git(&repo, ["remote", "add", "origin", remote.to_str().unwrap()]);
    let push = alice
        .run("git", &repo, ["push", "-q", "origin", "main"])
        .success();
    assert!(
        push.stderr().contains("sent 3 object(s)"),
        "{}",
        push.stderr()
    );

    let bob = env.user("bob");
    assert!(bob.cached_objects().is_empty());
    let clone = env.path().join("clone");
    bob.git(
        env.path(),
        ["clone", "-q", remote.to_str().unwrap(), "clone"],
    );
    for (name, bytes) in &files {
        assert_eq!(&fs::read(clone.join(name)).unwrap(), bytes, "{name}");
    }
    assert_eq!(bob.git(&clone, ["status", "--porcelain"]), "");
    assert_eq!(bob.cached_objects().len(), 3);
}

#[test]
fn skip_smudge_leaves_markers_and_pull_replaces_them() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let data = random_bytes(5, 10_000);
    fs::write(repo.join("a.bin"), &data).unwrap();
    fs::write(repo.join("b.bin"), b"second file\n").unwrap();
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "data"]);
    let remote = env.bare(&alice, "remote.git");
    alice.git(&repo, ["push", "-q", remote.to_str().unwrap(), "main"]);

    let bob = env.user("bob");
    let lazy = bob.with_env("FCACHE_SKIP_SMUDGE", "1");
    lazy.git(
        env.path(),
        ["clone", "-q", remote.to_str().unwrap(), "clone"],
    );
    let clone = env.path().join("clone");
    assert_eq!(
        fs::read_to_string(clone.join("a.bin")).unwrap(),
        marker_for(&data)
    );
    assert!(bob.cached_objects().is_empty());
    let status = bob.fcache(&clone, ["status"]).success().stdout();
    assert!(
        status.contains("a.bin") && status.contains("fcache pull"),
        "{status}"
    );

    bob.fcache(&clone, ["pull"]).success();
    assert_eq!(fs::read(clone.join("a.bin")).unwrap(), data);
    assert_eq!(fs::read(clone.join("b.bin")).unwrap(), b"second file\n");
    assert_eq!(bob.git(&clone, ["status", "--porcelain"]), "");
    let status = bob.fcache(&clone, ["status", "--json"]).success().stdout();
    let json: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(json["not_checked_out"].as_array().unwrap().len(), 0);
    // A clone brings no hooks: status says so until `fcache install` runs here.
    assert_eq!(json["pre_push_hook"], false);
    bob.fcache(&clone, ["install"]).success();
    let json: serde_json::Value =
        serde_json::from_str(&bob.fcache(&clone, ["status", "--json"]).success().stdout()).unwrap();
    assert_eq!(json["pre_push_hook"], true);
    assert_eq!(json["objects"].as_array().unwrap().len(), 2);
}

/// A repository with one committed, pushed object; returns (env, alice, repo, data).
fn committed_and_pushed() -> (TestEnv, User, std::path::PathBuf, Vec<u8>) {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let data = random_bytes(6, 100_000);
    fs::write(repo.join("data.bin"), &data).unwrap();
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "data"]);
    alice.fcache(&repo, ["push"]).success();
    (env, alice, repo, data)
}

#[test]
fn a_corrupt_cache_object_is_fetched_again_never_handed_out() {
    let (_env, alice, repo, data) = committed_and_pushed();
    let object = alice.cached_objects().pop().unwrap();
    let mut bad = data.clone();
    bad[500] ^= 1;
    overwrite(&object, &bad);

    fs::remove_file(repo.join("data.bin")).unwrap();
    alice.git(&repo, ["checkout", "--", "data.bin"]);
    assert_eq!(fs::read(repo.join("data.bin")).unwrap(), data);
    // The good copy from the archive replaced the corrupt one; the bad one is kept aside.
    assert_eq!(fs::read(&object).unwrap(), data);
    assert_eq!(files_under(&alice.cache.join("quarantine")).len(), 1);
}

#[test]
fn fcache_checkout_never_writes_a_corrupt_cached_copy() {
    let (_env, alice, repo, data) = committed_and_pushed();
    // A work tree holding markers, as after a clone without smudge.
    fs::remove_file(repo.join("data.bin")).unwrap();
    alice
        .with_env("FCACHE_SKIP_SMUDGE", "1")
        .git(&repo, ["checkout", "--", "data.bin"]);
    let object = alice.cached_objects().pop().unwrap();
    let mut bad = data.clone();
    bad[70_000] ^= 1;
    overwrite(&object, &bad);

    // The copy from the cache is checked as it is written; the damage sends
    // checkout to the archive, and only the right bytes are renamed into view.
    alice.fcache(&repo, ["checkout"]).success();
    assert!(fs::read(repo.join("data.bin")).unwrap() == data);
    assert!(fs::read(&object).unwrap() == data);
    assert_eq!(files_under(&alice.cache.join("quarantine")).len(), 1);
    assert_eq!(alice.git(&repo, ["status", "--porcelain"]), "");
    // No temporary file is left beside it.
    let left: Vec<_> = fs::read_dir(&repo)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".fcache-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_corrupt_object_with_no_other_copy_is_an_error_naming_it() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let data = random_bytes(7, 5000);
    fs::write(repo.join("data.bin"), &data).unwrap();
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "data"]);
    let id = sha256_hex(&data);
    overwrite(&alice.cached_objects()[0], b"rotten");

    let cat = alice.fcache(&repo, ["cat", "data.bin"]).failure();
    assert!(cat.stderr().contains(&id), "{}", cat.stderr());
    assert!(cat.stdout().is_empty(), "corrupt bytes were handed out");
    assert_eq!(cat.stderr().trim().lines().count(), 1, "{}", cat.stderr());

    // Smudge leaves the marker rather than the corrupt bytes.
    fs::remove_file(repo.join("data.bin")).unwrap();
    let checkout = alice
        .run("git", &repo, ["checkout", "--", "data.bin"])
        .success();
    assert!(checkout.stderr().contains(&id), "{}", checkout.stderr());
    assert_eq!(
        fs::read_to_string(repo.join("data.bin")).unwrap(),
        marker_for(&data)
    );
}

#[test]
fn fsck_reports_and_quarantines_corrupt_objects() {
    let (_env, alice, repo, data) = committed_and_pushed();
    alice.fcache(&repo, ["fsck"]).success();
    let object = alice.cached_objects().pop().unwrap();
    overwrite(&object, &data[..data.len() - 1]);
    let fsck = alice.fcache(&repo, ["fsck"]).failure();
    let id = sha256_hex(&data);
    assert!(fsck.stderr().contains(&id), "{}", fsck.stderr());
    assert!(!object.exists());
    assert_eq!(files_under(&alice.cache.join("quarantine")).len(), 1);
    alice.fcache(&repo, ["fsck", "--archive"]).success();
    // With the corrupt copy gone, the object comes back from the archive.
    alice.fcache(&repo, ["fetch"]).success();
    assert_eq!(fs::read(&object).unwrap(), data);
}

#[test]
fn a_missing_object_leaves_its_marker_and_a_warning_and_strict_fails() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let kept = random_bytes(8, 4000);
    let lost = random_bytes(9, 4000);
    fs::write(repo.join("kept.bin"), &kept).unwrap();
    fs::write(repo.join("lost.bin"), &lost).unwrap();
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "data"]);
    let remote = env.bare(&alice, "remote.git");
    alice.git(&repo, ["push", "-q", remote.to_str().unwrap(), "main"]);
    let lost_id = sha256_hex(&lost);
    let archived = files_under(&env.archive.join("objects"));
    let lost_path = archived.iter().find(|p| p.ends_with(&lost_id)).unwrap();
    fs::remove_file(lost_path).unwrap();

    let bob = env.user("bob");
    let clone = bob
        .run(
            "git",
            env.path(),
            ["clone", remote.to_str().unwrap(), "clone"],
        )
        .success();
    let warning = clone.stderr();
    assert!(
        warning.contains("lost.bin")
            && warning.contains(&lost_id)
            && warning.contains("fcache pull"),
        "{warning}"
    );
    let dir = env.path().join("clone");
    assert_eq!(fs::read(dir.join("kept.bin")).unwrap(), kept);
    assert_eq!(
        fs::read_to_string(dir.join("lost.bin")).unwrap(),
        marker_for(&lost)
    );
    assert_eq!(bob.git(&dir, ["status", "--porcelain"]), "");

    let status = bob.fcache(&dir, ["status"]).success().stdout();
    assert!(status.contains("Missing: 1"), "{status}");
    let json: serde_json::Value =
        serde_json::from_str(&bob.fcache(&dir, ["status", "--json"]).success().stdout()).unwrap();
    let missing: Vec<_> = json["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["missing"] == true)
        .map(|o| o["identifier"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(missing, vec![lost_id.clone()]);

    // Once the archive has it again, pull completes the work tree.
    alice.fcache(&repo, ["push"]).success();
    bob.fcache(&dir, ["pull"]).success();
    assert_eq!(fs::read(dir.join("lost.bin")).unwrap(), lost);

    // With strict, the same clone fails instead.
    fs::remove_file(lost_path).unwrap();
    let carol = env.user("carol").with_env("FCACHE_STRICT", "1");
    let strict = carol
        .run(
            "git",
            env.path(),
            ["clone", remote.to_str().unwrap(), "strict"],
        )
        .failure();
    assert!(strict.stderr().contains(&lost_id), "{}", strict.stderr());
    // fcache.strict in git config works the same.
    let dave = env.user("dave");
    dave.git(env.path(), ["config", "--global", "fcache.strict", "true"]);
    dave.run(
        "git",
        env.path(),
        ["clone", remote.to_str().unwrap(), "strict2"],
    )
    .failure();
}

#[test]
fn unusual_file_names_work() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let names = [
        "with space.bin",
        "naïve données.bin",
        "-leading-dash.bin",
        "日本.bin",
    ];
    for (i, name) in names.iter().enumerate() {
        fs::write(repo.join(name), random_bytes(10 + i as u64, 3000)).unwrap();
    }
    alice.git(&repo, ["add", "--", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "names"]);
    for name in names {
        let blob = alice.git(&repo, ["cat-file", "-p", &format!("HEAD:{name}")]);
        assert!(
            blob.starts_with("version https://git-lfs"),
            "{name}: {blob}"
        );
    }
    let remote = env.bare(&alice, "remote.git");
    alice.git(&repo, ["push", "-q", remote.to_str().unwrap(), "main"]);
    let bob = env.user("bob");
    bob.git(
        env.path(),
        ["clone", "-q", remote.to_str().unwrap(), "clone"],
    );
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            fs::read(env.path().join("clone").join(name)).unwrap(),
            random_bytes(10 + i as u64, 3000),
            "{name}"
        );
    }
    // Tracking a single file whose name has a space, and cat by such a path.
    fs::write(repo.join("my data.csv"), "a,b\n1,2\n").unwrap();
    alice.fcache(&repo, ["track", "my data.csv"]).success();
    alice.git(&repo, ["add", "."]);
    let blob = alice.git(&repo, ["cat-file", "-p", ":my data.csv"]);
    assert!(blob.starts_with("version https://git-lfs"), "{blob}");
    let cat = alice
        .fcache(&repo, ["cat", "--", "-leading-dash.bin"])
        .success();
    assert_eq!(cat.output.stdout, random_bytes(12, 3000));
}

#[test]
fn install_is_idempotent_and_respects_existing_hooks() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    alice.fcache(env.path(), ["install"]).success();
    let config = alice.git(
        env.path(),
        ["config", "--global", "--get-regexp", "^filter\\.fcache"],
    );
    assert_eq!(config.lines().count(), 4, "{config}");
    assert!(config.contains("filter.fcache.required true"), "{config}");
    assert!(
        config.contains("filter.fcache.process fcache filter-process"),
        "{config}"
    );

    let repo = alice.repo(&env, "repo", &[]);
    let hook = repo.join(".git/hooks/pre-push");
    assert!(fs::read_to_string(&hook).unwrap().contains("fcache push"));
    alice.fcache(&repo, ["install"]).success();

    // A user's own hook is never overwritten silently.
    let other = alice.repo(&env, "other", &[]);
    let mine = "#!/bin/sh\necho mine\n";
    fs::write(other.join(".git/hooks/pre-push"), mine).unwrap();
    let run = alice.fcache(&other, ["install"]).success();
    assert!(run.stderr().contains("pre-push"), "{}", run.stderr());
    assert_eq!(
        fs::read_to_string(other.join(".git/hooks/pre-push")).unwrap(),
        mine
    );

    // core.hooksPath is respected.
    let custom = alice.repo(&env, "custom", &[]);
    alice.git(&custom, ["config", "core.hooksPath", "githooks"]);
    alice.fcache(&custom, ["install"]).success();
    assert!(custom.join("githooks/pre-push").is_file());

    alice.fcache(&repo, ["uninstall"]).success();
    assert!(!hook.exists());
    let gone = alice.run(
        "git",
        env.path(),
        ["config", "--global", "--get-regexp", "^filter\\.fcache"],
    );
    assert!(gone.stdout().is_empty(), "{}", gone.stdout());
}

#[test]
fn track_lists_and_untrack_removes_patterns() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &["*.bin", "*.csv"]);
    alice.fcache(&repo, ["track", "*.bin"]).success();
    let attrs = fs::read_to_string(repo.join(".gitattributes")).unwrap();
    assert_eq!(
        attrs,
        "*.bin filter=fcache diff=fcache merge=fcache -text\n*.csv filter=fcache diff=fcache merge=fcache -text\n"
    );
    let list = alice.fcache(&repo, ["track"]).success().stdout();
    assert!(list.contains("*.bin") && list.contains("*.csv"), "{list}");
    alice.fcache(&repo, ["untrack", "*.bin"]).success();
    assert_eq!(
        fs::read_to_string(repo.join(".gitattributes")).unwrap(),
        "*.csv filter=fcache diff=fcache merge=fcache -text\n"
    );
}

#[test]
fn push_refuses_when_an_object_is_in_neither_cache_nor_archive() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let data = random_bytes(20, 1000);
    fs::write(repo.join("a.bin"), &data).unwrap();
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "a"]);
    fs::remove_dir_all(&alice.cache).unwrap();
    let remote = env.bare(&alice, "remote.git");
    let push = alice
        .run("git", &repo, ["push", remote.to_str().unwrap(), "main"])
        .failure();
    assert!(
        push.stderr().contains(&sha256_hex(&data)),
        "{}",
        push.stderr()
    );
    // The remote did not get a commit whose content nobody could fetch.
    alice
        .run("git", &remote, ["rev-parse", "--verify", "-q", "main"])
        .failure();
}

#[test]
fn default_cache_and_archive_live_under_home() {
    let env = TestEnv::new();
    let alice = env.user("alice").with_default_places();
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let data = random_bytes(30, 4096);
    fs::write(repo.join("a.bin"), &data).unwrap();
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "a"]);
    alice.fcache(&repo, ["push"]).success();
    let id = sha256_hex(&data);
    let cached = alice.home.join(format!(
        ".cache/fcache/objects/{}/{}/{id}.cache",
        &id[..2],
        &id[2..4]
    ));
    let archived = alice.home.join(format!(
        ".local/share/fcache/archive/objects/{}/{}/{id}",
        &id[..2],
        &id[2..4]
    ));
    assert_eq!(fs::read(cached).unwrap(), data);
    assert_eq!(fs::read(archived).unwrap(), data);
    // git config can move the cache; the environment wins over it.
    let moved = env.path().join("moved-cache");
    alice.git(
        &repo,
        ["config", "fcache.cachedir", moved.to_str().unwrap()],
    );
    alice.git(&repo, ["rm", "-q", "--cached", "a.bin"]);
    alice.git(&repo, ["add", "a.bin"]);
    assert_eq!(files_under(&moved.join("objects")).len(), 1);
}

#[test]
fn index_timestamps_come_from_the_replaceable_clock() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    fs::write(repo.join("a.bin"), b"clocked").unwrap();
    alice
        .with_env("FCACHE_NOW", "2030-01-02T03:04:05Z")
        .git(&repo, ["add", "a.bin"]);
    fs::remove_file(repo.join("a.bin")).unwrap();
    alice
        .with_env("FCACHE_NOW", "2031-06-07T08:09:10+02:00")
        .git(&repo, ["checkout", "--", "a.bin"]);
    let index = fs::read_to_string(repo.join(".git/fcache/index.csv")).unwrap();
    assert_eq!(
        index,
        format!(
            "identifier,size,added,last_used\n{},7,2030-01-02T03:04:05Z,2031-06-07T06:09:10Z\n",
            sha256_hex(b"clocked")
        )
    );
}

#[test]
fn push_never_archives_a_corrupt_cached_copy() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let data = random_bytes(40, 20_000);
    fs::write(repo.join("a.bin"), &data).unwrap();
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "a"]);
    let object = alice.cached_objects().pop().unwrap();
    overwrite(&object, &random_bytes(41, 20_000));
    let push = alice.fcache(&repo, ["push"]).failure();
    assert!(
        push.stderr().contains(&sha256_hex(&data)),
        "{}",
        push.stderr()
    );
    assert!(files_under(&env.archive.join("objects")).is_empty());
    assert!(!object.exists(), "the corrupt copy stayed in the cache");
    assert_eq!(files_under(&alice.cache.join("quarantine")).len(), 1);
}
