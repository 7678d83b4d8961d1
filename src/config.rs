//! Every setting fcache reads, in one place. Environment variables win over
//! git config (`fcache.*`, read through the repository's config, so local,
//! global and system levels all apply).
//!
//! | env                  | git config          | meaning                                           |
//! |----------------------|---------------------|---------------------------------------------------|
//! | `FCACHE_CACHE_DIR`   | `fcache.cachedir`   | the shared cache (default: platform cache dir)    |
//! | `FCACHE_ARCHIVE`     | `fcache.archive`    | the archive location (default: platform data dir) |
//! | —                    | `fcache.index`      | index format: `csv`                               |
//! | `FCACHE_STRICT`      | `fcache.strict`     | smudge fails instead of leaving a marker          |
//! | `FCACHE_SKIP_SMUDGE` | —                   | smudge passes markers through                     |
//! | `FCACHE_CONCURRENT_TRANSFERS` | `fcache.concurrenttransfers` | transfers to or from the archive at once (default: the archive's own) |
//! | `FCACHE_NOW`         | —                   | fixed RFC 3339 time, for tests                    |
//! | `FCACHE_REPORT_PEAK_MEMORY` | —            | print peak resident memory on exit (benchmarks): `1` to stderr, else append to that file |
//! | `FCACHE_DEBUG_LOG`   | —                   | filter-process appends what it did per file to this file (`clean hashed PATH ID`, `clean unchanged PATH ID`, ...) |

use std::path::PathBuf;

use crate::clock::{self, Clock};
use crate::index;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid value {value:?} for {key}: {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
    #[error("cannot read git config")]
    Git(#[source] git2::Error),
    #[error(
        "no home directory found to place the cache and archive; set FCACHE_CACHE_DIR and FCACHE_ARCHIVE"
    )]
    NoHome,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub cache_dir: PathBuf,
    pub archive: String,
    pub index_format: index::Format,
    pub strict: bool,
    pub skip_smudge: bool,
    /// Transfers to or from the archive at once; `None`: the archive's default.
    pub concurrent_transfers: Option<usize>,
    /// Where filter-process logs what it did with each file.
    pub debug_log: Option<PathBuf>,
    pub clock: Clock,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError::Invalid {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: "expected true or false".to_owned(),
        }),
    }
}

fn expand_home(value: &str) -> PathBuf {
    match (value.strip_prefix("~/"), directories::BaseDirs::new()) {
        (Some(rest), Some(base)) => base.home_dir().join(rest),
        _ => PathBuf::from(value),
    }
}

impl Config {
    /// Read the settings; `git` is the repository's config when there is one,
    /// otherwise the user's global config.
    pub fn load(git: Option<&git2::Config>) -> Result<Self, ConfigError> {
        let get = |key: &str| -> Result<Option<String>, ConfigError> {
            let Some(git) = git else { return Ok(None) };
            match git.get_string(key) {
                Ok(v) => Ok(Some(v)),
                Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
                Err(e) => Err(ConfigError::Git(e)),
            }
        };
        let dirs = directories::ProjectDirs::from("", "", "fcache");

        let cache_dir = match env("FCACHE_CACHE_DIR").or(get("fcache.cachedir")?) {
            Some(v) => expand_home(&v),
            None => dirs
                .as_ref()
                .ok_or(ConfigError::NoHome)?
                .cache_dir()
                .to_owned(),
        };
        let archive = match env("FCACHE_ARCHIVE").or(get("fcache.archive")?) {
            Some(v) if v.starts_with("~/") => expand_home(&v).display().to_string(),
            Some(v) => v,
            None => dirs
                .as_ref()
                .ok_or(ConfigError::NoHome)?
                .data_dir()
                .join("archive")
                .display()
                .to_string(),
        };
        let index_format = match get("fcache.index")? {
            Some(v) => v.parse().map_err(|reason| ConfigError::Invalid {
                key: "fcache.index".to_owned(),
                value: v.clone(),
                reason,
            })?,
            None => index::Format::default(),
        };
        let strict = match env("FCACHE_STRICT") {
            Some(v) => parse_bool("FCACHE_STRICT", &v)?,
            None => match get("fcache.strict")? {
                Some(v) => parse_bool("fcache.strict", &v)?,
                None => false,
            },
        };
        let skip_smudge = match env("FCACHE_SKIP_SMUDGE") {
            Some(v) => parse_bool("FCACHE_SKIP_SMUDGE", &v)?,
            None => false,
        };
        let concurrent_transfers = match env("FCACHE_CONCURRENT_TRANSFERS")
            .map(|v| ("FCACHE_CONCURRENT_TRANSFERS", v))
            .or(get("fcache.concurrenttransfers")?.map(|v| ("fcache.concurrenttransfers", v)))
        {
            Some((key, v)) => Some(
                v.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or_else(|| ConfigError::Invalid {
                        key: key.to_owned(),
                        value: v.clone(),
                        reason: "expected a number from 1 to 256".to_owned(),
                    })?,
            ),
            None => None,
        };
        let clock = match env("FCACHE_NOW") {
            Some(v) => Clock::Fixed(clock::parse(&v).ok_or_else(|| ConfigError::Invalid {
                key: "FCACHE_NOW".to_owned(),
                value: v.clone(),
                reason: "expected an RFC 3339 time".to_owned(),
            })?),
            None => Clock::System,
        };
        let debug_log = env("FCACHE_DEBUG_LOG").map(PathBuf::from);
        Ok(Self {
            debug_log,
            cache_dir,
            archive,
            index_format,
            strict,
            skip_smudge,
            concurrent_transfers,
            clock,
        })
    }
}
