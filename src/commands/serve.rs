//! `serve`: an archive server speaking the Git LFS Batch API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};

use crate::archive;
use crate::config::Config;
use crate::serve::{Log, Options, Server, shutdown_signal};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The archive to serve: a directory (created when missing) or any
    /// archive location fcache accepts.
    #[arg(long)]
    root: String,
    /// Address to listen on, HOST:PORT (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Credentials: lines of `read USER:SECRET` or `write USER:SECRET`.
    /// Without it anyone may read and write, so only loopback is served.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Serve without credentials on an address other machines can reach.
    #[arg(long)]
    allow_anonymous_remote: bool,
    /// Largest object accepted (bytes; KiB, MiB, GiB, KB, MB, GB allowed).
    #[arg(long, default_value = "100GiB", value_parser = parse_size)]
    max_object_size: u64,
    /// Largest batch or verify request body.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    max_request_body: u64,
    /// Requests handled at once; more wait for their turn.
    #[arg(long, default_value_t = Options::DEFAULT_MAX_CONCURRENT)]
    max_concurrent: usize,
    /// The URL clients reach this server at, when it is behind a proxy
    /// (default: http:// and the Host the client asked for).
    #[arg(long)]
    public_url: Option<String>,
    /// Where uploads are received (default: ROOT/tmp for a directory, else
    /// the system's temporary directory).
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    crate::config::parse_bytes(s)
        .ok_or_else(|| format!("{s:?} is not a size: expected e.g. 500MiB"))
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // The server's storage takes its settings (an S3 endpoint and keys) from
    // the user's configuration, as fcache's own archive does.
    let config = Config::load(Some(&git2::Config::open_default()?))?;
    let store = archive::open(&args.root, &config)
        .with_context(|| format!("cannot open archive {}", args.root))?;
    if args.root.starts_with("http://") || args.root.starts_with("https://") {
        bail!(
            "fcache serve --root {}: serving another HTTP archive is not supported; give a directory",
            args.root
        );
    }
    let local_dir = match args.root.strip_prefix("file://") {
        Some(path) => Some(PathBuf::from(path)),
        None if !args.root.contains("://") => Some(PathBuf::from(&args.root)),
        None => None,
    };
    if let Some(dir) = &local_dir {
        fs_err::create_dir_all(dir)
            .with_context(|| format!("cannot create archive directory {}", dir.display()))?;
    }
    let tmp_dir = args.tmp_dir.clone().unwrap_or_else(|| match &local_dir {
        Some(dir) => dir.join("tmp"),
        None => std::env::temp_dir().join("fcache-serve"),
    });
    let options = Options {
        listen: args.listen,
        token_file: args.token_file,
        allow_anonymous_remote: args.allow_anonymous_remote,
        max_object_size: args.max_object_size,
        max_request_body: usize::try_from(args.max_request_body).unwrap_or(usize::MAX),
        max_concurrent: args.max_concurrent,
        public_url: args.public_url,
        tmp_dir,
    };
    let log: Log = Arc::new(|line| eprintln!("fcache serve: {line}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    runtime.block_on(async move {
        let shutdown = shutdown_signal();
        let server = Server::bind(options, store, log).await?;
        eprintln!(
            "fcache serve: listening on http://{} (archive {}); use it as fcache.archive or git-lfs's lfs.url",
            server.local_addr(),
            args.root
        );
        server.run(shutdown).await?;
        eprintln!("fcache serve: stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("10GB"), Ok(10_000_000_000));
        assert!(parse_size("5 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
    }
}
