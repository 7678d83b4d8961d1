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
//! | `FCACHE_S3_ENDPOINT` | `fcache.s3.endpoint` | S3 archives: the service URL (default: `AWS_ENDPOINT_URL`, else AWS) |
//! | `FCACHE_S3_REGION`   | `fcache.s3.region`  | S3 archives: the region (default: `AWS_REGION`, else `us-east-1`) |
//! | `AWS_*`              | —                   | S3 archives: credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) and the other standard variables |
//! | `FCACHE_NOW`         | —                   | fixed RFC 3339 time, for tests                    |
//! | `FCACHE_REPORT_PEAK_MEMORY` | —            | print peak resident memory on exit (benchmarks)   |

use std::fmt;
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
    pub s3: S3Settings,
    pub clock: Clock,
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
        let s3 = S3Settings {
            endpoint: env("FCACHE_S3_ENDPOINT").or(get("fcache.s3.endpoint")?),
            region: env("FCACHE_S3_REGION").or(get("fcache.s3.region")?),
            // vars_os: one variable that is not UTF-8 must not stop fcache.
            aws_env: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .filter(|(k, v)| k.starts_with("AWS_") && !v.is_empty())
                .collect(),
        };
        let clock = match env("FCACHE_NOW") {
            Some(v) => Clock::Fixed(clock::parse(&v).ok_or_else(|| ConfigError::Invalid {
                key: "FCACHE_NOW".to_owned(),
                value: v.clone(),
                reason: "expected an RFC 3339 time".to_owned(),
            })?),
            None => Clock::System,
        };
        Ok(Self {
            cache_dir,
            archive,
            index_format,
            strict,
            skip_smudge,
            concurrent_transfers,
            s3,
            clock,
        })
    }
}
