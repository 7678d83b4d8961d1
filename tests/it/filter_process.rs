//! git's long-running filter protocol: real git driving `fcache filter-process`
//! for add, status, checkout and clone; and the protocol spoken by hand.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;

use fcache::filter::pktline::{MAX_DATA, Packet, PktReader, PktWriter};

use crate::common::*;

/// What filter-process logged, as (event, path) pairs such as ("clean hashed", "a.bin").
fn log_events(log: &Path) -> Vec<(String, String)> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with("summary"))
        .map(|l| {
            let mut f = l.split(' ');
            let event = format!("{} {}", f.next().unwrap(), f.next().unwrap());
            (event, f.next().unwrap_or_default().to_owned())
        })
        .collect()
}

fn count(events: &[(String, String)], event: &str) -> usize {
    events.iter().filter(|(e, _)| e == event).count()
}

/// A user whose filter-process logs what it does to `log`.
fn logging(user: &User, log: &Path) -> User {
    user.with_env("FCACHE_DEBUG_LOG", log.to_str().unwrap())
}

#[test]
fn git_drives_filter_process_for_add_status_and_checkout() {
    let env = TestEnv::new();
    let log = env.path().join("log");
    let alice = logging(&env.user("alice"), &log);
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    // Sizes around the pkt-line limit: nothing, one byte, exactly one full
    // packet, one byte more, and several packets.
    let files: Vec<(String, Vec<u8>)> = [0usize, 1, MAX_DATA, MAX_DATA + 1, 200_000, 3 << 20]
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("f{n}.bin"), random_bytes(100 + i as u64, n)))
        .collect();
    for (name, bytes) in &files {
        fs::write(repo.join(name), bytes).unwrap();
    }
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "data"]);
    // Only filter-process logs: seeing its lines shows git used it.
    let events = log_events(&log);
    assert_eq!(
        count(&events, "clean hashed"),
        files.len() - 1,
        "{events:?}"
    );
    assert!(count(&events, "clean empty") >= 1, "{events:?}");
    for (name, bytes) in &files {
        let blob = alice.git(&repo, ["cat-file", "-p", &format!("HEAD:{name}")]);
        if bytes.is_empty() {
            assert_eq!(blob, "");
        } else {
            assert_eq!(blob, marker_for(bytes), "{name}");
        }
    }
    assert_eq!(alice.git(&repo, ["status", "--porcelain"]), "");

    // Delete every file and check them out again from the cache.
    for (name, _) in &files {
        fs::remove_file(repo.join(name)).unwrap();
    }
    alice.git(&repo, ["checkout", "--", "."]);
    for (name, bytes) in &files {
        assert!(fs::read(repo.join(name)).unwrap() == *bytes, "{name}");
    }
    assert_eq!(alice.git(&repo, ["status", "--porcelain"]), "");
    // Objects were in the cache: nothing was delayed.
    assert_eq!(count(&log_events(&log), "smudge delayed"), 0);
}

#[test]
fn after_touching_every_file_status_is_clean_and_nothing_is_rehashed() {
    let env = TestEnv::new();
    let log = env.path().join("log");
    let alice = logging(&env.user("alice"), &log);
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let names: Vec<String> = (0..40).map(|i| format!("d{}/f{i}.bin", i % 3)).collect();
    for (i, name) in names.iter().enumerate() {
        let path = repo.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, random_bytes(i as u64, 1000 + i * 3000)).unwrap();
    }
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "data"]);
    assert_eq!(count(&log_events(&log), "clean hashed"), names.len());

    // Every file gets a new mtime (and so a new ctime); git must look at all.
    fs::remove_file(&log).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    for name in &names {
        fs::File::options()
            .write(true)
            .open(repo.join(name))
            .unwrap()
            .set_modified(later)
            .unwrap();
    }
    assert_eq!(alice.git(&repo, ["status", "--porcelain"]), "");
    let events = log_events(&log);
    assert_eq!(count(&events, "clean unchanged"), names.len(), "{events:?}");
    assert_eq!(count(&events, "clean hashed"), 0, "{events:?}");

    // An edit that keeps size and stat-looking alike is still seen: the
    // stat cache is a hint checked against the bytes, never trusted alone.
    fs::remove_file(&log).unwrap();
    let victim = repo.join(&names[7]);
    let mut bytes = fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&victim, &bytes).unwrap();
    assert_eq!(
        alice.git(&repo, ["status", "--porcelain"]),
        format!(" M {}\n", names[7])
    );
    let events = log_events(&log);
    assert_eq!(
        events
            .iter()
            .filter(|(e, _)| e == "clean hashed")
            .map(|(_, p)| p.as_str())
            .collect::<Vec<_>>(),
        vec![names[7].as_str()]
    );
    // ... and what it says the file is, is what the file is.
    alice.git(&repo, ["commit", "-q", "-a", "-m", "edit"]);
    assert_eq!(
        alice.git(&repo, ["cat-file", "-p", &format!("HEAD:{}", names[7])]),
        marker_for(&bytes)
    );

    // With the cache gone, a hint has nothing to be checked against: the
    // file is hashed and stored again, never answered from stat data.
    fs::remove_file(&log).unwrap();
    fs::remove_dir_all(&alice.cache).unwrap();
    fs::File::options()
        .write(true)
        .open(repo.join(&names[0]))
        .unwrap()
        .set_modified(later + std::time::Duration::from_secs(5))
        .unwrap();
    assert_eq!(alice.git(&repo, ["status", "--porcelain"]), "");
    let events = log_events(&log);
    assert!(
        events.contains(&("clean hashed".to_owned(), names[0].clone())),
        "{events:?}"
    );
    assert_eq!(count(&events, "clean unchanged"), 0, "{events:?}");
    let id = sha256_hex(&fs::read(repo.join(&names[0])).unwrap());
    assert!(
        alice
            .cached_objects()
            .iter()
            .any(|p| p.to_string_lossy().contains(&id))
    );
}

/// Alice commits and pushes `n` small files and one of 300 KB; returns the
/// remote and the files.
fn pushed_files(
    env: &TestEnv,
    alice: &User,
    n: usize,
) -> (std::path::PathBuf, Vec<(String, Vec<u8>)>) {
    let repo = alice.repo(env, "repo", &["*.bin"]);
    let mut files: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                format!("s/{i:04}.bin"),
                random_bytes(1000 + i as u64, 1024 + i * 7),
            )
        })
        .collect();
    files.push(("big.bin".to_owned(), random_bytes(7, 300_000)));
    fs::create_dir_all(repo.join("s")).unwrap();
    for (name, bytes) in &files {
        fs::write(repo.join(name), bytes).unwrap();
    }
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "data"]);
    let remote = env.bare(alice, "remote.git");
    alice.git(&repo, ["push", "-q", remote.to_str().unwrap(), "main"]);
    (remote, files)
}

#[test]
fn a_clone_with_an_empty_cache_delays_and_fetches_several_hundred_files() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let (remote, files) = pushed_files(&env, &alice, 400);

    let log = env.path().join("log");
    let bob = logging(&env.user("bob"), &log).with_env("FCACHE_CONCURRENT_TRANSFERS", "4");
    let clone = bob
        .run(
            "git",
            env.path(),
            ["clone", remote.to_str().unwrap(), "clone"],
        )
        .success();
    let dir = env.path().join("clone");
    for (name, bytes) in &files {
        assert!(fs::read(dir.join(name)).unwrap() == *bytes, "{name}");
    }
    let events = log_events(&log);
    assert_eq!(count(&events, "smudge delayed"), files.len(), "{events:?}");
    assert!(
        clone
            .stderr()
            .contains(&format!("downloaded {} object(s)", files.len())),
        "{}",
        clone.stderr()
    );
    assert_eq!(bob.cached_objects().len(), files.len());
    // git status after the clone has candidates from smudge: nothing hashed.
    fs::remove_file(&log).unwrap();
    assert_eq!(bob.git(&dir, ["status", "--porcelain"]), "");
    assert_eq!(count(&log_events(&log), "clean hashed"), 0);
}

#[test]
fn one_missing_object_among_many_keeps_its_marker_and_strict_fails_the_clone() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let (remote, files) = pushed_files(&env, &alice, 60);
    let (lost_name, lost_bytes) = &files[17];
    let lost_id = sha256_hex(lost_bytes);
    let archived = env.archived(&lost_id);
    fs::remove_file(&archived).unwrap();

    let bob = env.user("bob");
    let clone = bob
        .run(
            "git",
            env.path(),
            ["clone", remote.to_str().unwrap(), "clone"],
        )
        .success();
    let dir = env.path().join("clone");
    for (name, bytes) in &files {
        let got = fs::read(dir.join(name)).unwrap();
        if name == lost_name {
            assert_eq!(String::from_utf8(got).unwrap(), marker_for(bytes));
        } else {
            assert!(got == *bytes, "{name}");
        }
    }
    let warning = clone.stderr();
    let line = warning
        .lines()
        .find(|l| l.contains("warning"))
        .unwrap_or_else(|| panic!("no warning in {warning}"));
    assert!(
        line.contains(lost_name.as_str())
            && line.contains(&lost_id)
            && line.contains("fcache pull"),
        "{line}"
    );
    assert_eq!(warning.matches("warning").count(), 1, "{warning}");

    let carol = env.user("carol").with_env("FCACHE_STRICT", "1");
    let strict = carol
        .run(
            "git",
            env.path(),
            ["clone", remote.to_str().unwrap(), "strict"],
        )
        .failure();
    assert!(
        strict.stderr().contains(lost_name.as_str()) && strict.stderr().contains(&lost_id),
        "{}",
        strict.stderr()
    );
}

/// `fcache filter-process` spoken to by hand.
struct Speaker {
    input: Vec<u8>,
}

impl Speaker {
    fn new() -> Self {
        let mut s = Self { input: Vec::new() };
        s.list(&["git-filter-client", "version=2"]);
        s.list(&["capability=clean", "capability=smudge", "capability=delay"]);
        s
    }

    fn list(&mut self, lines: &[&str]) {
        let mut w = PktWriter::new(&mut self.input);
        w.list(lines).unwrap();
    }

    fn request(&mut self, command: &str, path: &str, content: &[u8]) {
        let mut w = PktWriter::new(&mut self.input);
        w.line(format!("command={command}")).unwrap();
        w.line(format!("pathname={path}")).unwrap();
        w.flush_pkt().unwrap();
        w.data(content).unwrap();
        w.flush_pkt().unwrap();
    }

    fn run(self, user: &User, dir: &Path) -> (Vec<u8>, String, bool) {
        let mut child = user
            .command("fcache", dir)
            .arg("filter-process")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = self.input;
        let writer = std::thread::spawn(move || {
            // The process may stop reading at a malformed packet.
            let _ = stdin.write_all(&input);
        });
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        writer.join().unwrap();
        let ok = child.wait().unwrap().success();
        (out, err, ok)
    }
}

/// The responses: each list or content section as a list of packets.
fn sections(out: &[u8]) -> Vec<Vec<Vec<u8>>> {
    let mut r = PktReader::new(out);
    let mut all = Vec::new();
    let mut current = Vec::new();
    while let Some(p) = r.read_packet().unwrap() {
        match p {
            Packet::Data(d) => current.push(d.to_vec()),
            Packet::Flush => all.push(std::mem::take(&mut current)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(current.is_empty(), "output ends in the middle of a section");
    all
}

#[test]
fn a_failing_file_answers_error_and_the_process_carries_on() {
    let env = TestEnv::new();
    let alice = env.user("alice").with_env("FCACHE_STRICT", "1");
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let big = random_bytes(5, 150_000);
    let absent = marker_for(b"in neither cache nor archive");
    let mut s = Speaker::new();
    s.request("clean", "a.bin", &big);
    s.request("smudge", "gone.bin", absent.as_bytes());
    s.request("clean", "b.bin", b"small");
    s.request("smudge", "a.bin", marker_for(&big).as_bytes());
    let (out, err, ok) = s.run(&alice, &repo);
    assert!(ok, "{err}");
    let text = |p: &Vec<u8>| String::from_utf8_lossy(p).into_owned();
    let sections = sections(&out);
    let lines: Vec<Vec<String>> = sections
        .iter()
        .map(|s| s.iter().map(text).collect())
        .collect();
    // Handshake.
    assert_eq!(lines[0], ["git-filter-server\n", "version=2\n"]);
    assert_eq!(
        lines[1],
        [
            "capability=clean\n",
            "capability=smudge\n",
            "capability=delay\n"
        ]
    );
    // clean a.bin: success, the marker, an empty list keeping the status.
    assert_eq!(lines[2], ["status=success\n"]);
    assert_eq!(lines[3].concat(), marker_for(&big));
    assert!(lines[4].is_empty());
    // smudge gone.bin fails alone...
    assert_eq!(lines[5], ["status=error\n"]);
    // ...and the process goes on.
    assert_eq!(lines[6], ["status=success\n"]);
    assert_eq!(lines[7].concat(), marker_for(b"small"));
    assert!(lines[8].is_empty());
    assert_eq!(lines[9], ["status=success\n"]);
    assert!(sections[10].concat() == big);
    assert!(sections[10].iter().all(|p| p.len() <= MAX_DATA));
    assert_eq!(sections[10][0].len(), MAX_DATA);
    assert!(lines[11].is_empty());
    assert_eq!(sections.len(), 12);
    assert!(
        err.contains("gone.bin") && err.contains(&sha256_hex(b"in neither cache nor archive")),
        "{err}"
    );
}

#[test]
fn a_malformed_packet_or_early_end_stops_the_process_with_a_clear_error() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let repo = alice.repo(&env, "repo", &["*.bin"]);

    let mut s = Speaker::new();
    s.input.extend_from_slice(b"00zzcommand=clean\n");
    let (out, err, ok) = s.run(&alice, &repo);
    assert!(!ok);
    assert!(err.contains("malformed pkt-line length \"00zz\""), "{err}");
    assert_eq!(sections(&out).len(), 2, "only the handshake was answered");

    // Content cut off in the middle of a packet.
    let mut s = Speaker::new();
    let mut w = PktWriter::new(&mut s.input);
    w.list(&["command=clean", "pathname=a.bin"]).unwrap();
    w.data(b"some content").unwrap();
    w.send().unwrap();
    s.input.truncate(s.input.len() - 3);
    let (out, err, ok) = s.run(&alice, &repo);
    assert!(!ok);
    assert!(err.contains("ended in the middle of a packet"), "{err}");
    assert_eq!(sections(&out).len(), 2);
    // Nothing half-written was left in the cache.
    assert!(alice.cached_objects().is_empty());
    assert!(files_under(&alice.cache.join("tmp")).is_empty());

    // A client that is not git.
    let mut s = Speaker { input: Vec::new() };
    s.list(&["git-filter-client", "version=3"]);
    let (out, err, ok) = s.run(&alice, &repo);
    assert!(!ok && out.is_empty());
    assert!(err.contains("version=3"), "{err}");
}

#[test]
fn pull_after_a_lazy_clone_rehashes_nothing() {
    let env = TestEnv::new();
    let alice = env.user("alice");
    let (remote, files) = pushed_files(&env, &alice, 30);
    let log = env.path().join("log");
    let bob = logging(&env.user("bob"), &log);
    bob.with_env("FCACHE_SKIP_SMUDGE", "1").git(
        env.path(),
        ["clone", "-q", remote.to_str().unwrap(), "clone"],
    );
    let dir = env.path().join("clone");
    fs::remove_file(&log).unwrap();
    bob.fcache(&dir, ["pull"]).success();
    for (name, bytes) in &files {
        assert!(fs::read(dir.join(name)).unwrap() == *bytes, "{name}");
    }
    // `git update-index` re-cleaned what pull wrote: compared, not hashed.
    let events = log_events(&log);
    assert_eq!(count(&events, "clean unchanged"), files.len(), "{events:?}");
    assert_eq!(count(&events, "clean hashed"), 0, "{events:?}");
    assert_eq!(bob.git(&dir, ["status", "--porcelain"]), "");
}

#[test]
fn a_damaged_cached_copy_named_by_a_hint_is_healed_by_the_next_clean() {
    let env = TestEnv::new();
    let log = env.path().join("log");
    let alice = logging(&env.user("alice"), &log);
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let data = random_bytes(77, 300_000);
    fs::write(repo.join("a.bin"), &data).unwrap();
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "data"]);
    // The cached copy rots in place: same size, other bytes.
    let object = alice.cached_objects().pop().unwrap();
    let mut rotten = data.clone();
    rotten[150_000] ^= 0x55;
    overwrite(&object, &rotten);

    // git looks at the file again; the hint names the damaged copy, the
    // comparison differs, the bytes hash to the same identifier after all.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(repo.join("a.bin"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    assert_eq!(alice.git(&repo, ["status", "--porcelain"]), "");
    assert!(
        fs::read(&object).unwrap() == data,
        "the damaged copy stayed"
    );
    alice.fcache(&repo, ["fsck"]).success();
}

#[test]
fn a_large_cached_object_is_verified_ahead_while_git_writes_the_others() {
    let env = TestEnv::new();
    let log = env.path().join("log");
    let alice = logging(&env.user("alice"), &log);
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let big = random_bytes(5, (8 << 20) + 3);
    let big_id = sha256_hex(&big);
    fs::write(repo.join("big.bin"), &big).unwrap();
    let small: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                format!("s{i:02}.bin"),
                random_bytes(50 + i, 2000 + i as usize),
            )
        })
        .collect();
    for (name, bytes) in &small {
        fs::write(repo.join(name), bytes).unwrap();
    }
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "data"]);
    alice.fcache(&repo, ["push", "--all"]).success();
    let remove_all = || {
        fs::remove_file(repo.join("big.bin")).unwrap();
        for (name, _) in &small {
            fs::remove_file(repo.join(name)).unwrap();
        }
    };

    // From the cache: only the large object is delayed (to be checked on
    // the verifier thread); every file comes back whole.
    remove_all();
    fs::remove_file(&log).unwrap();
    alice.git(&repo, ["checkout", "--", "."]);
    let events = log_events(&log);
    assert_eq!(count(&events, "smudge delayed"), 1, "{events:?}");
    assert!(
        events.contains(&("smudge delayed".to_owned(), "big.bin".to_owned())),
        "{events:?}"
    );
    assert!(fs::read(repo.join("big.bin")).unwrap() == big);
    for (name, bytes) in &small {
        assert!(fs::read(repo.join(name)).unwrap() == *bytes, "{name}");
    }
    assert_eq!(alice.git(&repo, ["status", "--porcelain"]), "");

    // A damaged cached copy is caught by the check ahead: quarantined, and
    // fetched again from the archive before git gets a byte of it.
    let object = alice
        .cached_objects()
        .into_iter()
        .find(|p| p.to_string_lossy().contains(&big_id))
        .unwrap();
    let mut rotten = big.clone();
    rotten[1 << 20] ^= 0x01;
    overwrite(&object, &rotten);
    remove_all();
    alice.git(&repo, ["checkout", "--", "."]);
    assert!(fs::read(repo.join("big.bin")).unwrap() == big);
    assert_eq!(files_under(&alice.cache.join("quarantine")).len(), 1);

    // Damaged again, and the archive lost it too: the marker stays, with a
    // warning naming the file and the identifier; the others are restored.
    overwrite(&object, &rotten);
    let archived = env.archived(&big_id);
    fs::remove_file(&archived).unwrap();
    remove_all();
    let run = alice.run("git", &repo, ["checkout", "--", "."]).success();
    assert_eq!(
        fs::read_to_string(repo.join("big.bin")).unwrap(),
        marker_for(&big)
    );
    for (name, bytes) in &small {
        assert!(fs::read(repo.join(name)).unwrap() == *bytes, "{name}");
    }
    let warning = run.stderr();
    assert!(
        warning.contains("big.bin") && warning.contains(&big_id),
        "{warning}"
    );
}
