//! Several processes on one cache and one index at once.

use std::fs;

use crate::common::*;

#[test]
fn concurrent_cleans_store_each_object_once_and_lose_no_index_entry() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &[]);
    let inputs: Vec<Vec<u8>> = (0..12)
        .map(|i| random_bytes(if i % 2 == 0 { 100 } else { 200 + i }, 300_000))
        .collect();
    let results: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .iter()
            .map(|input| {
                let (alice, repo) = (&alice, &repo);
                s.spawn(move || alice.pipe("fcache", repo, &["clean", "--", "f.bin"], input))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (input, run) in inputs.iter().zip(results) {
        assert_eq!(run.success().stdout(), marker_for(input));
    }
    let mut distinct: Vec<String> = inputs.iter().map(|i| sha256_hex(i)).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(alice.cached_objects().len(), distinct.len());
    assert!(files_under(&alice.cache.join("tmp")).is_empty());
    let index = fs::read_to_string(repo.join(".git/fcache/index.csv")).unwrap();
    for id in &distinct {
        assert!(index.contains(id.as_str()), "index lost {id}:\n{index}");
    }
    assert_eq!(index.lines().count(), distinct.len() + 1, "{index}");
}

#[test]
fn concurrent_smudges_of_one_object_all_get_the_right_bytes() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let data = random_bytes(300, 1 << 20);
    fs::write(repo.join("a.bin"), &data).unwrap();
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "a"]);
    alice.fcache(&repo, ["push"]).success();
    fs::remove_dir_all(&alice.cache).unwrap();
    let marker = marker_for(&data);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (alice, repo, marker) = (&alice, &repo, &marker);
                s.spawn(move || {
                    alice.pipe(
                        "fcache",
                        repo,
                        &["smudge", "--", "a.bin"],
                        marker.as_bytes(),
                    )
                })
            })
            .collect();
        for h in handles {
            let run = h.join().unwrap().success();
            assert!(
                run.output.stdout == data,
                "wrong bytes from a concurrent smudge"
            );
        }
    });
    assert_eq!(alice.cached_objects().len(), 1);
    assert!(files_under(&alice.cache.join("tmp")).is_empty());
}
