//! Every setting fcache reads, in one place. Environment variables win over
//! git config (`fcache.*`, read through the repository's config, so local,
//! global and system levels all apply).
//!
//! | env                  | git config          | meaning                                           |
//! |----------------------|---------------------|---------------------------------------------------|
//! | `FCACHE_CACHE_DIR`   | `fcache.cachedir`   | the shared cache (default: platform cache dir)    |
//! | `FCACHE_ARCHIVE`     | `fcache.archive`    | the archive location (default: platform data dir) |
//! | —                    | `fcache.index`      | index format: `csv`, `json` or `sqlite`           |
//! | `FCACHE_STRICT`      | `fcache.strict`     | smudge fails instead of leaving a marker          |
//! | `FCACHE_SKIP_SMUDGE` | —                   | smudge passes markers through                     |
//! | `FCACHE_CONCURRENT_TRANSFERS` | `fcache.concurrenttransfers` | transfers to or from the archive at once (default: the archive's own) |
//! | —                    | `fcache.cachelimit` | total bytes the cache may hold (`500MiB`, `10GB`) |
//! | —                    | `fcache.cachemaxfiles` | objects the cache may hold                     |
//! | `FCACHE_LOCK_TIMEOUT` | `fcache.locktimeout` | seconds to wait for the cache lock (default 300) |
//! | `FCACHE_S3_ENDPOINT` | `fcache.s3.endpoint` | S3 archives: the service URL (default: `AWS_ENDPOINT_URL`, else AWS) |
//! | `FCACHE_S3_REGION`   | `fcache.s3.region`  | S3 archives: the region (default: `AWS_REGION`, else `us-east-1`) |
//! | `AWS_*`              | —                   | S3 archives: credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) and the other standard variables |
//! | `FCACHE_HTTP_TOKEN`  | `fcache.http.token` | bearer token for an http(s) archive (else user:password in the URL, else git's credential helper on 401) |
//! | `FCACHE_NO_PROGRESS` | —                   | no progress bars, even on a terminal              |
//! | `FCACHE_NOW`         | —                   | fixed RFC 3339 time, for tests                    |
//! | `FCACHE_REPORT_PEAK_MEMORY` | —            | print peak resident memory on exit (benchmarks)   |
//! | `FCACHE_TEST_PAUSE_IN_SAVE` | —            | tests only: an index save half done creates this file and sleeps, to be killed there |
//! | `FCACHE_REPORT_PEAK_MEMORY` | —            | print peak resident memory on exit (benchmarks): `1` to stderr, else append to that file |
//! | `FCACHE_DEBUG_LOG`   | —                   | filter-process appends what it did per file to this file (`clean hashed PATH ID`, `clean unchanged PATH ID`, ...) |

use std::fmt;
use std::path::PathBuf;

pub use crate::cache::Limits;
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
    /// Limits on the cache; unset means unlimited.
    pub limits: Limits,
    /// How long to wait for the cache lock.
    pub lock_timeout: std::time::Duration,
    /// Transfers to or from the archive at once; `None`: the archive's default.
    pub concurrent_transfers: Option<usize>,
    pub s3: S3Settings,
    /// Bearer token for an http(s) archive.
    pub http_token: Option<String>,
    /// Never draw progress bars.
    pub no_progress: bool,
    /// Where filter-process logs what it did with each file.
    pub debug_log: Option<PathBuf>,
    pub clock: Clock,
}

/// `FCACHE_TEST_PAUSE_IN_SAVE`: read where the index saves, which has no `Config`.
pub fn test_pause_in_save() -> Option<PathBuf> {
    env("FCACHE_TEST_PAUSE_IN_SAVE").map(PathBuf::from)
}

/// What an `s3://` archive needs besides its bucket and prefix.
#[derive(Clone, Default)]
pub struct S3Settings {
    /// `fcache.s3.endpoint`: the service URL; `None` leaves it to `AWS_*`, then AWS.
    pub endpoint: Option<String>,
    /// `fcache.s3.region`; `None` leaves it to `AWS_*`, then `us-east-1`.
    pub region: Option<String>,
    /// Every non-empty `AWS_*` variable of the environment: credentials and
    /// the standard settings object_store understands. Held here rather than
    /// read where used so that tests and `fcache serve` can hand them in.
    pub aws_env: Vec<(String, String)>,
}

impl S3Settings {
    /// The value of one `AWS_*` variable, if set.
    pub fn aws(&self, name: &str) -> Option<&str> {
        self.aws_env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

// Secrets live in `aws_env`: show which variables are set, never their values.
impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field(
                "aws_env",
                &self.aws_env.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
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

/// A byte count with an optional unit: `1048576`, `500MiB`, `10GB`, `2g`.
/// Decimal units (kB, MB, GB, TB) are powers of 1000, binary ones (KiB, MiB,
/// GiB, TiB) and single letters (k, m, g, t) powers of 1024, as git does.
pub fn parse_bytes(value: &str) -> Option<u64> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    if number.is_empty() {
        return None;
    }
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(factor);
    }
    let n: f64 = number.parse().ok()?;
    let bytes = n * factor as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
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
        let limits = Limits {
            bytes: match get("fcache.cachelimit")? {
                Some(v) => Some(parse_bytes(&v).ok_or_else(|| ConfigError::Invalid {
                    key: "fcache.cachelimit".to_owned(),
                    value: v.clone(),
                    reason: "expected a size such as 500MiB, 10GB or 1048576".to_owned(),
                })?),
                None => None,
            },
            files: match get("fcache.cachemaxfiles")? {
                Some(v) => Some(v.trim().parse::<u64>().map_err(|_| ConfigError::Invalid {
                    key: "fcache.cachemaxfiles".to_owned(),
                    value: v.clone(),
                    reason: "expected a number of objects".to_owned(),
                })?),
                None => None,
            },
        };
        let lock_timeout = match env("FCACHE_LOCK_TIMEOUT")
            .map(|v| ("FCACHE_LOCK_TIMEOUT", v))
            .or(get("fcache.locktimeout")?.map(|v| ("fcache.locktimeout", v)))
        {
            Some((key, v)) => std::time::Duration::from_secs_f64(
                v.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| ConfigError::Invalid {
                        key: key.to_owned(),
                        value: v.clone(),
                        reason: "expected a number of seconds".to_owned(),
                    })?,
            ),
            None => std::time::Duration::from_secs(300),
        };
        let s3 = S3Settings {
            endpoint: env("FCACHE_S3_ENDPOINT").or(get("fcache.s3.endpoint")?),
            region: env("FCACHE_S3_REGION").or(get("fcache.s3.region")?),
            // vars_os: one variable that is not UTF-8 must not stop fcache.
            aws_env: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .filter(|(k, v)| k.starts_with("AWS_") && !v.is_empty())
                .collect(),
        };
        let http_token = env("FCACHE_HTTP_TOKEN").or(get("fcache.http.token")?);
        let no_progress = match env("FCACHE_NO_PROGRESS") {
            Some(v) => parse_bool("FCACHE_NO_PROGRESS", &v)?,
            None => false,
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
            limits,
            lock_timeout,
            concurrent_transfers,
            s3,
            http_token,
            no_progress,
            clock,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_bytes("1048576"), Some(1 << 20));
        assert_eq!(parse_bytes("500MiB"), Some(500 << 20));
        assert_eq!(parse_bytes("10GB"), Some(10_000_000_000));
        assert_eq!(parse_bytes("2g"), Some(2 << 30));
        assert_eq!(parse_bytes("1.5 KiB"), Some(1536));
        assert_eq!(parse_bytes(" 7 b "), Some(7));
        for bad in [
            "",
            "MiB",
            "-1",
            "10 parsecs",
            "1e3",
            "99999999999999999999TB",
        ] {
            assert_eq!(parse_bytes(bad), None, "{bad}");
        }
    }
}
