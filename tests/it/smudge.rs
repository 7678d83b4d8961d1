//! The filters on their own: what passes through, and what never touches the disk.

use crate::common::*;

#[test]
fn smudge_passes_non_markers_through_byte_exact() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &[]);
    let marker_like = marker_for(b"x");
    let mut inputs: Vec<Vec<u8>> = [0usize, 1, 1023, 1024, 1025, 65_536, 70_000, 3 << 20]
        .iter()
        .map(|&n| random_bytes(n as u64, n))
        .collect();
    // Almost markers: a trailing extra line, and a marker followed by more content.
    inputs.push(format!("{marker_like}extra\n").into_bytes());
    let mut long = marker_like.clone().into_bytes();
    long.extend(random_bytes(99, 5000));
    inputs.push(long);
    inputs.push(vec![b'\n'; 1024]);
    for input in inputs {
        let out = alice
            .pipe("fcache", &repo, &["smudge", "--", "f.bin"], &input)
            .success();
        assert!(out.output.stdout == input, "{} bytes changed", input.len());
    }
}

#[test]
fn a_marker_with_a_bad_identifier_never_touches_the_filesystem() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &[]);
    for oid in [
        "../../../../../../../../../../../../../../../../../../../../../../../etc/passwd",
        "4D7A214614AB2935C943F9E0FF69D22EADBB8F32B1258DAAA5E2CA24D17E2393",
        "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e239",
    ] {
        let input =
            format!("version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize 10\n");
        let out = alice
            .pipe(
                "fcache",
                &repo,
                &["smudge", "--", "f.bin"],
                input.as_bytes(),
            )
            .success();
        assert_eq!(out.stdout(), input);
        assert!(out.stderr().is_empty(), "{}", out.stderr());
    }
    assert!(!alice.cache.exists(), "the cache was touched");
    assert!(!env.archive.exists(), "the archive was touched");
}

#[test]
fn clean_of_a_marker_returns_it_unchanged_and_empty_stays_empty() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &[]);
    let marker = marker_for(b"some content elsewhere");
    let out = alice
        .pipe(
            "fcache",
            &repo,
            &["clean", "--", "f.bin"],
            marker.as_bytes(),
        )
        .success();
    assert_eq!(out.stdout(), marker);
    let crlf = marker.replace('\n', "\r\n");
    let out = alice
        .pipe("fcache", &repo, &["clean", "--", "f.bin"], crlf.as_bytes())
        .success();
    assert_eq!(out.stdout(), crlf);
    let out = alice
        .pipe("fcache", &repo, &["clean", "--", "f.bin"], b"")
        .success();
    assert!(out.output.stdout.is_empty());
    assert!(alice.cached_objects().is_empty());

    // And real content comes back as a marker, its object in the cache.
    let data = random_bytes(42, 1025);
    let out = alice
        .pipe("fcache", &repo, &["clean", "--", "f.bin"], &data)
        .success();
    assert_eq!(out.stdout(), marker_for(&data));
    let smudged = alice
        .pipe(
            "fcache",
            &repo,
            &["smudge", "--", "f.bin"],
            &out.output.stdout,
        )
        .success();
    assert!(smudged.output.stdout == data);
}

#[test]
fn skip_smudge_passes_markers_through() {
    let env = TestEnv::new();
    let alice = env.user("alice").with_env("FCACHE_SKIP_SMUDGE", "1");
    let repo = alice.repo(&env, "repo", &[]);
    let data = random_bytes(43, 2000);
    let marker = alice
        .pipe("fcache", &repo, &["clean"], &data)
        .success()
        .stdout();
    let out = alice
        .pipe("fcache", &repo, &["smudge"], marker.as_bytes())
        .success();
    assert_eq!(out.stdout(), marker);
}

#[test]
fn errors_are_one_line_naming_what_failed() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &[]);
    std::fs::write(
        repo.join(".git/fcache/index.csv"),
        "identifier,size,added,last_used\nnope,1,x,y\n",
    )
    .ok()
    .or_else(|| {
        std::fs::create_dir_all(repo.join(".git/fcache")).unwrap();
        std::fs::write(
            repo.join(".git/fcache/index.csv"),
            "identifier,size,added,last_used\nnope,1,x,y\n",
        )
        .ok()
    })
    .unwrap();
    let out = alice.fcache(&repo, ["status"]).failure();
    let err = out.stderr();
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("index.csv") && err.contains("line 2"), "{err}");

    std::fs::remove_file(repo.join(".git/fcache/index.csv")).unwrap();
    let out = alice.fcache(&repo, ["cat", &"0".repeat(64)]).failure();
    assert!(out.stderr().contains(&"0".repeat(64)), "{}", out.stderr());
    assert_eq!(out.stderr().trim().lines().count(), 1, "{}", out.stderr());

    let outside = env.path().join("not-a-repo");
    std::fs::create_dir_all(&outside).unwrap();
    let out = alice.fcache(&outside, ["status"]).failure();
    assert!(
        out.stderr().contains("not inside a git repository"),
        "{}",
        out.stderr()
    );
}
