//! An archive in S3-compatible object storage (AWS S3, MinIO, Cloudflare R2,
//! Ceph, SeaweedFS), spoken to directly through the `object_store` crate.
//!
//! Location `s3://bucket[/prefix]`; each object is stored under the key
//! `<prefix>/objects/<id[0..2]>/<id[2..4]>/<id>` (no prefix: `objects/...`),
//! the layout of the directory archive, so a bucket synced to disk is a
//! directory archive. The endpoint and region come from `fcache.s3.endpoint`
//! and `fcache.s3.region` (else `AWS_ENDPOINT_URL` / `AWS_REGION`, else AWS
//! and `us-east-1`); credentials from the standard `AWS_*` variables. With
//! `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` set, those keys are used as
//! they are and no cloud metadata address is ever asked for credentials;
//! without them object_store's usual chain applies (web identity, container,
//! then the EC2 instance metadata service).
//!
//! Transfers stream with flat memory. A download writes the GET body into the
//! sink chunk by chunk; a body that breaks off is asked for again from where
//! it stopped (object_store does so within its retry timeout, this module
//! after it). Requests that fail are retried with backoff. An upload hashes the file as it reads
//! it: objects up to one part go in one PUT only once their hash is checked,
//! with `If-None-Match: *` (create-if-absent); larger ones go as a multipart
//! upload of `PART_SIZE` parts, at most `PARTS_IN_FLIGHT` at once, completed
//! only if the hash matched (otherwise aborted). Until completion a multipart
//! upload is invisible, so an upload killed midway leaves no object, only
//! parts that the bucket's lifecycle rule for incomplete multipart uploads
//! removes. Two pushes of one object are safe: its key names its content, an
//! object already there counts as sent once its size is checked, and a
//! multipart upload that finds the object there before completing is aborted.
//!
//! object_store is async: the archive keeps a small tokio runtime, made on
//! first use (a clean filter that never talks to the archive pays nothing),
//! and blocks on it from the calling thread, so sinks and files are used
//! where the caller is.

use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, RetryConfig, WriteMultipart,
};
use sha2::{Digest, Sha256};

use super::{Archive, ArchiveError, Batch, Download, OwnedRuntime, Upload, check_stored};
use crate::config::S3Settings;
use crate::hashing;
use crate::marker::Marker;
use crate::oid::ObjectId;

/// Size of a multipart upload's parts, and the largest object sent in one
/// PUT (held in memory while it is hashed and sent). S3 wants parts of at
/// least 5 MiB, except the last.
pub const PART_SIZE: usize = 5 << 20;
/// Parts of one upload on the wire at once: memory is about
/// `(PARTS_IN_FLIGHT + 1) * PART_SIZE` per upload, whatever the object size.
const PARTS_IN_FLIGHT: usize = 2;
/// S3's limit on the parts of one upload; past `PART_SIZE * MAX_PARTS`
/// (48 GiB) parts grow.
const MAX_PARTS: u64 = 10_000;
/// How often one download picks up again after its body broke off.
const RESUMES: u32 = 5;
/// Requests about objects (HEAD) in flight at once during a batch call.
const LOOKUPS_IN_FLIGHT: usize = 16;

pub struct S3Archive {
    location: String,
    bucket: String,
    prefix: Option<Key>,
    /// The endpoint configured, if any; without one object_store picks
    /// AWS's for the region (path style, or virtual-hosted when
    /// `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` says so).
    configured_endpoint: Option<String>,
    /// Where requests go, for messages.
    endpoint: String,
    region: String,
    settings: S3Settings,
    client: OnceLock<Arc<Client>>,
}

/// What every request needs, shared with the transfer handles.
struct Client {
    location: String,
    bucket: String,
    endpoint: String,
    store: AmazonS3,
    runtime: OwnedRuntime,
    /// A key under the prefix that holds nothing: listing it tells whether
    /// the bucket exists, within what prefix-scoped credentials may list.
    probe: Key,
    /// Set once the bucket is known to exist: a HEAD that finds nothing
    /// cannot tell a missing object from a missing bucket.
    bucket_seen: OnceLock<()>,
}

impl S3Archive {
    /// Parse `s3://bucket[/prefix]`; nothing is contacted until first use.
    pub fn new(location: &str, settings: &S3Settings) -> Result<Self, ArchiveError> {
        let bad = |reason: &str| ArchiveError::BadLocation {
            location: location.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = location
            .strip_prefix("s3://")
            .ok_or_else(|| bad("expected s3://bucket[/prefix]"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty()
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(bad(
                "the bucket name must be lowercase letters, digits, '-', '.' or '_'",
            ));
        }
        let prefix = prefix.trim_matches('/');
        let prefix = if prefix.is_empty() {
            None
        } else {
            Some(Key::parse(prefix).map_err(|e| bad(&format!("bad prefix: {e}")))?)
        };
        let endpoint = settings
            .endpoint
            .clone()
            .or_else(|| {
                ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
                    .iter()
                    .find_map(|k| settings.aws(k).map(str::to_owned))
            })
            .map(|e| e.trim_end_matches('/').to_owned());
        if let Some(e) = &endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(bad(&format!(
                "the S3 endpoint {e:?} (fcache.s3.endpoint) must start with http:// or https://"
            )));
        }
        let region = settings
            .region
            .clone()
            .or_else(|| settings.aws("AWS_REGION").map(str::to_owned))
            .or_else(|| settings.aws("AWS_DEFAULT_REGION").map(str::to_owned))
            .unwrap_or_else(|| "us-east-1".to_owned());
        Ok(Self {
            location: location.to_owned(),
            bucket: bucket.to_owned(),
            prefix,
            endpoint: endpoint
                .clone()
                .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com")),
            configured_endpoint: endpoint,
            region,
            settings: settings.clone(),
            client: OnceLock::new(),
        })
    }

    /// The key of an object: `<prefix>/objects/aa/bb/<id>`.
    pub fn key(&self, id: &ObjectId) -> Key {
        let hex = id.to_hex();
        let parts = ["objects", &hex[0..2], &hex[2..4], &hex];
        match &self.prefix {
            Some(p) => parts
                .iter()
                .fold(p.clone(), |k, part| k.clone().join(*part)),
            None => Key::from_iter(parts),
        }
    }

    fn client(&self) -> Result<Arc<Client>, ArchiveError> {
        if let Some(c) = self.client.get() {
            return Ok(Arc::clone(c));
        }
        let client = Arc::new(self.connect()?);
        // Another thread may have won the race; either client will do.
        Ok(Arc::clone(self.client.get_or_init(|| client)))
    }

    fn connect(&self) -> Result<Client, ArchiveError> {
        let mut builder = AmazonS3Builder::new()
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    // A whole large object takes as long as it takes; a
                    // stalled connection is caught by the read timeout.
                    .with_timeout_disabled()
                    .with_read_timeout(Duration::from_secs(120)),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 5,
                retry_timeout: Duration::from_secs(60),
            });
        // The standard variables as object_store reads them (credentials,
        // proxy, ...); fcache's own settings below win over them.
        for (key, value) in &self.settings.aws_env {
            if let Ok(k) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(k, value);
            }
        }
        if let Some(endpoint) = &self.configured_endpoint {
            builder = builder
                .with_endpoint(endpoint)
                // AWS_ENDPOINT_URL_S3 would otherwise win over fcache.s3.endpoint.
                .with_config(AmazonS3ConfigKey::S3Endpoint, endpoint);
        }
        let builder = builder
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            // Plain HTTP only where the endpoint itself says http://.
            .with_allow_http(
                self.configured_endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://")),
            )
            .with_conditional_put(S3ConditionalPut::ETagMatch);
        let store = builder.build().map_err(|e| ArchiveError::Remote {
            archive: self.location.clone(),
            message: format!(
                "cannot set up S3 bucket {} at {}: {e}",
                self.bucket, self.endpoint
            ),
            source: None,
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fcache-s3")
            .enable_all()
            .build()
            .map_err(|e| ArchiveError::Remote {
                archive: self.location.clone(),
                message: "cannot start the S3 client's threads".to_owned(),
                source: Some(Box::new(e)),
            })?;
        let probe = ["objects", "ff", "ff", "ff"]
            .iter()
            .fold(self.prefix.clone().unwrap_or_default(), |k, part| {
                k.join(*part)
            });
        Ok(Client {
            location: self.location.clone(),
            bucket: self.bucket.clone(),
            endpoint: self.endpoint.clone(),
            store,
            runtime: OwnedRuntime::new(runtime),
            probe,
            bucket_seen: OnceLock::new(),
        })
    }

    /// The size of each object, `None` where the bucket lacks it, in order.
    fn sizes(&self, objects: &[Marker]) -> Result<Vec<Option<u64>>, ArchiveError> {
        let client = self.client()?;
        let keys: Vec<Key> = objects.iter().map(|m| self.key(&m.id)).collect();
        client.runtime.block_on(async {
            let heads = futures_util::stream::iter(keys.iter().zip(objects))
                .map(|(key, m)| async { client.size_of(key, &m.id).await })
                .buffered(LOOKUPS_IN_FLIGHT)
                .collect::<Vec<_>>()
                .await;
            let sizes = heads.into_iter().collect::<Result<Vec<_>, _>>()?;
            if sizes.iter().any(Option::is_none) {
                client.check_bucket().await?;
            }
            Ok(sizes)
        })
    }
}

impl Archive for S3Archive {
    fn location(&self) -> &str {
        &self.location
    }

    fn contains_many(&self, objects: &[Marker]) -> Result<Vec<bool>, ArchiveError> {
        // An object of the wrong size under the right key is damaged, not held.
        Ok(self
            .sizes(objects)?
            .into_iter()
            .zip(objects)
            .map(|(s, m)| s == Some(m.size))
            .collect())
    }

    fn downloads(&self, objects: &[Marker]) -> Result<Batch<Box<dyn Download>>, ArchiveError> {
        let client = self.client()?;
        Ok(objects
            .iter()
            .zip(self.sizes(objects)?)
            .map(|(m, size)| {
                check_stored(&self.location, m, size).map(|()| {
                    Box::new(S3Download {
                        client: Arc::clone(&client),
                        key: self.key(&m.id),
                        id: m.id,
                    }) as Box<dyn Download>
                })
            })
            .collect())
    }

    fn uploads(&self, objects: &[Marker]) -> Result<Batch<Option<Box<dyn Upload>>>, ArchiveError> {
        let client = self.client()?;
        Ok(objects
            .iter()
            .zip(self.sizes(objects)?)
            .map(|(m, size)| match size {
                Some(size) if size == m.size => Ok(None),
                // Absent, or damaged (the wrong size): the right bytes replace it.
                _ => Ok(Some(Box::new(S3Upload {
                    client: Arc::clone(&client),
                    key: self.key(&m.id),
                    object: *m,
                    replace: size.is_some(),
                }) as Box<dyn Upload>)),
            })
            .collect())
    }

    fn parallelism(&self) -> usize {
        // Network round trips, not disks, bound a remote store; memory per
        // upload is bounded (see PARTS_IN_FLIGHT), so a few at once is cheap.
        4
    }
}

impl Client {
    async fn size_of(&self, key: &Key, id: &ObjectId) -> Result<Option<u64>, ArchiveError> {
        match self.store.head(key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(&format!("cannot look up object {id}"), e)),
        }
    }

    /// Tell a missing bucket from a missing object: list a prefix that holds
    /// nothing. Once per process, and only after some object was not found.
    async fn check_bucket(&self) -> Result<(), ArchiveError> {
        if self.bucket_seen.get().is_some() {
            return Ok(());
        }
        match self.store.list_with_delimiter(Some(&self.probe)).await {
            Ok(_) => {
                let _ = self.bucket_seen.set(());
                Ok(())
            }
            Err(e) => Err(self.error("cannot list the bucket", e)),
        }
    }

    /// One clear message for what went wrong, naming bucket and endpoint.
    fn error(&self, doing: &str, e: object_store::Error) -> ArchiveError {
        let (bucket, endpoint) = (&self.bucket, &self.endpoint);
        let http = http_failure(&e);
        let code = http.as_ref().and_then(|(_, body)| s3_error_code(body));
        let status = http.as_ref().map(|(s, _)| *s);
        let message = if code.as_deref() == Some("NoSuchBucket") || status == Some(404) {
            // A 404 reaching here is about the bucket: objects that are not
            // found are answered before.
            format!(
                "bucket {bucket} does not exist at S3 endpoint {endpoint}; create it, or fix the archive location or fcache.s3.endpoint"
            )
        } else if matches!(status, Some(401 | 403)) {
            let why = code.map(|c| format!(", {c}")).unwrap_or_default();
            format!(
                "S3 endpoint {endpoint} refused access to bucket {bucket} (HTTP {}{why}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and the bucket's permissions",
                status.unwrap_or_default()
            )
        } else {
            format!(
                "{doing} in bucket {bucket} at S3 endpoint {endpoint}: {}",
                innermost(&e)
            )
        };
        // No #[source]: the message says what matters, and object_store's
        // errors repeat their whole chain in each layer's text (request URL,
        // retries, XML body), so printing the chain would bury it.
        ArchiveError::Remote {
            archive: self.location.clone(),
            message,
            source: None,
        }
    }
}

/// The root cause of an error (e.g. "tcp connect error: Connection refused").
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The HTTP status and the text (with the S3 error body, if any) of a failed
/// request. object_store types the common statuses; for the rest (listing,
/// starting a multipart upload) the status is only in the error's text.
fn http_failure(e: &object_store::Error) -> Option<(u16, String)> {
    let mut text = String::new();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        text.push_str(&c.to_string());
        text.push('\n');
        cause = c.source();
    }
    let status = match e {
        object_store::Error::NotFound { .. } => Some(404),
        object_store::Error::PermissionDenied { .. } => Some(403),
        object_store::Error::Unauthenticated { .. } => Some(401),
        _ => None,
    }
    .or_else(|| {
        let at = text.find("status code: ")? + "status code: ".len();
        text[at..].get(..3)?.parse().ok()
    })?;
    Some((status, text))
}

/// The `<Code>` of an S3 error response.
fn s3_error_code(body: &str) -> Option<String> {
    let start = body.find("<Code>")? + "<Code>".len();
    let len = body[start..].find("</Code>")?;
    Some(body[start..start + len].to_owned())
}

struct S3Download {
    client: Arc<Client>,
    key: Key,
    id: ObjectId,
}

impl Download for S3Download {
    fn read(&self, range: Range<u64>, sink: &mut dyn Write) -> Result<u64, ArchiveError> {
        if range.start >= range.end {
            return Ok(0); // S3 has no empty range; there is nothing to send.
        }
        let c = &self.client;
        let doing = || format!("cannot download object {}", self.id);
        // Only the network waits run on the runtime: the sink is written
        // outside it, since a sink may block (a pipe to git, or a channel
        // into another runtime, as in `fcache serve`).
        let mut total = 0u64;
        let mut resumed = 0;
        loop {
            let options = GetOptions {
                range: Some(GetRange::Bounded(range.start + total..range.end)),
                ..Default::default()
            };
            let mut body = match c.runtime.block_on(c.store.get_opts(&self.key, options)) {
                Ok(got) => got.into_stream(),
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(ArchiveError::NotFound {
                        archive: c.location.clone(),
                        id: self.id,
                    });
                }
                // object_store has retried the request already.
                Err(e) => return Err(c.error(&doing(), e)),
            };
            let reached = total;
            let broken = loop {
                match c.runtime.block_on(body.next()) {
                    None => return Ok(total),
                    Some(Ok(chunk)) => {
                        sink.write_all(&chunk)
                            .map_err(|source| ArchiveError::Sink {
                                archive: c.location.clone(),
                                id: self.id,
                                source,
                            })?;
                        total += chunk.len() as u64;
                    }
                    Some(Err(e)) => break e,
                }
            };
            // The body broke off and object_store's own resumption (bound
            // by its retry timeout) gave up. A key names its content, so
            // the rest can always be asked for again: the sink sees each
            // byte once, however long the object takes.
            // The budget is for break-offs in a row: one that made progress
            // starts it again.
            if total > reached {
                resumed = 0;
            }
            resumed += 1;
            if resumed > RESUMES {
                return Err(c.error(&doing(), broken));
            }
            std::thread::sleep(Duration::from_millis(250 << resumed));
        }
    }
}

struct S3Upload {
    client: Arc<Client>,
    key: Key,
    object: Marker,
    /// The key holds a damaged object (the wrong size) to be overwritten.
    replace: bool,
}

impl S3Upload {
    fn io(&self, path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
        let path = path.to_owned();
        move |source| ArchiveError::Io {
            archive: self.client.location.clone(),
            path,
            source,
        }
    }

    fn check(&self, actual: ObjectId, len: u64) -> Result<(), ArchiveError> {
        let archive = self.client.location.clone();
        if len != self.object.size {
            return Err(ArchiveError::WrongSize {
                archive,
                id: self.object.id,
                expected: self.object.size,
                actual: len,
            });
        }
        if actual != self.object.id {
            return Err(ArchiveError::WrongContent {
                archive,
                expected: self.object.id,
                actual,
            });
        }
        Ok(())
    }

    fn doing(&self) -> String {
        format!("cannot upload object {}", self.object.id)
    }

    /// The object is already there: fine if it has the right size (its key
    /// names its content, and every writer checks that before sending).
    async fn already_there(&self) -> Result<(), ArchiveError> {
        let c = &self.client;
        match c.size_of(&self.key, &self.object.id).await? {
            Some(size) if size == self.object.size => Ok(()),
            Some(actual) => Err(ArchiveError::WrongSize {
                archive: c.location.clone(),
                id: self.object.id,
                expected: self.object.size,
                actual,
            }),
            None => Err(ArchiveError::Remote {
                archive: c.location.clone(),
                message: format!(
                    "S3 endpoint {} said object {} already exists in bucket {}, but it is not there",
                    c.endpoint, self.object.id, c.bucket
                ),
                source: None,
            }),
        }
    }

    /// One PUT, create-if-absent, after the content is checked in memory.
    async fn put_whole(&self, file: &mut File, source: &Path) -> Result<(), ArchiveError> {
        let mut bytes = Vec::with_capacity(usize::try_from(self.object.size).unwrap_or(0));
        // One byte more than expected tells a file that grew from one that did not.
        file.take(self.object.size + 1)
            .read_to_end(&mut bytes)
            .map_err(self.io(source))?;
        self.check(ObjectId::of_bytes(&bytes), bytes.len() as u64)?;
        let options = PutOptions {
            mode: if self.replace {
                PutMode::Overwrite
            } else {
                PutMode::Create
            },
            ..Default::default()
        };
        let c = &self.client;
        match c
            .store
            .put_opts(&self.key, PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => self.already_there().await,
            Err(e) => Err(c.error(&self.doing(), e)),
        }
    }

    /// A multipart upload, hashed on the way; completed only if the content
    /// is right, aborted otherwise, so nothing wrong ever becomes visible.
    async fn put_parts(&self, file: &mut File, source: &Path) -> Result<(), ArchiveError> {
        let c = &self.client;
        let part_size = part_size(self.object.size);
        let upload = c
            .store
            .put_multipart(&self.key)
            .await
            .map_err(|e| c.error(&self.doing(), e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, part_size);
        let mut hasher = Sha256::new();
        let mut len = 0u64;
        let mut buf = vec![0u8; hashing::CHUNK];
        let sent = loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(self.io(source)(e)),
            };
            hasher.update(&buf[..n]);
            len += n as u64;
            if len > self.object.size {
                break Ok(()); // too long already: check() says so below
            }
            if let Err(e) = writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
                break Err(c.error(&self.doing(), e));
            }
            writer.write(&buf[..n]);
        };
        let checked = sent.and_then(|()| self.check(ObjectId::from_digest(hasher), len));
        if let Err(e) = checked {
            // Best effort: the parts are invisible anyway, and a lifecycle
            // rule removes what an abort could not.
            let _ = writer.abort().await;
            return Err(e);
        }
        // Someone else finished it meanwhile: keep theirs rather than
        // replace it (with the same bytes).
        if c.size_of(&self.key, &self.object.id).await? == Some(self.object.size) {
            let _ = writer.abort().await;
            return Ok(());
        }
        writer
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| c.error(&self.doing(), e))
    }
}

impl Upload for S3Upload {
    fn send(&self, source: &Path) -> Result<(), ArchiveError> {
        let mut file = File::open(source).map_err(self.io(source))?;
        let len = file.metadata().map_err(self.io(source))?.len();
        if len != self.object.size {
            return Err(ArchiveError::WrongSize {
                archive: self.client.location.clone(),
                id: self.object.id,
                expected: self.object.size,
                actual: len,
            });
        }
        self.client.runtime.block_on(async {
            if self.object.size <= PART_SIZE as u64 {
                self.put_whole(&mut file, source).await
            } else {
                self.put_parts(&mut file, source).await
            }
        })
    }
}

/// Parts of `PART_SIZE`, larger (in whole MiB) when an object would need more
/// than S3's 10,000.
fn part_size(size: u64) -> usize {
    let mib = 1u64 << 20;
    let needed = size.div_ceil(MAX_PARTS).div_ceil(mib) * mib;
    usize::try_from(needed.max(PART_SIZE as u64)).unwrap_or(usize::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The S3 engine `./test.sh` starts (scripts/s3-test-server.sh), as
    /// settings and a fresh location of its own for `test`; `None`, said
    /// on stderr, when there is none.
    pub(crate) fn engine(test: &str) -> Option<(String, S3Settings)> {
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
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let location = format!(
            "s3://{}/unit/{test}-{}-{unique}",
            var("BUCKET").unwrap(),
            std::process::id()
        );
        Some((
            location,
            S3Settings {
                endpoint: Some(endpoint),
                region: var("REGION"),
                aws_env: vec![
                    ("AWS_ACCESS_KEY_ID".into(), var("ACCESS_KEY_ID").unwrap()),
                    (
                        "AWS_SECRET_ACCESS_KEY".into(),
                        var("SECRET_ACCESS_KEY").unwrap(),
                    ),
                ],
            },
        ))
    }

    fn marker_of(bytes: &[u8]) -> Marker {
        Marker::new(ObjectId::of_bytes(bytes), bytes.len() as u64)
    }

    #[test]
    fn conformance() {
        let Some((location, settings)) = engine("conformance") else {
            return;
        };
        let archive = S3Archive::new(&location, &settings).unwrap();
        crate::archive::conformance::run(&archive, true);
    }

    #[test]
    fn concurrent_puts_of_one_object_all_succeed() {
        let Some((location, settings)) = engine("concurrent_puts") else {
            return;
        };
        let archive = S3Archive::new(&location, &settings).unwrap();
        let dir = tempfile::tempdir().unwrap();
        // One object sent in a single PUT, one in parts.
        for len in [1000, 2 * PART_SIZE + 5] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let m = marker_of(&bytes);
            let src = dir.path().join(format!("obj-{len}"));
            std::fs::write(&src, &bytes).unwrap();
            // Every thread holds an upload handle before any sends: each
            // found the object missing, as racing pushers do.
            let uploads: Vec<_> = (0..4)
                .map(|_| {
                    archive
                        .uploads(&[m])
                        .unwrap()
                        .pop()
                        .unwrap()
                        .unwrap()
                        .unwrap()
                })
                .collect();
            let start = std::sync::Barrier::new(uploads.len());
            std::thread::scope(|s| {
                for u in &uploads {
                    s.spawn(|| {
                        start.wait();
                        u.send(&src).unwrap();
                    });
                }
            });
            let mut out = Vec::new();
            let archive: &dyn Archive = &archive;
            assert_eq!(archive.get(&m, &mut out).unwrap(), len as u64);
            assert!(out == bytes, "{len} bytes round trip");
        }
    }

    #[test]
    fn a_multipart_upload_of_wrong_content_is_aborted_and_stores_nothing() {
        let Some((location, settings)) = engine("multipart_wrong_content") else {
            return;
        };
        let archive = S3Archive::new(&location, &settings).unwrap();
        let archive: &dyn Archive = &archive;
        let dir = tempfile::tempdir().unwrap();
        let len = PART_SIZE * 2 + 3;
        let claimed: Vec<u8> = (0..len).map(|i| (i % 249) as u8).collect();
        let mut actual = claimed.clone();
        actual[len - 1] ^= 1; // wrong in the very last part
        let src = dir.path().join("liar");
        std::fs::write(&src, &actual).unwrap();
        let m = marker_of(&claimed);
        let err = archive.put(&m, &src).unwrap_err();
        assert!(matches!(err, ArchiveError::WrongContent { .. }), "{err}");
        assert!(!archive.contains(&m).unwrap());
    }

    #[test]
    fn wrong_keys_and_missing_buckets_get_one_clear_line() {
        let Some((location, settings)) = engine("wrong_keys") else {
            return;
        };
        let endpoint = settings.endpoint.clone().unwrap();
        let m = marker_of(b"anything");
        let mut wrong = settings.clone();
        wrong.aws_env[1].1 = "not-the-secret".into();
        let archive = S3Archive::new(&location, &wrong).unwrap();
        let err = (&archive as &dyn Archive).contains(&m).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("fcache-test") && text.contains(&endpoint),
            "{text}"
        );
        assert!(text.contains("AWS_SECRET_ACCESS_KEY"), "{text}");
        assert!(std::error::Error::source(&err).is_none(), "{text}");

        let archive = S3Archive::new("s3://no-such-bucket-here/p", &settings).unwrap();
        for err in [
            (&archive as &dyn Archive).contains(&m).unwrap_err(),
            (&archive as &dyn Archive)
                .get(&m, &mut Vec::new())
                .unwrap_err(),
        ] {
            let text = err.to_string();
            assert!(
                text.contains("bucket no-such-bucket-here does not exist")
                    && text.contains(&endpoint),
                "{text}"
            );
            assert!(!text.contains('\n'), "{text}");
        }
    }

    /// A loopback HTTP server answering 404 to everything; counts connections.
    fn counting_server() -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                seen.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
        (url, count)
    }

    /// A loopback stand-in for S3 serving one object whose GET bodies break
    /// off after `cut` bytes for the first `breaks` GETs; each response has
    /// a new ETag so object_store cannot resume by itself. Counts GETs.
    fn flaky_server(data: Vec<u8>, cut: usize, breaks: usize) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let gets = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&gets);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut request = Vec::new();
                let mut byte = [0u8; 1];
                while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    request.push(byte[0]);
                }
                let request = String::from_utf8_lossy(&request).to_ascii_lowercase();
                let (from, to) = request
                    .lines()
                    .find_map(|l| l.strip_prefix("range: bytes="))
                    .and_then(|r| r.trim().split_once('-'))
                    .map(|(a, b)| (a.parse().unwrap(), b.parse::<usize>().unwrap() + 1))
                    .unwrap_or((0, data.len()));
                let n = if request.starts_with("get") {
                    seen.fetch_add(1, Ordering::SeqCst)
                } else {
                    0
                };
                let head = format!(
                    "HTTP/1.1 {}\r\ncontent-length: {}\r\ncontent-range: bytes {from}-{}/{}\r\netag: \"v{n}\"\r\nlast-modified: Mon, 02 Jan 2006 15:04:05 GMT\r\nconnection: close\r\n\r\n",
                    if request.starts_with("get") {
                        "206 Partial Content"
                    } else {
                        "200 OK"
                    },
                    to - from,
                    to - 1,
                    data.len()
                );
                let _ = stream.write_all(head.as_bytes());
                if request.starts_with("get") {
                    let end = if n < breaks { (from + cut).min(to) } else { to };
                    let _ = stream.write_all(&data[from..end]);
                }
            }
        });
        (url, gets)
    }

    #[test]
    fn a_download_that_breaks_off_resumes_where_it_stopped() {
        let data: Vec<u8> = (0..3_000_000).map(|i| (i % 251) as u8).collect();
        let (url, gets) = flaky_server(data.clone(), 1_000_000, 2);
        let keys = [("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")];
        let archive = S3Archive::new("s3://bucket", &settings(Some(&url), &keys)).unwrap();
        let mut out = Vec::new();
        let read = (&archive as &dyn Archive)
            .get(&marker_of(&data), &mut out)
            .unwrap();
        assert_eq!(read, data.len() as u64);
        assert!(out == data, "each byte once, in order");
        assert!(gets.load(Ordering::SeqCst) >= 3, "it broke off twice");
    }

    #[test]
    fn explicit_keys_never_ask_a_metadata_service() {
        // Stand-ins for the S3 endpoint and the instance metadata service
        // (169.254.169.254 unless AWS_METADATA_ENDPOINT says otherwise).
        let (s3, s3_hits) = counting_server();
        let (metadata, metadata_hits) = counting_server();
        let m = marker_of(b"x");
        let ask = |aws: &[(&str, &str)]| {
            let mut aws = aws.to_vec();
            aws.push(("AWS_METADATA_ENDPOINT", &metadata));
            let archive = S3Archive::new("s3://bucket", &settings(Some(&s3), &aws)).unwrap();
            (&archive as &dyn Archive).contains(&m).unwrap_err()
        };
        ask(&[("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")]);
        assert!(
            s3_hits.load(Ordering::SeqCst) > 0,
            "the S3 endpoint was asked"
        );
        assert_eq!(
            metadata_hits.load(Ordering::SeqCst),
            0,
            "metadata was asked"
        );
        // Without keys object_store does go there: the check above can fail.
        ask(&[]);
        assert!(metadata_hits.load(Ordering::SeqCst) > 0);
    }

    fn settings(endpoint: Option<&str>, aws: &[(&str, &str)]) -> S3Settings {
        S3Settings {
            endpoint: endpoint.map(str::to_owned),
            region: None,
            aws_env: aws
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn keys_follow_the_directory_layout() {
        let id = ObjectId::of_bytes(b"x");
        let hex = id.to_hex();
        let a = S3Archive::new("s3://bucket/team/data/", &settings(None, &[])).unwrap();
        assert_eq!(
            a.key(&id).as_ref(),
            format!("team/data/objects/{}/{}/{hex}", &hex[..2], &hex[2..4])
        );
        let b = S3Archive::new("s3://bucket", &settings(None, &[])).unwrap();
        assert_eq!(
            b.key(&id).as_ref(),
            format!("objects/{}/{}/{hex}", &hex[..2], &hex[2..4])
        );
    }

    #[test]
    fn endpoint_and_region_precedence() {
        let aws = [
            ("AWS_ENDPOINT_URL", "http://from-env:9000/"),
            ("AWS_DEFAULT_REGION", "eu-west-1"),
        ];
        let a = S3Archive::new("s3://b", &settings(None, &aws)).unwrap();
        assert_eq!(a.endpoint, "http://from-env:9000");
        assert_eq!(a.region, "eu-west-1");
        let mut s = settings(Some("https://mine.example"), &aws);
        s.region = Some("auto".into());
        let b = S3Archive::new("s3://b", &s).unwrap();
        assert_eq!(
            (b.endpoint.as_str(), b.region.as_str()),
            ("https://mine.example", "auto")
        );
        let c = S3Archive::new("s3://b", &settings(None, &[])).unwrap();
        assert_eq!(c.endpoint, "https://s3.us-east-1.amazonaws.com");
    }

    #[test]
    fn bad_locations_are_refused_with_the_location_named() {
        for bad in [
            "s3://",
            "s3:///prefix",
            "s3://Bucket",
            "s3://b/a//c",
            "s3://b/../x",
        ] {
            let err = S3Archive::new(bad, &settings(None, &[])).err().unwrap();
            assert!(err.to_string().contains(bad), "{bad}: {err}");
        }
        let err = S3Archive::new("s3://b", &settings(Some("localhost:9000"), &[]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("http://"), "{err}");
    }

    #[test]
    fn part_sizes_stay_within_s3_limits() {
        assert_eq!(part_size(100 << 20), PART_SIZE);
        let huge = 200u64 << 30;
        let p = part_size(huge) as u64;
        assert!(huge.div_ceil(p) <= MAX_PARTS && p.is_multiple_of(1 << 20));
    }

    #[test]
    fn error_codes_are_read_from_s3_error_bodies() {
        let body =
            "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>x</Message></Error>";
        assert_eq!(s3_error_code(body).as_deref(), Some("NoSuchBucket"));
        assert_eq!(s3_error_code(""), None);
    }
}
