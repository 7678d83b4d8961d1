//! The S3 archive against a real engine: SeaweedFS, started by `./test.sh`
//! through scripts/s3-test-server.sh. Without it each test says it is
//! skipped and passes.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

struct Engine {
    endpoint: String,
    bucket: String,
    region: String,
    key: String,
    secret: String,
    /// SeaweedFS's filer, which serves the bucket's files without S3 auth:
    /// an independent look at what was stored where.
    filer: String,
}

fn engine(test: &str) -> Option<Engine> {
    let var = |k: &str| std::env::var(format!("FCACHE_TEST_S3_{k}")).ok();
    let Some(endpoint) = var("ENDPOINT") else {
        // Straight to stderr: the test harness hides eprintln! output of
        // tests that pass, and a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "{test}: skipped: no S3 test engine; run ./test.sh"
        );
        return None;
    };
    Some(Engine {
        endpoint,
        bucket: var("BUCKET").unwrap(),
        region: var("REGION").unwrap(),
        key: var("ACCESS_KEY_ID").unwrap(),
        secret: var("SECRET_ACCESS_KEY").unwrap(),
        filer: var("FILER").unwrap(),
    })
}

impl Engine {
    /// A prefix of the bucket no other test or run uses.
    fn prefix(&self, test: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("it/{test}-{}-{nanos}", std::process::id())
    }

    /// A user whose archive is `s3://<bucket>/<prefix>`, endpoint and keys in
    /// the environment.
    fn user(&self, env: &TestEnv, name: &str, prefix: &str) -> User {
        env.user(name)
            .with_env("FCACHE_ARCHIVE", &format!("s3://{}/{prefix}", self.bucket))
            .with_env("FCACHE_S3_ENDPOINT", &self.endpoint)
            .with_env("FCACHE_S3_REGION", &self.region)
            .with_env("AWS_ACCESS_KEY_ID", &self.key)
            .with_env("AWS_SECRET_ACCESS_KEY", &self.secret)
    }

    /// Status and body of a GET (or HEAD) of the object `key` through the filer.
    fn filer(&self, method: &str, key: &str) -> (u16, Vec<u8>) {
        let addr = self.filer.strip_prefix("http://").unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "{method} /buckets/{}/{key} HTTP/1.0\r\nHost: {addr}\r\n\r\n",
            self.bucket
        )
        .unwrap();
        let mut response = Vec::new();
        s.read_to_end(&mut response).unwrap();
        let end = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP response");
        let head = String::from_utf8_lossy(&response[..end]).into_owned();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, response[end + 4..].to_vec())
    }
}

/// The key of an object: `<prefix>/objects/aa/bb/<id>`, as documented.
fn key_of(prefix: &str, bytes: &[u8]) -> String {
    let id = sha256_hex(bytes);
    format!("{prefix}/objects/{}/{}/{id}", &id[..2], &id[2..4])
}

/// A loopback server answering 404 to everything, counting connections:
/// stands in for the cloud metadata service (AWS_METADATA_ENDPOINT).
fn metadata_stand_in() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&hits);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            seen.fetch_add(1, Ordering::SeqCst);
            let _ = stream.read(&mut [0u8; 4096]);
            let _ = stream.write_all(
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    (url, hits)
}

/// Write `len` pseudo-random bytes to `path` a MiB at a time; returns their
/// identifier.
fn write_big(path: &Path, seed: u64, len: usize) -> String {
    let mut file = fs::File::create(path).unwrap();
    let mut hasher = fcache::hashing::HashingWriter::new(std::io::sink());
    let mut chunk = random_bytes(seed, 1 << 20);
    let mut written = 0;
    while written < len {
        chunk[..8].copy_from_slice(&(written as u64).to_le_bytes());
        let n = chunk.len().min(len - written);
        file.write_all(&chunk[..n]).unwrap();
        hasher.write_all(&chunk[..n]).unwrap();
        written += n;
    }
    hasher.finish().0.to_string()
}

fn hash_file(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap();
    fcache::hashing::hash_reader(&mut f).unwrap().0.to_string()
}

/// The peak memory an fcache command reported for itself: the last report,
/// since filters that git runs for it report first.
fn peak_kib(stderr: &str) -> i64 {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("fcache: peak memory "))
        .and_then(|l| l.strip_suffix(" KiB"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no peak memory report in {stderr:?}"))
}

/// A repository of `user` with `files` committed under `*.bin` tracking.
fn committed(env: &TestEnv, user: &User, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let repo = user.repo(env, name, &["*.bin"]);
    for (file, bytes) in files {
        fs::write(repo.join(file), bytes).unwrap();
    }
    user.git(&repo, ["add", "."]);
    user.git(&repo, ["commit", "-q", "-m", "data"]);
    repo
}

#[test]
fn push_and_clone_through_an_s3_archive() {
    let Some(s3) = engine("push_and_clone_through_an_s3_archive") else {
        return;
    };
    let env = TestEnv::new();
    let prefix = s3.prefix("push-clone");
    let (metadata, metadata_hits) = metadata_stand_in();
    // Alice names the endpoint in git config, Bob in the environment.
    let alice = env
        .user("alice")
        .with_env("FCACHE_ARCHIVE", &format!("s3://{}/{prefix}", s3.bucket))
        .with_env("AWS_ACCESS_KEY_ID", &s3.key)
        .with_env("AWS_SECRET_ACCESS_KEY", &s3.secret)
        .with_env("AWS_METADATA_ENDPOINT", &metadata);
    alice.git(
        env.path(),
        ["config", "--global", "fcache.s3.endpoint", &s3.endpoint],
    );
    alice.git(
        env.path(),
        ["config", "--global", "fcache.s3.region", &s3.region],
    );
    let small = random_bytes(11, 70_000);
    // Over one part (5 MiB): a multipart upload.
    let large = random_bytes(12, 20 << 20);
    let repo = committed(
        &env,
        &alice,
        "repo",
        &[
            ("small.bin", &small),
            ("large.bin", &large),
            ("empty.bin", b""),
        ],
    );
    let remote = env.bare(&alice, "remote.git");
    alice.git(&repo, ["remote", "add", "origin", remote.to_str().unwrap()]);
    let push = alice
        .run("git", &repo, ["push", "-q", "origin", "main"])
        .success();
    assert!(
        push.stderr().contains("sent 2 object(s)"),
        "{}",
        push.stderr()
    );
    // Stored under the documented key, byte for byte.
    for bytes in [&small, &large] {
        let (status, body) = s3.filer("GET", &key_of(&prefix, bytes));
        assert_eq!(status, 200, "{}", key_of(&prefix, bytes));
        assert!(body == *bytes, "stored bytes differ");
    }

    let bob = s3
        .user(&env, "bob", &prefix)
        .with_env("AWS_METADATA_ENDPOINT", &metadata);
    bob.git(
        env.path(),
        ["clone", "-q", remote.to_str().unwrap(), "clone"],
    );
    let clone = env.path().join("clone");
    assert_eq!(fs::read(clone.join("small.bin")).unwrap(), small);
    assert!(fs::read(clone.join("large.bin")).unwrap() == large);
    assert_eq!(fs::read(clone.join("empty.bin")).unwrap(), b"");
    assert_eq!(bob.git(&clone, ["status", "--porcelain"]), "");
    assert_eq!(bob.cached_objects().len(), 2);
    let status: serde_json::Value =
        serde_json::from_str(&bob.fcache(&clone, ["status", "--json"]).success().stdout()).unwrap();
    let objects = status["objects"].as_array().unwrap();
    assert!(
        objects
            .iter()
            .filter(|o| o["size"] != 0)
            .all(|o| o["in_archive"] == true),
        "{status}"
    );
    // A second push finds everything there.
    let again = alice.fcache(&repo, ["push"]).success();
    assert!(
        again.stderr().contains("sent 0 object(s)"),
        "{}",
        again.stderr()
    );
    // Explicit keys: no process ever asked a metadata service.
    assert_eq!(metadata_hits.load(Ordering::SeqCst), 0);
}

#[cfg(target_os = "linux")]
#[test]
fn a_100_mib_object_round_trips_with_flat_memory() {
    let Some(s3) = engine("a_100_mib_object_round_trips_with_flat_memory") else {
        return;
    };
    const LIMIT_KIB: i64 = 64 * 1024;
    let env = TestEnv::new();
    let prefix = s3.prefix("memory");
    let alice = s3.user(&env, "alice", &prefix);
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let id = write_big(&repo.join("huge.bin"), 21, 100 << 20);
    alice.git(&repo, ["add", ".gitattributes", "huge.bin"]);
    alice.git(&repo, ["commit", "-q", "-m", "huge"]);
    let push = alice
        .with_env("FCACHE_REPORT_PEAK_MEMORY", "1")
        .fcache(&repo, ["push"])
        .success();
    let push_kib = peak_kib(&push.stderr());
    let remote = env.bare(&alice, "remote.git");
    alice.git(&repo, ["push", "-q", remote.to_str().unwrap(), "main"]);

    let bob = s3.user(&env, "bob", &prefix);
    bob.with_env("FCACHE_SKIP_SMUDGE", "1").git(
        env.path(),
        ["clone", "-q", remote.to_str().unwrap(), "clone"],
    );
    let clone = env.path().join("clone");
    let pull = bob
        .with_env("FCACHE_REPORT_PEAK_MEMORY", "1")
        .fcache(&clone, ["pull"])
        .success();
    let pull_kib = peak_kib(&pull.stderr());
    assert_eq!(hash_file(&clone.join("huge.bin")), id);
    eprintln!("100 MiB through S3: push peak RSS {push_kib} KiB, pull peak RSS {pull_kib} KiB");
    assert!(push_kib < LIMIT_KIB, "push peak RSS {push_kib} KiB");
    assert!(pull_kib < LIMIT_KIB, "pull peak RSS {pull_kib} KiB");
}

#[test]
fn two_concurrent_pushes_of_one_object_both_succeed() {
    let Some(s3) = engine("two_concurrent_pushes_of_one_object_both_succeed") else {
        return;
    };
    let env = TestEnv::new();
    let prefix = s3.prefix("concurrent");
    let small = random_bytes(31, 5000);
    let large = random_bytes(32, 24 << 20);
    let files: &[(&str, &[u8])] = &[("small.bin", &small), ("large.bin", &large)];
    let pushers: Vec<(User, PathBuf)> = ["alice", "carol"]
        .into_iter()
        .map(|name| {
            let user = s3.user(&env, name, &prefix);
            let repo = committed(&env, &user, &format!("repo-{name}"), files);
            (user, repo)
        })
        .collect();
    let children: Vec<Child> = pushers
        .iter()
        .map(|(user, repo)| {
            user.command("fcache", repo)
                .arg("push")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for bytes in [&small, &large] {
        let (status, body) = s3.filer("GET", &key_of(&prefix, bytes));
        assert_eq!(status, 200);
        assert!(body == *bytes, "stored bytes differ");
    }
}

/// Bytes this process has read so far (`rchar` of /proc/PID/io).
#[cfg(target_os = "linux")]
fn bytes_read(pid: u32) -> Option<u64> {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))?
        .parse()
        .ok()
}

#[cfg(target_os = "linux")]
#[test]
fn an_upload_killed_midway_leaves_no_visible_object() {
    let Some(s3) = engine("an_upload_killed_midway_leaves_no_visible_object") else {
        return;
    };
    let env = TestEnv::new();
    let prefix = s3.prefix("killed");
    let alice = s3.user(&env, "alice", &prefix);
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let len = 100 << 20;
    let id = write_big(&repo.join("huge.bin"), 41, len);
    alice.git(&repo, ["add", ".gitattributes", "huge.bin"]);
    alice.git(&repo, ["commit", "-q", "-m", "huge"]);
    let key = format!("{prefix}/objects/{}/{}/{id}", &id[..2], &id[2..4]);

    let mut push = alice
        .command("fcache", &repo)
        .arg("push")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once it has read a third of the object, i.e. sent some parts.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = push.try_wait().unwrap() {
            panic!("push ended ({status}) before it could be killed midway");
        }
        if bytes_read(push.id()).is_some_and(|n| n > (len / 3) as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "push never got going");
        std::thread::sleep(Duration::from_millis(2));
    }
    push.kill().unwrap(); // SIGKILL: no cleanup runs
    let status = push.wait().unwrap();
    assert!(!status.success(), "push finished before the kill");

    assert_eq!(s3.filer("HEAD", &key).0, 404, "a partial object is visible");
    let status: serde_json::Value =
        serde_json::from_str(&alice.fcache(&repo, ["status", "--json"]).success().stdout())
            .unwrap();
    assert_eq!(status["objects"][0]["in_archive"], false, "{status}");

    // Pushing again sends it whole.
    alice.fcache(&repo, ["push"]).success();
    let bob = s3.user(&env, "bob", &prefix);
    let remote = env.bare(&alice, "remote.git");
    alice.git(&repo, ["push", "-q", remote.to_str().unwrap(), "main"]);
    let clone = bob
        .run(
            "git",
            env.path(),
            ["clone", "-q", remote.to_str().unwrap(), "clone"],
        )
        .success();
    let got = env.path().join("clone/huge.bin");
    assert!(
        hash_file(&got) == id,
        "{} bytes in the clone: {}",
        fs::metadata(&got).unwrap().len(),
        clone.stderr()
    );
}

#[test]
fn wrong_keys_or_a_missing_bucket_give_one_line_naming_bucket_and_endpoint() {
    let Some(s3) = engine("wrong_keys_or_a_missing_bucket") else {
        return;
    };
    let env = TestEnv::new();
    let prefix = s3.prefix("errors");
    let alice = s3.user(&env, "alice", &prefix);
    let repo = committed(&env, &alice, "repo", &[("a.bin", b"some content\n")]);

    let one_line = |run: Run, bucket: &str, says: &str| {
        let stderr = run.failure().stderr();
        let naming: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains(bucket) && l.contains(&s3.endpoint))
            .collect();
        assert_eq!(naming.len(), 1, "{stderr}");
        assert!(naming[0].starts_with("fcache: error: "), "{stderr}");
        assert!(naming[0].contains(says), "{stderr}");
    };
    let wrong_secret = alice.with_env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    one_line(
        wrong_secret.fcache(&repo, ["push"]),
        &s3.bucket,
        "AWS_SECRET_ACCESS_KEY",
    );
    let wrong_key = alice.with_env("AWS_ACCESS_KEY_ID", "nobody");
    one_line(
        wrong_key.fcache(&repo, ["push"]),
        &s3.bucket,
        "refused access",
    );

    let nowhere = alice.with_env("FCACHE_ARCHIVE", "s3://no-such-bucket/x");
    one_line(
        nowhere.fcache(&repo, ["push"]),
        "no-such-bucket",
        "does not exist",
    );
    // Fetching into an empty cache says the same.
    fs::remove_dir_all(&alice.cache).unwrap();
    one_line(
        nowhere.fcache(&repo, ["fetch"]),
        "no-such-bucket",
        "does not exist",
    );
}

#[test]
fn fcache_serve_keeps_its_objects_in_s3() {
    let Some(s3) = engine("fcache_serve_keeps_its_objects_in_s3") else {
        return;
    };
    let env = TestEnv::new();
    let prefix = s3.prefix("serve");
    let home = env.path().join("home-server");
    fs::create_dir_all(&home).unwrap();
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("fcache"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(format!("s3://{}/{prefix}", s3.bucket))
        .env("HOME", &home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("FCACHE_S3_ENDPOINT", &s3.endpoint)
        .env("FCACHE_S3_REGION", &s3.region)
        .env("AWS_ACCESS_KEY_ID", &s3.key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret);
    let server = crate::http::Served::start(cmd, home.clone(), "listening on http://", |line| {
        let rest = line.split("listening on ").nth(1)?;
        Some(rest.split_whitespace().next()?.to_owned())
    });

    // Alice pushes through the server; the objects land in the bucket.
    let alice = env.user("alice").with_env("FCACHE_ARCHIVE", &server.url);
    let small = random_bytes(31, 50_000);
    let large = random_bytes(32, 12 << 20);
    let repo = committed(
        &env,
        &alice,
        "repo",
        &[("small.bin", &small), ("large.bin", &large)],
    );
    let remote = env.bare(&alice, "remote.git");
    alice.git(&repo, ["push", "-q", remote.to_str().unwrap(), "main"]);
    for bytes in [&small, &large] {
        let (status, body) = s3.filer("GET", &key_of(&prefix, bytes));
        assert_eq!(status, 200, "{}", key_of(&prefix, bytes));
        assert!(body == *bytes, "stored bytes differ");
    }

    // Bob clones through the server with an empty cache.
    let bob = env.user("bob").with_env("FCACHE_ARCHIVE", &server.url);
    let cloned = bob
        .run(
            "git",
            env.path(),
            ["clone", "-q", remote.to_str().unwrap(), "clone"],
        )
        .success();
    let clone = env.path().join("clone");
    assert!(
        fs::read(clone.join("small.bin")).unwrap() == small,
        "{}\n{}\n{}",
        cloned.stderr(),
        "{}",
        server.log()
    );
    assert!(fs::read(clone.join("large.bin")).unwrap() == large);
    assert_eq!(bob.git(&clone, ["status", "--porcelain"]), "");

    // A server that has talked to S3 still stops cleanly on SIGTERM.
    let mut server = server;
    let status = server.terminate();
    assert!(status.success(), "{status}\n{}", server.log());
    server.wait_for_log("stopped", 1);
}
