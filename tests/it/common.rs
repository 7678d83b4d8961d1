//! The test context: a temporary HOME per user, a cache per user, one archive
//! shared by the users of a test. Environment is set on each command, never
//! on the test process.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

pub struct TestEnv {
    pub root: TempDir,
    pub archive: PathBuf,
}

#[derive(Clone)]
pub struct User {
    pub home: PathBuf,
    pub cache: PathBuf,
    pub archive: PathBuf,
    pub extra_env: Vec<(String, String)>,
    /// Leave the cache and archive where fcache puts them by default (under HOME).
    pub default_places: bool,
}

impl TestEnv {
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("fcache-it-")
            .tempdir()
            .unwrap();
        let archive = root.path().join("archive");
        Self { root, archive }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// Where the shared directory archive keeps the object `id` (hex).
    pub fn archived(&self, id: &str) -> PathBuf {
        self.archive
            .join("objects")
            .join(&id[0..2])
            .join(&id[2..4])
            .join(id)
    }

    /// A user with an empty HOME and cache, the filter installed globally.
    pub fn user(&self, name: &str) -> User {
        let home = self.path().join(format!("home-{name}"));
        std::fs::create_dir_all(&home).unwrap();
        let user = User {
            cache: self.path().join(format!("cache-{name}")),
            home,
            archive: self.archive.clone(),
            extra_env: Vec::new(),
            default_places: false,
        };
        user.git(
            self.path(),
            ["config", "--global", "init.defaultBranch", "main"],
        );
        user.fcache(self.path(), ["install"]).success();
        user
    }

    /// A bare repository to push to.
    pub fn bare(&self, user: &User, name: &str) -> PathBuf {
        let path = self.path().join(name);
        user.git(
            self.path(),
            ["init", "-q", "--bare", path.to_str().unwrap()],
        );
        path
    }
}

/// Where cargo put the `fcache` binary under test; first on every command's PATH,
/// so that git's filter runs it.
pub fn bin_dir() -> PathBuf {
    assert_cmd::cargo::cargo_bin("fcache")
        .parent()
        .unwrap()
        .to_owned()
}

pub struct Run {
    pub output: Output,
    pub what: String,
}

impl Run {
    pub fn success(self) -> Self {
        assert!(
            self.output.status.success(),
            "{} failed ({}):\nstdout: {}\nstderr: {}",
            self.what,
            self.output.status,
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        );
        self
    }

    pub fn failure(self) -> Self {
        assert!(
            !self.output.status.success(),
            "{} unexpectedly succeeded:\nstdout: {}\nstderr: {}",
            self.what,
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        );
        self
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

impl User {
    pub fn with_env(&self, key: &str, value: &str) -> User {
        let mut u = self.clone();
        u.extra_env.push((key.to_owned(), value.to_owned()));
        u
    }

    pub fn command(&self, program: &str, dir: &Path) -> Command {
        let mut cmd = Command::new(program);
        let path = std::env::join_paths(std::iter::once(bin_dir()).chain(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        )))
        .unwrap();
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("GIT_")
                || k.starts_with("FCACHE_")
                || k.starts_with("XDG_")
                || k.starts_with("AWS_")
            {
                cmd.env_remove(&key);
            }
        }
        cmd.current_dir(dir)
            .env("HOME", &self.home)
            .env("PATH", path)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_NAME", "Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com")
            .stdin(Stdio::null());
        if !self.default_places {
            cmd.env("FCACHE_CACHE_DIR", &self.cache)
                .env("FCACHE_ARCHIVE", &self.archive);
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn run<I, S>(&self, program: &str, dir: &Path, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let what = format!(
            "{program} {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let output = self.command(program, dir).args(&args).output().unwrap();
        Run { output, what }
    }

    /// Run git and insist that it succeeds; returns stdout.
    pub fn git<I, S>(&self, dir: &Path, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run("git", dir, args).success().stdout()
    }

    pub fn fcache<I, S>(&self, dir: &Path, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run("fcache", dir, args)
    }

    /// Run a command with `input` on stdin.
    pub fn pipe(&self, program: &str, dir: &Path, args: &[&str], input: &[u8]) -> Run {
        let mut cmd = self.command(program, dir);
        cmd.args(args);
        let output = assert_cmd::Command::from_std(cmd)
            .write_stdin(input.to_vec())
            .output()
            .unwrap();
        Run {
            output,
            what: format!("{program} {}", args.join(" ")),
        }
    }

    /// The same user relying on the default cache and archive places under HOME.
    pub fn with_default_places(&self) -> User {
        User {
            cache: self.home.join(".cache/fcache"),
            archive: self.home.join(".local/share/fcache/archive"),
            default_places: true,
            ..self.clone()
        }
    }

    /// A fresh repository with fcache tracking `patterns`.
    pub fn repo(&self, env: &TestEnv, name: &str, patterns: &[&str]) -> PathBuf {
        let dir = env.path().join(name);
        self.git(env.path(), ["init", "-q", dir.to_str().unwrap()]);
        self.fcache(&dir, ["install"]).success();
        if !patterns.is_empty() {
            let mut args = vec!["track"];
            args.extend_from_slice(patterns);
            self.fcache(&dir, args).success();
        }
        dir
    }

    /// Where this user's cache keeps the object `id` (hex).
    pub fn cached(&self, id: &str) -> PathBuf {
        self.cache
            .join("objects")
            .join(&id[0..2])
            .join(&id[2..4])
            .join(format!("{id}.cache"))
    }

    /// Every object file in this user's cache.
    pub fn cached_objects(&self) -> Vec<PathBuf> {
        files_under(&self.cache.join("objects"))
    }
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    fcache::oid::ObjectId::of_bytes(bytes).to_string()
}

pub fn marker_for(bytes: &[u8]) -> String {
    format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
        sha256_hex(bytes),
        bytes.len()
    )
}

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Make a file writable again (objects are stored read-only) and overwrite it.
pub fn overwrite(path: &Path, bytes: &[u8]) {
    let mut perms = std::fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(path, perms).unwrap();
    std::fs::write(path, bytes).unwrap();
}
