//! The git repository fcache works in, read through git2 (never written:
//! changes to git's own state go through the `git` command).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use git2::{ObjectType, Oid, Repository, Tree};

use crate::marker::{self, Marker};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("not inside a git repository (run this in a repository's work tree)")]
    NotARepository,
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error("unknown revision {0:?}")]
    UnknownRevision(String),
}

pub struct Repo {
    git: Repository,
}

impl Repo {
    /// Find the repository the way git does (`GIT_DIR`, then upwards from the
    /// current directory).
    pub fn discover() -> Result<Self, RepoError> {
        match Repository::open_from_env() {
            Ok(git) => Ok(Self { git }),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Err(RepoError::NotARepository),
            Err(e) => Err(RepoError::Git(e)),
        }
    }

    pub fn git(&self) -> &Repository {
        &self.git
    }

    /// `.git/fcache`, shared by every worktree of the repository.
    pub fn fcache_dir(&self) -> PathBuf {
        self.git.commondir().join("fcache")
    }

    /// Where this work tree's stat cache lives: `.git/fcache` for the main
    /// work tree, the linked work tree's own git directory for the others
    /// (paths in it are relative to one work tree).
    pub fn stat_cache_dir(&self) -> PathBuf {
        self.git.path().join("fcache")
    }

    pub fn workdir(&self) -> Option<&Path> {
        self.git.workdir()
    }

    pub fn config(&self) -> Result<git2::Config, RepoError> {
        Ok(self.git.config()?)
    }

    /// Where hooks go: `core.hooksPath` when set (relative to the work tree), else `.git/hooks`.
    pub fn hooks_dir(&self) -> Result<PathBuf, RepoError> {
        let config = self.git.config()?;
        match config.get_path("core.hooksPath") {
            Ok(p) if p.is_absolute() => Ok(p),
            Ok(p) => Ok(self.workdir().unwrap_or_else(|| self.git.path()).join(p)),
            Err(_) => Ok(self.git.commondir().join("hooks")),
        }
    }

    /// The marker a blob holds, if it holds one.
    pub fn blob_marker(&self, oid: Oid) -> Result<Option<Marker>, RepoError> {
        let odb = self.git.odb()?;
        let (size, kind) = odb.read_header(oid)?;
        if kind != ObjectType::Blob || size >= marker::MAX_LEN {
            return Ok(None);
        }
        Ok(Marker::parse(self.git.find_blob(oid)?.content()))
    }

    /// Every entry of git's index (stage 0) whose blob is a marker: path
    /// relative to the work tree, marker, file mode.
    pub fn index_markers(&self) -> Result<Vec<(PathBuf, Marker, u32)>, RepoError> {
        let index = self.git.index()?;
        let mut out = Vec::new();
        for entry in index.iter() {
            // Stage bits live in flags; only stage 0 (no conflict) is checked out.
            if (entry.flags >> 12) & 0x3 != 0 || entry.mode & 0o170000 != 0o100000 {
                continue;
            }
            if let Some(m) = self.blob_marker(entry.id)? {
                out.push((bytes_to_path(&entry.path), m, entry.mode));
            }
        }
        Ok(out)
    }

    /// Every marker in HEAD's tree, by path. An unborn HEAD has none.
    pub fn head_markers(&self) -> Result<BTreeMap<String, Marker>, RepoError> {
        let head = match self.git.head() {
            Ok(h) => h,
            Err(e) if e.code() == git2::ErrorCode::UnbornBranch => return Ok(BTreeMap::new()),
            Err(e) => return Err(e.into()),
        };
        let tree = head.peel_to_tree()?;
        let mut out = BTreeMap::new();
        self.walk_tree(&tree, "", None, &mut |path, m| {
            out.insert(path.to_owned(), m);
        })?;
        Ok(out)
    }

    /// Every marker referenced by the commits reachable from `include` and not
    /// from `exclude`, with one path where each was seen.
    pub fn markers_in_commits(
        &self,
        include: &[Oid],
        exclude: &[Oid],
    ) -> Result<BTreeMap<Marker, String>, RepoError> {
        let mut walk = self.git.revwalk()?;
        for oid in include {
            walk.push(*oid)?;
        }
        for oid in exclude {
            // A remote ref we do not have locally cannot be excluded; skip it.
            if self.git.find_commit(*oid).is_ok() {
                walk.hide(*oid)?;
            }
        }
        let mut seen = HashSet::new();
        let mut out = BTreeMap::new();
        for commit in walk {
            let tree = self.git.find_commit(commit?)?.tree()?;
            self.walk_tree(&tree, "", Some(&mut seen), &mut |path, m| {
                out.entry(m).or_insert_with(|| path.to_owned());
            })?;
        }
        Ok(out)
    }

    pub fn resolve_commit(&self, spec: &str) -> Result<Oid, RepoError> {
        self.git
            .revparse_single(spec)
            .and_then(|o| o.peel_to_commit())
            .map(|c| c.id())
            .map_err(|_| RepoError::UnknownRevision(spec.to_owned()))
    }

    /// Tips of every local branch, tag and remote-tracking branch.
    pub fn all_ref_tips(&self) -> Result<Vec<Oid>, RepoError> {
        let mut tips = Vec::new();
        for r in self.git.references()? {
            if let Ok(commit) = r?.peel_to_commit() {
                tips.push(commit.id());
            }
        }
        Ok(tips)
    }

    /// Tips of `refs/remotes/<remote>/*`.
    pub fn remote_tips(&self, remote: &str) -> Result<Vec<Oid>, RepoError> {
        let mut tips = Vec::new();
        for r in self
            .git
            .references_glob(&format!("refs/remotes/{remote}/*"))?
        {
            if let Ok(commit) = r?.peel_to_commit() {
                tips.push(commit.id());
            }
        }
        Ok(tips)
    }

    /// Walk a tree depth first, calling `found` for each blob holding a marker.
    /// With `seen`, trees and blobs already seen are skipped, so walking many
    /// commits costs about as much as the trees that differ between them.
    fn walk_tree(
        &self,
        tree: &Tree<'_>,
        prefix: &str,
        mut seen: Option<&mut HashSet<Oid>>,
        found: &mut dyn FnMut(&str, Marker),
    ) -> Result<(), RepoError> {
        for entry in tree.iter() {
            let oid = entry.id();
            if let Some(seen) = seen.as_deref_mut()
                && !seen.insert(oid)
            {
                continue;
            }
            let name = String::from_utf8_lossy(entry.name_bytes());
            let path = if prefix.is_empty() {
                name.into_owned()
            } else {
                format!("{prefix}/{name}")
            };
            match entry.kind() {
                Some(ObjectType::Tree) => {
                    let sub = self.git.find_tree(oid)?;
                    self.walk_tree(&sub, &path, seen.as_deref_mut(), found)?;
                }
                Some(ObjectType::Blob) => {
                    if let Some(m) = self.blob_marker(oid)? {
                        found(&path, m);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A path as git stores it (bytes) as this platform's path.
#[cfg(unix)]
pub(crate) fn bytes_to_path(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(not(unix))]
pub(crate) fn bytes_to_path(bytes: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
}

/// Does the work-tree file at `path` hold exactly a marker (rather than content)?
pub fn file_holds_marker(path: &Path) -> Option<Marker> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() >= marker::MAX_LEN as u64 {
        return None;
    }
    Marker::parse(&std::fs::read(path).ok()?)
}
