//! The HTTP archive and `fcache serve`, through real git: fcache's client
//! against fcache's server, the stock git-lfs client against fcache's
//! server, fcache's client against giftless (a Git LFS server written by
//! others), and what the server refuses.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;

/// A running `fcache serve` (or another server), stopped when dropped.
pub struct Served {
    child: Child,
    pub url: String,
    pub root: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Served {
    /// Start `fcache serve --root <env>/served --listen 127.0.0.1:0 ARGS`.
    pub fn fcache(env: &TestEnv, args: &[&str]) -> Self {
        let root = env.path().join("served");
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("fcache"));
        cmd.args(["serve", "--root", root.to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0"])
            .args(args);
        Self::start(cmd, root, "listening on http://", |line| {
            let rest = line.split("listening on ").nth(1)?;
            Some(rest.split_whitespace().next()?.to_owned())
        })
    }

    /// Start a server and wait for the line that tells where it listens.
    pub fn start(
        mut cmd: Command,
        root: PathBuf,
        ready: &str,
        url: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let ready = ready.to_owned();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if line.contains(&ready) {
                        let _ = tx.send(line.clone());
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start:\n{}", log.lock().unwrap());
            }
        };
        let url = url(&line).unwrap_or_else(|| panic!("no URL in {line:?}"));
        Self {
            child,
            url,
            root,
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait until the log has `n` lines containing `needle`.
    pub fn wait_for_log(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log().matches(needle).count() < n {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Objects the server stored (`<root>/objects/aa/bb/<id>`).
    pub fn objects(&self) -> Vec<PathBuf> {
        files_under(&self.root.join("objects"))
    }

    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_files(repo: &Path, files: &[(&str, Vec<u8>)]) {
    for (name, bytes) in files {
        let path = repo.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }
}

fn sample_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("big.bin", random_bytes(61, 3 << 20)),
        ("empty.bin", Vec::new()),
        ("one.bin", b"x".to_vec()),
        ("sub/nested.bin", random_bytes(62, 70_000)),
    ]
}

/// Damage `user`'s cached copy of each of `objects` (one byte flipped).
fn rot_cached_copies(user: &User, objects: &[Vec<u8>]) {
    for bytes in objects {
        let mut bad = bytes.clone();
        bad[bytes.len() / 2] ^= 0xff;
        overwrite(&user.cached(&sha256_hex(bytes)), &bad);
    }
}

/// `git config --global credential.helper store` with one saved credential.
fn save_credential(user: &User, url: &str, name: &str, secret: &str) {
    let store = user.home.join("git-credentials");
    let with_user = url.replacen("http://", &format!("http://{name}:{secret}@"), 1);
    fs::write(&store, format!("{with_user}\n")).unwrap();
    user.git(
        &user.home,
        [
            "config",
            "--global",
            "credential.helper",
            &format!("store --file={}", store.display()),
        ],
    );
}

#[test]
fn push_and_clone_through_fcache_serve() {
    let env = TestEnv::new();
    let tokens = env.path().join("tokens");
    fs::write(&tokens, "write alice:a-secret\nread bob:b-secret\n").unwrap();
    let server = Served::fcache(&env, &["--token-file", tokens.to_str().unwrap()]);

    // Alice's credentials come from git's credential helper.
    let alice = env.user("alice").with_env("FCACHE_ARCHIVE", &server.url);
    save_credential(&alice, &server.url, "alice", "a-secret");
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let files = sample_files();
    write_files(&repo, &files);
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "data"]);
    let remote = env.bare(&alice, "remote.git");
    let push = alice
        .run(
            "git",
            &repo,
            ["push", "-q", remote.to_str().unwrap(), "main"],
        )
        .success();
    assert!(
        push.stderr()
            .contains(&format!("sent 3 object(s) to {}", server.url)),
        "{}",
        push.stderr()
    );
    assert_eq!(server.objects().len(), 3);
    for (_, bytes) in files.iter().filter(|(_, b)| !b.is_empty()) {
        let id = sha256_hex(bytes);
        let stored = server
            .root
            .join("objects")
            .join(&id[..2])
            .join(&id[2..4])
            .join(&id);
        assert_eq!(&fs::read(stored).unwrap(), bytes);
    }

    // Bob may only read; his token comes from the environment.
    let bob = env
        .user("bob")
        .with_env("FCACHE_ARCHIVE", &server.url)
        .with_env("FCACHE_HTTP_TOKEN", "b-secret");
    bob.git(
        env.path(),
        ["clone", "-q", remote.to_str().unwrap(), "clone"],
    );
    let clone = env.path().join("clone");
    for (name, bytes) in &files {
        assert_eq!(&fs::read(clone.join(name)).unwrap(), bytes, "{name}");
    }
    assert_eq!(bob.git(&clone, ["status", "--porcelain"]), "");
    assert_eq!(bob.cached_objects().len(), 3);

    // Without the cache, `fcache pull` brings everything back in batches.
    fs::remove_dir_all(&bob.cache).unwrap();
    let lazy = bob.with_env("FCACHE_SKIP_SMUDGE", "1");
    lazy.git(
        env.path(),
        ["clone", "-q", remote.to_str().unwrap(), "lazy"],
    );
    let lazy_dir = env.path().join("lazy");
    assert_eq!(
        fs::read_to_string(lazy_dir.join("one.bin")).unwrap(),
        marker_for(b"x")
    );
    let pull = bob.fcache(&lazy_dir, ["pull"]).success();
    assert!(
        pull.stderr().contains("fetched 3 object(s)"),
        "{}",
        pull.stderr()
    );
    // stderr is not a terminal: no progress bar.
    assert!(!pull.stderr().contains("object(s) ["), "{}", pull.stderr());
    for (name, bytes) in &files {
        assert_eq!(&fs::read(lazy_dir.join(name)).unwrap(), bytes, "{name}");
    }

    // A reader cannot push: one clear line naming the archive.
    fs::write(clone.join("new.bin"), b"bob's own").unwrap();
    bob.git(&clone, ["add", "new.bin"]);
    bob.git(&clone, ["commit", "-q", "-m", "bob"]);
    let denied = bob.fcache(&clone, ["push"]).failure();
    assert!(denied.stderr().contains("403"), "{}", denied.stderr());
    assert!(denied.stderr().contains(&server.url), "{}", denied.stderr());
    assert_eq!(server.objects().len(), 3);
    // One log line per request (read from the server's stderr as it comes).
    server.wait_for_log("POST /objects/batch 200", 1);
    server.wait_for_log("POST /objects/batch 403", 1);
    // fcache's client and server agreed on fcache-multi: no basic PUTs.
    server.wait_for_log("POST /objects/multi 200", 1);
    assert!(!server.log().contains("PUT /objects/"), "{}", server.log());

    // Many small objects go many to a request; a cached copy that rotted
    // is refused by the client before it is sent and moved aside, and the
    // others still arrive.
    let many: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("many/f{i}.bin"),
                random_bytes(100 + i, 2000 + i as usize),
            )
        })
        .collect();
    let rotten = [random_bytes(98, 30_000), random_bytes(99, 2 << 20)];
    for (name, bytes) in &many {
        fs::create_dir_all(repo.join("many")).unwrap();
        fs::write(repo.join(name), bytes).unwrap();
    }
    fs::write(repo.join("rotten-small.bin"), &rotten[0]).unwrap();
    fs::write(repo.join("rotten-large.bin"), &rotten[1]).unwrap();
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "many"]);
    rot_cached_copies(&alice, &rotten);
    let requests = server.log().matches("POST /objects/multi 200").count();
    let push = alice.fcache(&repo, ["push"]).failure();
    assert!(push.stderr().contains("corrupt"), "{}", push.stderr());
    assert!(
        push.stderr().contains("sent 40 object(s)"),
        "{}",
        push.stderr()
    );
    assert_eq!(files_under(&alice.cache.join("quarantine")).len(), 2);
    assert_eq!(server.objects().len(), 3 + 40, "{}", server.log());
    for (_, bytes) in &many {
        let id = sha256_hex(bytes);
        assert!(server.objects().iter().any(|p| p.ends_with(&id)), "{id}");
    }
    // 40 objects in at most 8 requests (one per transfer worker).
    let multi = server.log().matches("POST /objects/multi 200").count() - requests;
    assert!(
        (1..=8).contains(&multi),
        "{multi} requests:\n{}",
        server.log()
    );
    assert!(files_under(&server.root.join("tmp")).is_empty());
}

/// A user with git-lfs set up in their HOME.
fn lfs_user(env: &TestEnv, name: &str) -> User {
    let user = env.user(name);
    let out = user.run("git", &user.home, ["lfs", "install", "--skip-repo"]);
    assert!(
        out.output.status.success(),
        "git-lfs is not installed (scripts/install-git-lfs.sh installs it): {}",
        out.stderr()
    );
    user.git(
        &user.home,
        ["config", "--global", "lfs.locksverify", "false"],
    );
    user
}

#[test]
fn git_lfs_pushes_to_and_pulls_from_fcache_serve() {
    let env = TestEnv::new();
    let tokens = env.path().join("tokens");
    fs::write(&tokens, "write carol:c-secret\n").unwrap();
    let server = Served::fcache(&env, &["--token-file", tokens.to_str().unwrap()]);

    let carol = lfs_user(&env, "carol");
    save_credential(&carol, &server.url, "carol", "c-secret");
    let repo = env.path().join("lfs-repo");
    carol.git(env.path(), ["init", "-q", repo.to_str().unwrap()]);
    carol.git(&repo, ["lfs", "track", "*.bin"]);
    carol.git(&repo, ["config", "lfs.url", &server.url]);
    let files = sample_files();
    write_files(&repo, &files);
    carol.git(&repo, ["add", "."]);
    carol.git(&repo, ["commit", "-q", "-m", "lfs data"]);
    // git-lfs and fcache write the same markers.
    assert_eq!(
        carol.git(&repo, ["cat-file", "-p", "HEAD:big.bin"]),
        marker_for(&files[0].1)
    );
    let remote = env.bare(&carol, "remote.git");
    carol.git(&repo, ["remote", "add", "origin", remote.to_str().unwrap()]);
    carol.git(&repo, ["push", "-q", "origin", "main"]);
    // git-lfs never asks for fcache-multi: it uploads with basic PUTs.
    server.wait_for_log("PUT /objects/", 3);
    assert!(!server.log().contains("/objects/multi"), "{}", server.log());
    // git-lfs uploads the empty object too; every object arrived whole.
    let stored = server.objects();
    assert!(stored.len() >= 3, "{stored:?}");
    for (_, bytes) in &files {
        let id = sha256_hex(bytes);
        if let Some(path) = stored.iter().find(|p| p.ends_with(&id)) {
            assert_eq!(&fs::read(path).unwrap(), bytes);
        } else {
            assert!(bytes.is_empty(), "{id} was not stored");
        }
    }

    let dave = lfs_user(&env, "dave");
    save_credential(&dave, &server.url, "carol", "c-secret");
    let clone = env.path().join("lfs-clone");
    dave.git(
        env.path(),
        [
            "clone",
            "-q",
            "-c",
            &format!("lfs.url={}", server.url),
            remote.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    for (name, bytes) in &files {
        assert_eq!(&fs::read(clone.join(name)).unwrap(), bytes, "{name}");
    }
    // And `git lfs pull` after a clone that skipped the downloads.
    let lazy_dir = env.path().join("lfs-lazy");
    dave.with_env("GIT_LFS_SKIP_SMUDGE", "1").git(
        env.path(),
        [
            "clone",
            "-q",
            "-c",
            &format!("lfs.url={}", server.url),
            remote.to_str().unwrap(),
            lazy_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(
        fs::read_to_string(lazy_dir.join("big.bin")).unwrap(),
        marker_for(&files[0].1)
    );
    dave.git(&lazy_dir, ["lfs", "pull"]);
    assert_eq!(fs::read(lazy_dir.join("big.bin")).unwrap(), files[0].1);

    // What git-lfs stored, fcache reads: same server, same objects.
    let reader = env.user("erin").with_env("FCACHE_ARCHIVE", &server.url);
    save_credential(&reader, &server.url, "carol", "c-secret");
    let erin_repo = reader.repo(&env, "erin", &[]);
    let m = &files[3].1;
    let got = reader
        .pipe(
            "fcache",
            &erin_repo,
            &["smudge", "x.bin"],
            marker_for(m).as_bytes(),
        )
        .success();
    assert!(got.output.stdout == *m, "smudge through the HTTP archive");
}

/// giftless's local-storage server on a free port, from the venv that
/// `scripts/install-giftless.sh` makes under target/.
fn giftless(env: &TestEnv) -> Served {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/giftless-venv");
    let waitress = venv.join("bin/waitress-serve");
    assert!(
        waitress.exists(),
        "giftless is not installed: run scripts/install-giftless.sh (./test.sh does)"
    );
    let storage = env.path().join("giftless-storage");
    let config = env.path().join("giftless.yaml");
    fs::write(
        &config,
        format!(
            "AUTH_PROVIDERS:\n  - giftless.auth.allow_anon:read_write\n\
             TRANSFER_ADAPTERS:\n  basic:\n    factory: giftless.transfer.basic_streaming:factory\n    \
             options:\n      storage_class: giftless.storage.local_storage:LocalStorage\n      \
             storage_options:\n        path: {}\n",
            storage.display()
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(waitress);
    cmd.arg(format!("--listen=127.0.0.1:{port}"))
        .arg("giftless.wsgi_entrypoint:app")
        .current_dir(env.path())
        .env("GIFTLESS_CONFIG_FILE", &config);
    Served::start(cmd, storage, "Serving on http://", move |_| {
        // giftless serves each repository under /<organisation>/<repo>.
        Some(format!("http://127.0.0.1:{port}/fcache-org/data"))
    })
}

#[test]
fn fcache_pushes_to_and_clones_from_giftless() {
    let env = TestEnv::new();
    let server = giftless(&env);
    let alice = env.user("alice").with_env("FCACHE_ARCHIVE", &server.url);
    let repo = alice.repo(&env, "repo", &["*.bin"]);
    let files = sample_files();
    write_files(&repo, &files);
    alice.git(&repo, ["add", "."]);
    alice.git(&repo, ["commit", "-q", "-m", "data"]);
    let remote = env.bare(&alice, "remote.git");
    let push = alice
        .run(
            "git",
            &repo,
            ["push", "-q", remote.to_str().unwrap(), "main"],
        )
        .success();
    assert!(
        push.stderr().contains("sent 3 object(s)"),
        "{}",
        push.stderr()
    );
    assert_eq!(
        files_under(&server.root).len(),
        3,
        "giftless stored the objects:\n{}",
        server.log()
    );
    // A second push finds them there.
    let again = alice.fcache(&repo, ["push"]).success();
    assert!(
        again.stderr().contains("sent 0 object(s)"),
        "{}",
        again.stderr()
    );
    assert!(
        again.stderr().contains("3 already there"),
        "{}",
        again.stderr()
    );

    let bob = env.user("bob").with_env("FCACHE_ARCHIVE", &server.url);
    bob.git(
        env.path(),
        ["clone", "-q", remote.to_str().unwrap(), "clone"],
    );
    let clone = env.path().join("clone");
    for (name, bytes) in &files {
        assert_eq!(&fs::read(clone.join(name)).unwrap(), bytes, "{name}");
    }
    let status = bob.fcache(&clone, ["status", "--json"]).success().stdout();
    assert!(!status.contains("\"in_archive\": false"), "{status}");

    // A cached copy that rotted never reaches the server whole, whether or
    // not the server checks what it receives: fcache checks the bytes as it
    // sends them, refuses, and moves the copy aside.
    let mut rotten = Vec::new();
    for (name, len) in [
        ("rotten-small.bin", 50_000usize),
        ("rotten-large.bin", 3 << 20),
    ] {
        let bytes = random_bytes(len as u64, len);
        fs::write(repo.join(name), &bytes).unwrap();
        alice.git(&repo, ["add", name]);
        rotten.push(bytes);
    }
    alice.git(&repo, ["commit", "-q", "-m", "rotten"]);
    // They rot after the commit: a clean of the same bytes would heal them.
    rot_cached_copies(&alice, &rotten);
    let stored = files_under(&server.root).len();
    let push = alice.fcache(&repo, ["push"]).failure();
    assert!(push.stderr().contains("corrupt"), "{}", push.stderr());
    assert_eq!(files_under(&server.root).len(), stored, "{}", server.log());
    assert_eq!(files_under(&alice.cache.join("quarantine")).len(), 2);
}

/// A raw HTTP request; returns the status code and the body.
fn http(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    // The server may answer before it has read everything (and close).
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&response[..end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, response[end..].to_vec())
}

fn text((status, body): (u16, Vec<u8>)) -> (u16, String) {
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn basic(user: &str, secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
    )
}

/// `fcache serve` with `args` and two credentials: `w:w-secret` may write,
/// `r:r-secret` may only read.
fn serve_for_w_and_r(env: &TestEnv, args: &[&str]) -> Served {
    let tokens = env.path().join("tokens");
    fs::write(&tokens, "write w:w-secret\nread r:r-secret\n").unwrap();
    let mut all = vec!["--token-file", tokens.to_str().unwrap()];
    all.extend_from_slice(args);
    Served::fcache(env, &all)
}

#[test]
fn server_refuses_bad_uploads_and_stores_nothing() {
    let env = TestEnv::new();
    let server = serve_for_w_and_r(
        &env,
        &["--max-object-size", "1MiB", "--max-request-body", "4KiB"],
    );
    let writer = basic("w", "w-secret");
    let auth = [("Authorization", writer.as_str())];
    let content = random_bytes(70, 10_000);
    let id = sha256_hex(&content);
    let object = format!("/objects/{id}/{}", content.len());

    // Wrong hash: other bytes of the right length.
    let other = random_bytes(71, 10_000);
    let (status, body) = text(http(&server.url, "PUT", &object, &auth, &other));
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("hash to"), "{body}");
    // Wrong size: fewer bytes, or more, than the identifier's size.
    let short = format!("/objects/{id}/{}", content.len() + 1);
    assert_eq!(http(&server.url, "PUT", &short, &auth, &content).0, 422);
    let long = format!("/objects/{id}/{}", content.len() - 1);
    assert_eq!(http(&server.url, "PUT", &long, &auth, &content).0, 413);
    // Traversal and other identifiers that are not 64 lowercase hex digits.
    for bad in [
        "..%2F..%2F..%2Fetc%2Fpasswd".to_owned(),
        "..".to_owned(),
        id.to_uppercase(),
        format!("{id}0"),
        format!("{}%2F", &id[..63]),
    ] {
        let (status, body) = text(http(
            &server.url,
            "PUT",
            &format!("/objects/{bad}/5"),
            &auth,
            b"hello",
        ));
        assert!(matches!(status, 404 | 422), "PUT {bad}: {status} {body}");
        let (status, _) = http(&server.url, "GET", &format!("/objects/{bad}/5"), &auth, b"");
        assert!(matches!(status, 404 | 422), "GET {bad}: {status}");
    }
    let batch = r#"{"operation":"upload","transfers":["basic"],"objects":[{"oid":"../../../../etc/passwd","size":5},{"oid":"OID","size":-1}]}"#
        .replace("OID", &id);
    let (status, body) = text(http(
        &server.url,
        "POST",
        "/objects/batch",
        &auth,
        batch.as_bytes(),
    ));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.matches("\"code\":422").count(), 2, "{body}");
    assert!(!body.contains("\"upload\""), "{body}");
    // Missing, wrong and read-only credentials.
    assert_eq!(http(&server.url, "PUT", &object, &[], &content).0, 401);
    let wrong = basic("w", "nope");
    assert_eq!(
        http(
            &server.url,
            "PUT",
            &object,
            &[("Authorization", &wrong)],
            &content
        )
        .0,
        401
    );
    let reader = basic("r", "r-secret");
    assert_eq!(
        http(
            &server.url,
            "PUT",
            &object,
            &[("Authorization", &reader)],
            &content
        )
        .0,
        403
    );
    let (status, _) = http(&server.url, "POST", "/objects/batch", &[], batch.as_bytes());
    assert_eq!(status, 401);
    // Oversize bodies: an object over the limit, a batch request over the limit.
    let big = random_bytes(72, (1 << 20) + 1);
    let big_object = format!("/objects/{}/{}", sha256_hex(&big), big.len());
    assert_eq!(http(&server.url, "PUT", &big_object, &auth, &big).0, 413);
    let huge_batch = format!(
        r#"{{"operation":"upload","objects":[{}]}}"#,
        vec![format!(r#"{{"oid":"{id}","size":1}}"#); 100].join(",")
    );
    assert_eq!(
        http(
            &server.url,
            "POST",
            "/objects/batch",
            &auth,
            huge_batch.as_bytes()
        )
        .0,
        413
    );

    assert!(server.objects().is_empty(), "{:?}", server.objects());
    assert!(files_under(&server.root.join("tmp")).is_empty());
    // The right bytes with the right credentials are stored.
    assert_eq!(http(&server.url, "PUT", &object, &auth, &content).0, 200);
    assert_eq!(server.objects().len(), 1);
    let (status, body) = http(
        &server.url,
        "GET",
        &object,
        &[("Authorization", &reader)],
        b"",
    );
    assert_eq!(status, 200);
    assert!(body == content);
    // Batch answers carry no verify action, but the endpoint answers those
    // who call it: 200 for a stored object, 404 for one that is not.
    let verify = |oid: &str, size: usize| {
        let request = format!(r#"{{"oid":"{oid}","size":{size}}}"#);
        http(
            &server.url,
            "POST",
            "/objects/verify",
            &auth,
            request.as_bytes(),
        )
        .0
    };
    assert_eq!(verify(&id, content.len()), 200);
    assert_eq!(verify(&sha256_hex(b"absent"), 6), 404);
    let upload = format!(
        r#"{{"operation":"upload","transfers":["basic"],"objects":[{{"oid":"{}","size":6}}]}}"#,
        sha256_hex(b"absent")
    );
    let (status, body) = text(http(
        &server.url,
        "POST",
        "/objects/batch",
        &auth,
        upload.as_bytes(),
    ));
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"upload\"") && !body.contains("\"verify\""),
        "{body}"
    );
}

/// An `fcache-multi` request body: each object as `<oid> <size>\n` and its bytes.
fn frames(objects: &[(&str, usize, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (oid, size, bytes) in objects {
        body.extend_from_slice(format!("{oid} {size}\n").as_bytes());
        body.extend_from_slice(bytes);
    }
    body
}

#[test]
fn multi_object_uploads_store_what_checks_out_and_nothing_of_a_bad_body() {
    let env = TestEnv::new();
    let server = serve_for_w_and_r(&env, &["--max-object-size", "1MiB"]);
    let writer = basic("w", "w-secret");
    let auth = [("Authorization", writer.as_str())];
    let post = |headers: &[(&str, &str)], body: &[u8]| {
        text(http(&server.url, "POST", "/objects/multi", headers, body))
    };
    let [a, b, c] = [1, 2, 3].map(|seed| random_bytes(200 + seed, 5000 + seed as usize));
    let [ida, idb, idc] = [&a, &b, &c].map(|bytes| sha256_hex(bytes));

    // The batch API offers the adapter for uploads to clients that ask.
    let batch = |operation: &str| {
        let request = format!(
            r#"{{"operation":"{operation}","transfers":["fcache-multi","basic"],"objects":[{{"oid":"{ida}","size":{}}}]}}"#,
            a.len()
        );
        text(http(
            &server.url,
            "POST",
            "/objects/batch",
            &auth,
            request.as_bytes(),
        ))
    };
    let (status, body) = batch("upload");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""transfer":"fcache-multi""#), "{body}");
    assert!(body.contains("/objects/multi\""), "{body}");
    let (status, body) = batch("download");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""transfer":"basic""#), "{body}");
    assert!(body.contains(r#""code":404"#), "{body}"); // nothing stored yet

    // Refused as a whole, nothing stored: no or read-only credentials, a
    // body that ends inside an object (even after a whole one), a header
    // that is not one, a traversal identifier, an object over the limit.
    let good = frames(&[(&ida, a.len(), &a)]);
    let reader = basic("r", "r-secret");
    assert_eq!(post(&[], &good).0, 401);
    assert_eq!(post(&[("Authorization", &reader)], &good).0, 403);
    let cut = frames(&[(&ida, a.len(), &a), (&idb, b.len(), &b[..100])]);
    let (status, body) = post(&auth, &cut);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains(&idb) && body.contains("broke off"), "{body}");
    let mut garbage = good.clone();
    garbage.extend_from_slice(b"nonsense\n");
    assert_eq!(post(&auth, &garbage).0, 400);
    for bad in ["../../../../etc/passwd", &ida.to_uppercase(), &ida[..63]] {
        let mut body = good.clone();
        body.extend(frames(&[(bad, 5, b"hello")]));
        let (status, answer) = post(&auth, &body);
        assert_eq!(status, 422, "{bad}: {answer}");
    }
    let big = random_bytes(209, (1 << 20) + 1);
    let (status, body) = post(&auth, &frames(&[(&sha256_hex(&big), big.len(), &big)]));
    assert_eq!(status, 413, "{body}");
    let many = frames(&vec![(ida.as_str(), a.len(), a.as_slice()); 1001]);
    let (status, body) = post(&auth, &many);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("more than 1000 objects"), "{body}");
    assert!(server.objects().is_empty(), "{:?}", server.objects());
    assert!(files_under(&server.root.join("tmp")).is_empty());

    // A well-formed body: the objects that hash to their identifiers are
    // stored, the one that does not is refused alone.
    let wrong = random_bytes(210, b.len());
    let body = frames(&[
        (&ida, a.len(), &a),
        (&idb, b.len(), &wrong),
        (&idc, c.len(), &c),
    ]);
    let (status, answer) = post(&auth, &body);
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let objects = answer["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 3, "{answer}");
    assert!(objects[0].get("error").is_none(), "{answer}");
    assert_eq!(objects[1]["error"]["code"], 422, "{answer}");
    assert!(objects[2].get("error").is_none(), "{answer}");
    let mut stored: Vec<String> = server
        .objects()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    stored.sort();
    let mut expected = vec![ida.clone(), idc.clone()];
    expected.sort();
    assert_eq!(stored, expected);
    let object = format!("/objects/{idc}/{}", c.len());
    assert!(http(&server.url, "GET", &object, &auth, b"").1 == c);
    // Sending them again stores nothing new and is no error.
    assert_eq!(post(&auth, &frames(&[(&ida, a.len(), &a)])).0, 200);
    assert_eq!(server.objects().len(), 2);
    assert!(files_under(&server.root.join("tmp")).is_empty());
    server.wait_for_log("POST /objects/multi 422", 3);
}

#[test]
fn a_client_killed_mid_upload_leaves_nothing_visible() {
    let env = TestEnv::new();
    let server = Served::fcache(&env, &[]);
    let content = random_bytes(80, 4 << 20);
    let object = format!("/objects/{}/{}", sha256_hex(&content), content.len());
    // A client sends the head of a request and the first `sent` bytes of
    // its body, waits until the server is receiving into a temporary file,
    // and dies: its connection closes half way.
    let die_mid_request = |request: &str, body: &[u8], sent: usize| {
        let addr = server.url.trim_start_matches("http://");
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "{request} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        stream.write_all(&body[..sent]).unwrap();
        stream.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while files_under(&server.root.join("tmp")).is_empty() {
            assert!(Instant::now() < deadline, "no upload under way");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    die_mid_request(&format!("PUT {object}"), &content, 1 << 20);
    server.wait_for_log(&format!("PUT {object} "), 1);
    assert!(server.objects().is_empty(), "{:?}", server.objects());
    assert!(
        files_under(&server.root.join("tmp")).is_empty(),
        "{:?}",
        files_under(&server.root.join("tmp"))
    );
    // The same for a many-object request, killed inside its second object:
    // the first is whole (small: held in memory), the second, large, is
    // being received into a temporary file.
    let first = random_bytes(81, 1000);
    let body = frames(&[
        (&sha256_hex(&first), first.len(), &first),
        (&sha256_hex(&content), content.len(), &content),
    ]);
    die_mid_request("POST /objects/multi", &body, 2 << 20);
    server.wait_for_log("POST /objects/multi ", 1);
    assert!(server.objects().is_empty(), "{:?}", server.objects());
    assert!(files_under(&server.root.join("tmp")).is_empty());
    // A whole upload afterwards succeeds.
    assert_eq!(http(&server.url, "PUT", &object, &[], &content).0, 200);
    assert_eq!(server.objects().len(), 1);
}

#[test]
fn serve_stops_on_sigterm_and_refuses_anonymous_remote_listening() {
    let env = TestEnv::new();
    let mut server = Served::fcache(&env, &[]);
    let status = server.terminate();
    assert!(status.success(), "{status}");
    server.wait_for_log("stopped", 1);

    let alice = env.user("alice");
    let refused = alice
        .fcache(
            env.path(),
            ["serve", "--root", "x", "--listen", "0.0.0.0:0"],
        )
        .failure();
    assert!(
        refused.stderr().contains("--allow-anonymous-remote"),
        "{}",
        refused.stderr()
    );
    assert_eq!(refused.stderr().lines().count(), 1, "{}", refused.stderr());
}
