//! An archive behind the Git LFS Batch API (`fcache serve` or any Git LFS
//! server), with the basic transfer adapter.
//!
//! The archive URL is the LFS endpoint (what git-lfs calls `lfs.url`): batch
//! requests go to `<url>/objects/batch`, transfers to the hrefs the server
//! hands back. Transient failures (dropped connections, 5xx, 429) are retried
//! with backoff; a download that breaks off resumes with `Range` from the
//! bytes already written, so the sink sees each byte once. Credentials come
//! from the URL (`https://user:secret@host/...`), a token
//! (`fcache.http.token` / `FCACHE_HTTP_TOKEN`, sent as a bearer token), or
//! git's credential helpers when the server answers 401.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use super::{Archive, ArchiveError, Batch, Download, Upload};
use crate::hashing;
use crate::marker::Marker;
use crate::oid::ObjectId;
use crate::transfer::{self, Progress};

/// The media type of Batch API requests and responses.
pub const LFS_MEDIA_TYPE: &str = "application/vnd.git-lfs+json";
/// Objects per batch request (git-lfs sends at most 100 too).
const BATCH_SIZE: usize = 100;
/// Transfers at once unless configured (git-lfs's default as well).
const PARALLELISM: usize = 8;
/// Retries of one request after a transient failure.
const RETRIES: u32 = 5;
/// Longest wait between retries, whatever the server's Retry-After says.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const READ_BUF: usize = 256 << 10;

/// The transfer adapter of `fcache serve` that carries many objects in one
/// request (see `serve::multi`); offered for uploads besides `basic`.
pub const MULTI_TRANSFER: &str = "fcache-multi";
const MULTI: &str = MULTI_TRANSFER;
/// Objects and bytes carried by one `fcache-multi` request at most. An
/// object larger than one `hashing::CHUNK` goes in a request of its own,
/// streamed.
const BUNDLE_OBJECTS: usize = 500;
const BUNDLE_BYTES: u64 = 4 << 20;

/// Settings of an HTTP archive beyond its URL.
#[derive(Clone, Debug, Default)]
pub struct HttpOptions {
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Ask git's credential helpers for a user name and password on 401.
    /// On by default; tests and servers without a terminal turn it off.
    pub no_credential_helper: bool,
}

pub struct HttpArchive {
    inner: Arc<Inner>,
}

struct Inner {
    /// The URL without credentials: what messages show.
    location: String,
    /// The URL without credentials and without a trailing slash.
    base: String,
    /// Made on first use: setting up TLS costs time that a smudge served
    /// from the cache should not pay.
    client: OnceLock<Result<Client, String>>,
    /// For uploads: a runtime of our own and an async client on it.
    async_client: OnceLock<Result<(tokio::runtime::Runtime, reqwest::Client), String>>,
    auth: Mutex<AuthState>,
    use_helper: bool,
}

#[derive(Clone, Debug)]
enum Credentials {
    None,
    Basic { user: String, password: String },
    Bearer(String),
}

struct AuthState {
    credentials: Credentials,
    /// The credentials came from git's credential helper: approve them once
    /// they work, reject them when refused.
    from_helper: bool,
    approved: bool,
    helper_tried: bool,
}

/// Why a transfer failed, and whether trying again may help.
enum Failure {
    Transient(String),
    Fatal(ArchiveError),
}

impl HttpArchive {
    pub fn new(location: &str, options: &HttpOptions) -> Result<Self, ArchiveError> {
        let unsupported = |why: &str| ArchiveError::Remote {
            archive: redact(location),
            message: format!("not a usable http(s) URL: {why}"),
            source: None,
        };
        let mut url = reqwest::Url::parse(location).map_err(|e| unsupported(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(unsupported("expected http://HOST[:PORT][/PATH]"));
        }
        let mut credentials = match &options.token {
            Some(token) => Credentials::Bearer(token.clone()),
            None => Credentials::None,
        };
        if !url.username().is_empty() {
            credentials = Credentials::Basic {
                user: percent_decode(url.username()),
                password: percent_decode(url.password().unwrap_or("")),
            };
        }
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let base = url.as_str().trim_end_matches('/').to_owned();

        Ok(Self {
            inner: Arc::new(Inner {
                location: base.clone(),
                base,
                client: OnceLock::new(),
                async_client: OnceLock::new(),
                auth: Mutex::new(AuthState {
                    credentials,
                    from_helper: false,
                    approved: false,
                    helper_tried: false,
                }),
                use_helper: !options.no_credential_helper,
            }),
        })
    }
}

/// The URL with any user name and password taken out, for messages.
fn redact(location: &str) -> String {
    match reqwest::Url::parse(location) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.as_str().trim_end_matches('/').to_owned()
        }
        Err(_) => location.to_owned(),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// The Batch API's JSON, as in git-lfs's docs/api/batch.md.

#[derive(Serialize)]
struct BatchRequest<'a> {
    operation: &'a str,
    transfers: &'a [&'a str],
    objects: Vec<ObjectSpec>,
    hash_algo: &'a str,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
pub(crate) struct ObjectSpec {
    pub oid: ObjectId,
    pub size: u64,
}

#[derive(Deserialize)]
struct BatchResponse {
    #[serde(default)]
    transfer: Option<String>,
    #[serde(default)]
    objects: Vec<ObjectResponse>,
}

#[derive(Deserialize)]
struct ObjectResponse {
    oid: String,
    #[serde(default)]
    actions: Option<HashMap<String, Action>>,
    #[serde(default)]
    error: Option<ObjectError>,
}

#[derive(Deserialize, Clone, PartialEq)]
struct Action {
    href: String,
    #[serde(default)]
    header: HashMap<String, String>,
}

#[derive(Deserialize)]
struct ObjectError {
    code: u16,
    #[serde(default)]
    message: String,
}

/// The answer to an `fcache-multi` request: every object carried, with an
/// error where it was refused.
#[derive(Deserialize)]
struct MultiResponse {
    objects: Vec<MultiObject>,
}

#[derive(Deserialize)]
struct MultiObject {
    oid: String,
    #[serde(default)]
    error: Option<ObjectError>,
}

/// One object of an `fcache-multi` request: its index among the objects
/// being put, and where to send it.
struct Member {
    index: usize,
    action: Action,
}

/// Group the objects sent with `fcache-multi` into requests: small objects
/// many to a request (but spread over at least `workers` requests, so that
/// they still go in parallel), each large one alone.
fn bundles(
    objects: &[(Marker, PathBuf)],
    members: Vec<Member>,
    workers: usize,
) -> Vec<Vec<Member>> {
    let size = |member: &Member| objects[member.index].0.size;
    let small = members
        .iter()
        .filter(|member| size(member) <= hashing::CHUNK as u64)
        .count();
    let per_bundle = small.div_ceil(workers.max(1)).clamp(1, BUNDLE_OBJECTS);
    let mut bundles: Vec<Vec<Member>> = Vec::new();
    let mut open: Vec<Member> = Vec::new();
    let mut open_bytes = 0u64;
    for member in members {
        if size(&member) > hashing::CHUNK as u64 {
            bundles.push(vec![member]);
            continue;
        }
        let fits = open.len() < per_bundle
            && open_bytes + size(&member) <= BUNDLE_BYTES
            && open
                .first()
                .is_none_or(|first| first.action == member.action);
        if !fits {
            bundles.push(std::mem::take(&mut open));
            open_bytes = 0;
        }
        open_bytes += size(&member);
        open.push(member);
    }
    if !open.is_empty() {
        bundles.push(open);
    }
    bundles
}

/// The line that introduces an object in an `fcache-multi` request body.
fn frame_header(m: &Marker) -> String {
    format!("{} {}\n", m.id, m.size)
}

#[derive(Deserialize)]
struct ErrorBody {
    message: String,
}

/// What the server said about one object of a batch.
enum Answer {
    /// `multi`: under the `fcache-multi` adapter (`upload_many`).
    Actions {
        actions: HashMap<String, Action>,
        multi: bool,
    },
    Error {
        code: u16,
        message: String,
    },
}

impl Inner {
    fn client(&self) -> Result<&Client, ArchiveError> {
        self.client
            .get_or_init(|| {
                // rustls needs one crypto provider for the process; ring
                // builds everywhere without cmake. Someone may have installed
                // one already.
                let _ = rustls::crypto::ring::default_provider().install_default();
                Client::builder()
                    // Transfers of large objects take as long as they take;
                    // dead connections are found by TCP keepalive and the
                    // user timeout.
                    .timeout(None::<Duration>)
                    .connect_timeout(Duration::from_secs(30))
                    .tcp_keepalive(Duration::from_secs(30))
                    .tcp_user_timeout(Duration::from_secs(120))
                    .pool_max_idle_per_host(64)
                    .user_agent(concat!("fcache/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| error_chain(&e))
            })
            .as_ref()
            .map_err(|e| self.remote(format!("cannot set up an HTTP client: {e}")))
    }

    fn async_client(&self) -> Result<(&tokio::runtime::Runtime, &reqwest::Client), ArchiveError> {
        self.async_client
            .get_or_init(|| {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("fcache-http")
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let client = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(30))
                    // A server that stays connected but stops answering.
                    .read_timeout(Duration::from_secs(120))
                    .tcp_keepalive(Duration::from_secs(30))
                    .tcp_user_timeout(Duration::from_secs(120))
                    .pool_max_idle_per_host(64)
                    .user_agent(concat!("fcache/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| error_chain(&e))?;
                Ok((runtime, client))
            })
            .as_ref()
            .map(|(r, c)| (r, c))
            .map_err(|e| self.remote(format!("cannot set up an HTTP client: {e}")))
    }

    /// The `Authorization` header our credentials make, if any.
    fn authorization(&self) -> Option<HeaderValue> {
        use base64::Engine as _;
        let auth = self
            .auth
            .lock()
            .expect("no thread panics holding the auth state");
        let value = match &auth.credentials {
            Credentials::None => return None,
            Credentials::Basic { user, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            ),
            Credentials::Bearer(token) => format!("Bearer {token}"),
        };
        let mut value = HeaderValue::from_str(&value).ok()?;
        value.set_sensitive(true);
        Some(value)
    }

    fn remote(&self, message: String) -> ArchiveError {
        ArchiveError::Remote {
            archive: self.location.clone(),
            message,
            source: None,
        }
    }

    fn authorize(&self, request: RequestBuilder) -> RequestBuilder {
        let auth = self
            .auth
            .lock()
            .expect("no thread panics holding the auth state");
        match &auth.credentials {
            Credentials::None => request,
            Credentials::Basic { user, password } => request.basic_auth(user, Some(password)),
            Credentials::Bearer(token) => request.bearer_auth(token),
        }
    }

    /// Send a request built by `build` (again for each try), retrying
    /// transient failures with backoff and asking for credentials on 401.
    /// `what` names the request in messages. Returns the first response
    /// that is neither transient nor an authentication challenge we can meet.
    fn send(
        &self,
        what: &str,
        authorize: bool,
        build: &dyn Fn() -> Result<RequestBuilder, ArchiveError>,
    ) -> Result<Response, ArchiveError> {
        let mut attempt = 0u32;
        loop {
            let mut request = build()?;
            if authorize {
                request = self.authorize(request);
            }
            let message = match request.send() {
                Ok(response) => {
                    let status = response.status();
                    if status == StatusCode::UNAUTHORIZED && authorize && self.challenge()? {
                        continue;
                    }
                    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                        let wait = retry_after(&response);
                        let message = format!("{what}: HTTP {status}{}", server_message(response));
                        if attempt >= RETRIES {
                            return Err(
                                self.remote(format!("{message} (gave up after {attempt} retries)"))
                            );
                        }
                        attempt += 1;
                        std::thread::sleep(
                            wait.unwrap_or_else(|| backoff(attempt)).min(MAX_BACKOFF),
                        );
                        continue;
                    }
                    if authorize && status.is_success() {
                        self.approve();
                    }
                    return Ok(response);
                }
                // Nothing came back: the connection failed or dropped.
                Err(e) => format!("{what}: {}", error_chain(&e)),
            };
            if attempt >= RETRIES {
                return Err(self.remote(format!("{message} (gave up after {attempt} retries)")));
            }
            attempt += 1;
            std::thread::sleep(backoff(attempt));
        }
    }

    /// The server refused our credentials (or their absence): find others.
    /// Returns whether there is something new to try.
    fn challenge(&self) -> Result<bool, ArchiveError> {
        let mut auth = self
            .auth
            .lock()
            .expect("no thread panics holding the auth state");
        if auth.from_helper {
            let refused = auth.credentials.clone();
            auth.credentials = Credentials::None;
            auth.from_helper = false;
            drop(auth);
            self.helper("reject", &refused);
            return Err(self.remote(
                "the server refused the credentials git's credential helper gave (HTTP 401); they were rejected, try again to enter new ones".to_owned(),
            ));
        }
        if auth.helper_tried || !self.use_helper {
            return Err(self.remote(no_credentials_hint(&auth.credentials)));
        }
        auth.helper_tried = true;
        match self.helper_fill() {
            Some((user, password)) => {
                auth.credentials = Credentials::Basic { user, password };
                auth.from_helper = true;
                Ok(true)
            }
            None => Err(self.remote(no_credentials_hint(&auth.credentials))),
        }
    }

    fn approve(&self) {
        let mut auth = self
            .auth
            .lock()
            .expect("no thread panics holding the auth state");
        if auth.from_helper && !auth.approved {
            auth.approved = true;
            let credentials = auth.credentials.clone();
            drop(auth);
            self.helper("approve", &credentials);
        }
    }

    /// `git credential fill` for the archive URL.
    fn helper_fill(&self) -> Option<(String, String)> {
        let out = self.run_helper("fill", &format!("url={}\n\n", self.base))?;
        let mut user = None;
        let mut password = None;
        for line in out.lines() {
            if let Some(v) = line.strip_prefix("username=") {
                user = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("password=") {
                password = Some(v.to_owned());
            }
        }
        Some((user?, password?))
    }

    fn helper(&self, action: &str, credentials: &Credentials) {
        if let Credentials::Basic { user, password } = credentials {
            let input = format!(
                "url={}\nusername={user}\npassword={password}\n\n",
                self.base
            );
            let _ = self.run_helper(action, &input);
        }
    }

    fn run_helper(&self, action: &str, input: &str) -> Option<String> {
        let mut child = Command::new("git")
            .args(["credential", action])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .ok()?;
        child.stdin.take()?.write_all(input.as_bytes()).ok()?;
        let out = child.wait_with_output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// One Batch API request per `BATCH_SIZE` objects, offering `transfers`;
    /// answers per object, keyed by identifier.
    fn batch(
        &self,
        operation: &str,
        objects: &[Marker],
        transfers: &[&str],
    ) -> Result<HashMap<ObjectId, Answer>, ArchiveError> {
        let url = format!("{}/objects/batch", self.base);
        let mut answers = HashMap::new();
        for chunk in objects.chunks(BATCH_SIZE) {
            let body = serde_json::to_vec(&BatchRequest {
                operation,
                transfers,
                objects: chunk
                    .iter()
                    .map(|m| ObjectSpec {
                        oid: m.id,
                        size: m.size,
                    })
                    .collect(),
                hash_algo: "sha256",
            })
            .expect("a batch request serializes");
            let what = format!("{operation} batch request for {} object(s)", chunk.len());
            let response = self.send(&what, true, &|| {
                Ok(self
                    .client()?
                    .post(&url)
                    .header(header::ACCEPT, LFS_MEDIA_TYPE)
                    .header(header::CONTENT_TYPE, LFS_MEDIA_TYPE)
                    .timeout(Duration::from_secs(120))
                    .body(body.clone()))
            })?;
            let status = response.status();
            let json = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("json"));
            // Some servers (giftless) answer a download batch none of whose
            // objects they hold with a 404 for the whole request.
            if status == StatusCode::NOT_FOUND && operation == "download" && json {
                for m in chunk {
                    answers.insert(
                        m.id,
                        Answer::Error {
                            code: 404,
                            message: "not found".to_owned(),
                        },
                    );
                }
                continue;
            }
            if !status.is_success() {
                let hint = match status {
                    StatusCode::FORBIDDEN => "; the credentials may allow reading only".to_owned(),
                    StatusCode::NOT_FOUND => format!(
                        "; is {} a Git LFS endpoint (its Batch API is expected at {url})?",
                        self.location
                    ),
                    _ => String::new(),
                };
                return Err(self.remote(format!(
                    "{what}: HTTP {status}{}{hint}",
                    server_message(response)
                )));
            }
            let parsed: BatchResponse =
                serde_json::from_reader(response).map_err(|e| ArchiveError::Remote {
                    archive: self.location.clone(),
                    message: format!("{what}: the server's answer is not a Batch API response"),
                    source: Some(Box::new(e)),
                })?;
            let multi = match parsed.transfer.as_deref() {
                None | Some("basic") => false,
                Some(t) if t == MULTI && transfers.contains(&MULTI) => true,
                Some(t) => {
                    return Err(self.remote(format!(
                        "{what}: the server chose transfer adapter {t:?}, which was not offered"
                    )));
                }
            };
            for object in parsed.objects {
                let Ok(id) = object.oid.parse::<ObjectId>() else {
                    continue;
                };
                let answer = match (object.error, object.actions) {
                    (Some(e), _) => Answer::Error {
                        code: e.code,
                        message: e.message,
                    },
                    (None, actions) => Answer::Actions {
                        actions: actions.unwrap_or_default(),
                        multi,
                    },
                };
                answers.insert(id, answer);
            }
        }
        Ok(answers)
    }

    fn missing_answer(&self, id: &ObjectId) -> ArchiveError {
        self.remote(format!(
            "object {id}: the server's batch response left it out"
        ))
    }

    fn object_error(&self, id: &ObjectId, code: u16, message: &str) -> ArchiveError {
        if code == 404 || code == 410 {
            return ArchiveError::NotFound {
                archive: self.location.clone(),
                id: *id,
            };
        }
        self.remote(format!("object {id}: the server says {code} {message}"))
    }

    /// A request for an action's href with the action's headers, and our
    /// credentials when the action brings none and goes to our own server.
    fn action_request(
        &self,
        method: reqwest::Method,
        action: &Action,
    ) -> Result<(RequestBuilder, bool), ArchiveError> {
        let mut headers = HeaderMap::new();
        for (k, v) in &action.header {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| self.remote(format!("the server sent a bad header name {k:?}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| self.remote(format!("the server sent a bad value for header {k}")))?;
            headers.insert(name, value);
        }
        let own = same_origin(&action.href, &self.base);
        let authorize = own && !headers.contains_key(header::AUTHORIZATION);
        Ok((
            self.client()?
                .request(method, &action.href)
                .headers(headers),
            authorize,
        ))
    }
}

fn same_origin(a: &str, b: &str) -> bool {
    match (reqwest::Url::parse(a), reqwest::Url::parse(b)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

fn no_credentials_hint(credentials: &Credentials) -> String {
    match credentials {
        Credentials::None => "the server wants credentials (HTTP 401): set fcache.http.token or FCACHE_HTTP_TOKEN, put user:password in the archive URL, or configure a git credential helper".to_owned(),
        _ => "the server refused the credentials (HTTP 401): check fcache.http.token / FCACHE_HTTP_TOKEN or the user:password in the archive URL".to_owned(),
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64 << attempt.min(8))
}

fn retry_after(response: &Response) -> Option<Duration> {
    let value = response.headers().get(header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The server's own explanation, when its body has one.
fn server_message(response: Response) -> String {
    let mut body = Vec::new();
    let _ = response.take(64 << 10).read_to_end(&mut body);
    message_in(&body)
}

fn message_in(body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) if !e.message.is_empty() => format!(": {}", e.message.trim()),
        _ => {
            let text = String::from_utf8_lossy(body);
            let line = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("");
            if line.is_empty() || line.len() > 200 {
                String::new()
            } else {
                format!(": {line}")
            }
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    // reqwest names the URL in its errors; transfer URLs can carry secrets
    // (presigned S3 links from a Git LFS server), so they are left out.
    let mut s = match e.downcast_ref::<reqwest::Error>() {
        Some(e) => redact_url_of(e),
        None => e.to_string(),
    };
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

/// A reqwest error's text without the URL it names.
fn redact_url_of(e: &reqwest::Error) -> String {
    let text = e.to_string();
    match e.url() {
        Some(url) => text.replace(&format!(" for url ({url})"), ""),
        None => text,
    }
}

impl HttpArchive {
    /// The basic adapter's handle for uploading `m` with these actions.
    fn handle(&self, m: &Marker, upload: Action, verify: Option<Action>) -> Box<dyn Upload> {
        Box::new(HttpUpload {
            inner: self.inner.clone(),
            object: *m,
            upload,
            verify,
        })
    }
}

impl Archive for HttpArchive {
    fn location(&self) -> &str {
        &self.inner.location
    }

    fn contains_many(&self, objects: &[Marker]) -> Result<Vec<bool>, ArchiveError> {
        let answers = self.inner.batch("download", objects, &["basic"])?;
        objects
            .iter()
            .map(|m| match answers.get(&m.id) {
                Some(Answer::Actions { actions, .. }) => Ok(actions.contains_key("download")),
                Some(Answer::Error {
                    code: 404 | 410, ..
                }) => Ok(false),
                Some(Answer::Error { code, message }) => {
                    Err(self.inner.object_error(&m.id, *code, message))
                }
                None => Err(self.inner.missing_answer(&m.id)),
            })
            .collect()
    }

    fn downloads(&self, objects: &[Marker]) -> Result<Batch<Box<dyn Download>>, ArchiveError> {
        let answers = self.inner.batch("download", objects, &["basic"])?;
        Ok(objects
            .iter()
            .map(|m| match answers.get(&m.id) {
                Some(Answer::Actions { actions, .. }) => match actions.get("download") {
                    Some(action) => Ok(Box::new(HttpDownload {
                        inner: self.inner.clone(),
                        object: *m,
                        action: action.clone(),
                    }) as Box<dyn Download>),
                    None => Err(self.inner.remote(format!(
                        "object {}: the server gave no download action",
                        m.id
                    ))),
                },
                Some(Answer::Error { code, message }) => {
                    Err(self.inner.object_error(&m.id, *code, message))
                }
                None => Err(self.inner.missing_answer(&m.id)),
            })
            .collect())
    }

    fn uploads(&self, objects: &[Marker]) -> Result<Batch<Option<Box<dyn Upload>>>, ArchiveError> {
        let answers = self.inner.batch("upload", objects, &["basic"])?;
        Ok(objects
            .iter()
            .map(|m| {
                Ok(self
                    .inner
                    .upload_answer(m, answers.get(&m.id))?
                    .map(|(upload, verify)| self.handle(m, upload, verify)))
            })
            .collect())
    }

    /// Offers the server `fcache-multi` as well as `basic`: a server that
    /// takes it (`fcache serve`) gets the small objects many to a request,
    /// and makes each request's objects durable together rather than one
    /// request per object.
    fn put_many(
        &self,
        objects: &[(Marker, PathBuf)],
        workers: usize,
        progress: &dyn Progress,
    ) -> Result<Batch<bool>, ArchiveError> {
        let markers: Vec<Marker> = objects.iter().map(|(m, _)| *m).collect();
        let answers = self.inner.batch("upload", &markers, &[MULTI, "basic"])?;
        let mut results: Vec<Option<Result<bool, ArchiveError>>> =
            objects.iter().map(|_| None).collect();
        let mut basic: Vec<(usize, Box<dyn Upload>)> = Vec::new();
        let mut multi: Vec<Member> = Vec::new();
        for (i, (m, _)) in objects.iter().enumerate() {
            let answer = answers.get(&m.id);
            match self.inner.upload_answer(m, answer) {
                Ok(None) => results[i] = Some(Ok(false)),
                Ok(Some((upload, _)))
                    if matches!(answer, Some(Answer::Actions { multi: true, .. })) =>
                {
                    multi.push(Member {
                        index: i,
                        action: upload,
                    });
                }
                Ok(Some((upload, verify))) => basic.push((i, self.handle(m, upload, verify))),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let mut jobs = bundles(objects, multi, workers);
        // Largest first, so that a large object is not left to run alone at
        // the end while the other workers idle.
        jobs.sort_by_key(|bundle| {
            std::cmp::Reverse(
                bundle
                    .iter()
                    .map(|member| objects[member.index].0.size)
                    .sum::<u64>(),
            )
        });
        progress.start(
            (basic.len() + jobs.iter().map(Vec::len).sum::<usize>()) as u64,
            basic
                .iter()
                .map(|(i, _)| *i)
                .chain(jobs.iter().flatten().map(|member| member.index))
                .map(|i| objects[i].0.size)
                .sum(),
        );
        let mut done = super::send_each(objects, basic, workers, progress);
        for sent in transfer::parallel_map(jobs, workers, |bundle| {
            let sent = self.inner.send_bundle(objects, &bundle);
            for member in &bundle {
                progress.bytes(objects[member.index].0.size);
                progress.object_done();
            }
            sent
        }) {
            done.extend(sent);
        }
        for (i, r) in done {
            results[i] = Some(r);
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every object has a result"))
            .collect())
    }

    fn batch_size(&self) -> usize {
        BATCH_SIZE
    }

    fn parallelism(&self) -> usize {
        PARALLELISM
    }
}

struct HttpDownload {
    inner: Arc<Inner>,
    object: Marker,
    action: Action,
}

impl HttpDownload {
    /// Stream bytes `pos..end` of the object into `sink` from one response,
    /// advancing `pos` past everything written. Transient failures come back
    /// as `Failure::Transient` with `pos` where the bytes stopped.
    fn read_once(&self, pos: &mut u64, end: u64, sink: &mut dyn Write) -> Result<(), Failure> {
        let inner = &self.inner;
        let id = self.object.id;
        let ranged = *pos > 0 || end < self.object.size;
        let what = format!("download of object {id}");
        let response = inner
            .send(&what, false, &|| {
                let (mut request, authorize) =
                    inner.action_request(reqwest::Method::GET, &self.action)?;
                if authorize {
                    request = inner.authorize(request);
                }
                if ranged {
                    request = request.header(header::RANGE, format!("bytes={}-{}", *pos, end - 1));
                }
                Ok(request)
            })
            .map_err(Failure::Fatal)?;
        let status = response.status();
        // A server that ignores Range sends the whole object: skip what we have.
        let mut skip = match status {
            StatusCode::PARTIAL_CONTENT => {
                let start = content_range_start(&response);
                if start != Some(*pos) {
                    return Err(Failure::Fatal(inner.remote(format!(
                        "{what}: asked for bytes from {} and got a response starting elsewhere",
                        *pos
                    ))));
                }
                0
            }
            StatusCode::OK => *pos,
            StatusCode::NOT_FOUND | StatusCode::GONE => {
                return Err(Failure::Fatal(ArchiveError::NotFound {
                    archive: inner.location.clone(),
                    id,
                }));
            }
            _ => {
                return Err(Failure::Fatal(inner.remote(format!(
                    "{what}: HTTP {status}{}",
                    server_message(response)
                ))));
            }
        };
        let mut response = response;
        let mut buf = vec![0u8; READ_BUF];
        while *pos < end {
            let n = match response.read(&mut buf) {
                Ok(0) => {
                    return Err(Failure::Transient(format!(
                        "{what}: the connection closed after {} of {} bytes",
                        *pos, end
                    )));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::Transient(format!("{what}: {}", error_chain(&e)))),
            };
            let mut chunk = &buf[..n];
            let skipped = usize::try_from(skip).unwrap_or(usize::MAX).min(chunk.len());
            skip -= skipped as u64;
            chunk = &chunk[skipped..];
            let take = usize::try_from(end - *pos)
                .unwrap_or(usize::MAX)
                .min(chunk.len());
            sink.write_all(&chunk[..take]).map_err(|source| {
                Failure::Fatal(ArchiveError::Sink {
                    archive: inner.location.clone(),
                    id,
                    source,
                })
            })?;
            *pos += take as u64;
        }
        Ok(())
    }
}

fn content_range_start(response: &Response) -> Option<u64> {
    let value = response
        .headers()
        .get(header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let rest = value.trim().strip_prefix("bytes ")?;
    rest.split('-').next()?.trim().parse().ok()
}

impl Download for HttpDownload {
    fn read(&self, range: Range<u64>, sink: &mut dyn Write) -> Result<u64, ArchiveError> {
        let end = range.end.min(self.object.size);
        let mut pos = range.start.min(end);
        let start = pos;
        if pos == end {
            return Ok(0);
        }
        // The retry budget is per stall: a download that keeps making
        // progress keeps going.
        let mut attempt = 0u32;
        loop {
            let before = pos;
            match self.read_once(&mut pos, end, sink) {
                Ok(()) => return Ok(pos - start),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(message)) => {
                    if pos > before {
                        attempt = 0;
                    }
                    if attempt >= RETRIES {
                        return Err(self
                            .inner
                            .remote(format!("{message} (gave up after {attempt} retries)")));
                    }
                    attempt += 1;
                    std::thread::sleep(backoff(attempt));
                }
            }
        }
    }
}

struct HttpUpload {
    inner: Arc<Inner>,
    object: Marker,
    upload: Action,
    verify: Option<Action>,
}

/// Checks an upload's bytes against its identifier and size as they go, so
/// that content which is not what it claims (a cached copy that rotted)
/// never reaches a server whole: the body ends in an error instead.
struct UploadCheck {
    expected: Marker,
    seen: Mutex<(sha2::Sha256, u64)>,
    wrong: Mutex<Option<(ObjectId, u64)>>,
}

impl UploadCheck {
    fn new(expected: Marker) -> Self {
        Self {
            expected,
            seen: Mutex::new((sha2::Digest::new(), 0)),
            wrong: Mutex::new(None),
        }
    }

    fn update(&self, bytes: &[u8]) {
        let mut seen = self.seen.lock().expect("no panic while hashing");
        sha2::Digest::update(&mut seen.0, bytes);
        seen.1 += bytes.len() as u64;
    }

    /// At the end of the content: an error if it was not the object.
    fn finish(&self) -> io::Result<()> {
        let (hasher, len) = std::mem::replace(
            &mut *self.seen.lock().expect("no panic while hashing"),
            (sha2::Digest::new(), 0),
        );
        let actual = ObjectId::from_digest(hasher);
        if actual == self.expected.id && len == self.expected.size {
            return Ok(());
        }
        *self.wrong.lock().expect("no panic while checking") = Some((actual, len));
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "content of object {} is not what it claims",
                self.expected.id
            ),
        ))
    }

    /// The check's verdict, once the body ended in its error.
    fn failure(&self, archive: &str) -> Option<ArchiveError> {
        let (actual, len) = (*self.wrong.lock().expect("no panic while checking"))?;
        Some(if len != self.expected.size {
            ArchiveError::WrongSize {
                archive: archive.to_owned(),
                id: self.expected.id,
                expected: self.expected.size,
                actual: len,
            }
        } else {
            ArchiveError::WrongContent {
                archive: archive.to_owned(),
                expected: self.expected.id,
                actual,
            }
        })
    }

    /// The body stream, checked: each chunk is hashed on its way and held
    /// back until the next one comes, and the last one goes out only once
    /// the whole content checked out. Otherwise the stream ends in an error
    /// with the body short of its length, so no server can take it as whole.
    fn wrap<S>(
        self: Arc<Self>,
        stream: S,
    ) -> impl futures_util::Stream<Item = io::Result<bytes::Bytes>> + Send + 'static
    where
        S: futures_util::Stream<Item = io::Result<bytes::Bytes>> + Send + Unpin + 'static,
    {
        use futures_util::StreamExt;
        let held: Option<bytes::Bytes> = None;
        futures_util::stream::unfold(
            (self, stream, held, false),
            |(check, mut stream, mut held, done)| async move {
                if done {
                    return None;
                }
                loop {
                    match stream.next().await {
                        Some(Ok(chunk)) => {
                            check.update(&chunk);
                            if let Some(previous) = held.replace(chunk) {
                                return Some((Ok(previous), (check, stream, held, false)));
                            }
                        }
                        Some(Err(e)) => return Some((Err(e), (check, stream, None, true))),
                        None => {
                            let last = check.finish().map(|()| held.take().unwrap_or_default());
                            return Some((last, (check, stream, None, true)));
                        }
                    }
                }
            },
        )
    }
}

impl Inner {
    /// The server refused the bytes of `object` sent from `source`: if they
    /// are not what the identifier says, say so, so the caller can tell a
    /// corrupt source from a server problem.
    fn classify_refusal(&self, object: &Marker, source: &Path, message: String) -> ArchiveError {
        let archive = self.location.clone();
        if let Ok(mut file) = File::open(source)
            && let Ok((actual, len)) = hashing::hash_reader(&mut file)
        {
            if len != object.size {
                return ArchiveError::WrongSize {
                    archive,
                    id: object.id,
                    expected: object.size,
                    actual: len,
                };
            }
            if actual != object.id {
                return ArchiveError::WrongContent {
                    archive,
                    expected: object.id,
                    actual,
                };
            }
        }
        self.remote(message)
    }
}

impl Inner {
    /// Send a large file to `action` with `method`, after `prefix`, streamed
    /// in 1 MiB chunks on the async client (the blocking client's request
    /// bodies move 8 KiB at a time, which halves upload speed), retrying
    /// transient failures. With `check`, the bytes are checked against
    /// `object` as they go, for servers that may store what they are sent
    /// unchecked. Returns the final status and the start of its body.
    #[allow(clippy::too_many_arguments)]
    fn stream_file(
        &self,
        method: reqwest::Method,
        action: &Action,
        object: Marker,
        prefix: &str,
        source: &Path,
        len: u64,
        what: &str,
        check: bool,
    ) -> Result<(StatusCode, Vec<u8>), ArchiveError> {
        let inner = self;
        let (runtime, client) = inner.async_client()?;
        let mut headers = HeaderMap::new();
        for (k, v) in &action.header {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| inner.remote(format!("the server sent a bad header name {k:?}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|_| inner.remote(format!("the server sent a bad value for header {k}")))?;
            headers.insert(name, value);
        }
        if !headers.contains_key(header::CONTENT_TYPE) {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
        }
        headers.insert(
            header::CONTENT_LENGTH,
            HeaderValue::from(prefix.len() as u64 + len),
        );
        let prefix = bytes::Bytes::copy_from_slice(prefix.as_bytes());
        if same_origin(&action.href, &inner.base)
            && !headers.contains_key(header::AUTHORIZATION)
            && let Some(value) = inner.authorization()
        {
            headers.insert(header::AUTHORIZATION, value);
        }
        let mut attempt = 0u32;
        loop {
            let check = check.then(|| Arc::new(UploadCheck::new(object)));
            let result: Result<(StatusCode, Option<Duration>, Vec<u8>), String> =
                runtime.block_on(async {
                    let file = tokio::fs::File::open(source)
                        .await
                        .map_err(|e| format!("cannot read {}: {e}", source.display()))?;
                    use futures_util::StreamExt as _;
                    let head = (!prefix.is_empty()).then(|| Ok(prefix.clone()));
                    let file = tokio_util::io::ReaderStream::with_capacity(file, hashing::CHUNK);
                    let content: futures_util::stream::BoxStream<
                        'static,
                        io::Result<bytes::Bytes>,
                    > = match &check {
                        Some(check) => Box::pin(check.clone().wrap(file)),
                        None => Box::pin(file),
                    };
                    let stream = futures_util::stream::iter(head).chain(content);
                    let response = client
                        .request(method.clone(), &action.href)
                        .headers(headers.clone())
                        .body(reqwest::Body::wrap_stream(stream))
                        .send()
                        .await
                        .map_err(|e| error_chain(&e))?;
                    let status = response.status();
                    let wait = response
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let body = response
                        .bytes()
                        .await
                        .map(|b| b.to_vec())
                        .unwrap_or_default();
                    Ok((status, wait, body))
                });
            // The content was not what its identifier says: the body was
            // cut short, so the server stored nothing; sending it again
            // would not help.
            if let Some(wrong) = check.as_ref().and_then(|c| c.failure(&inner.location)) {
                return Err(wrong);
            }
            let (message, wait) = match result {
                Ok((status, wait, body))
                    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS =>
                {
                    (format!("{what}: HTTP {status}{}", message_in(&body)), wait)
                }
                Ok((status, _, body)) => return Ok((status, body)),
                Err(message) => (format!("{what}: {message}"), None),
            };
            if attempt >= RETRIES {
                return Err(inner.remote(format!("{message} (gave up after {attempt} retries)")));
            }
            attempt += 1;
            std::thread::sleep(wait.unwrap_or_else(|| backoff(attempt)).min(MAX_BACKOFF));
        }
    }
}

impl Inner {
    /// The upload and verify actions the server gave for `m`; `None` where
    /// it holds the object already.
    fn upload_answer(
        &self,
        m: &Marker,
        answer: Option<&Answer>,
    ) -> Result<Option<(Action, Option<Action>)>, ArchiveError> {
        match answer {
            Some(Answer::Actions { actions, .. }) => Ok(actions
                .get("upload")
                .map(|upload| (upload.clone(), actions.get("verify").cloned()))),
            Some(Answer::Error { code, message }) => Err(self.remote(format!(
                "object {}: the server refuses the upload: {code} {message}",
                m.id
            ))),
            None => Err(self.missing_answer(&m.id)),
        }
    }

    /// A small object's content, read whole and checked against `m`: content
    /// that is not what it claims is never sent.
    fn read_checked(&self, m: &Marker, source: &Path) -> Result<Vec<u8>, ArchiveError> {
        let mut bytes = Vec::with_capacity(usize::try_from(m.size).unwrap_or(0));
        File::open(source)
            .and_then(|f| f.take(m.size + 1).read_to_end(&mut bytes))
            .map_err(|e| ArchiveError::Io {
                archive: self.location.clone(),
                path: source.to_owned(),
                source: e,
            })?;
        let check = UploadCheck::new(*m);
        check.update(&bytes);
        match check.finish() {
            Ok(()) => Ok(bytes),
            Err(_) => Err(check
                .failure(&self.location)
                .expect("a failed check says why")),
        }
    }

    /// Send the objects of one `fcache-multi` request; per object (by index
    /// into `objects`), whether it was sent.
    fn send_bundle(
        &self,
        objects: &[(Marker, PathBuf)],
        bundle: &[Member],
    ) -> Vec<(usize, Result<bool, ArchiveError>)> {
        let action = &bundle[0].action;
        let mut results = Vec::new();
        let mut carried = Vec::new();
        let sent = if let [member] = bundle
            && objects[member.index].0.size > hashing::CHUNK as u64
        {
            // A large object: alone, streamed.
            let (m, source) = &objects[member.index];
            carried.push(member.index);
            let what = format!("upload of object {}", m.id);
            match self.stream_file(
                reqwest::Method::POST,
                action,
                *m,
                &frame_header(m),
                source,
                m.size,
                &what,
                // fcache-multi servers check what they receive and store
                // nothing else; a refusal is classified below.
                false,
            ) {
                Ok((status, body)) => Ok((what, status, body)),
                // The request failed (after its retries): the object's failure.
                Err(e) => return vec![(member.index, Err(e))],
            }
        } else {
            let mut body = Vec::new();
            for member in bundle {
                let (m, source) = &objects[member.index];
                match self.read_checked(m, source) {
                    Ok(bytes) => {
                        body.extend_from_slice(frame_header(m).as_bytes());
                        body.extend_from_slice(&bytes);
                        carried.push(member.index);
                    }
                    Err(e) => results.push((member.index, Err(e))),
                }
            }
            if carried.is_empty() {
                return results;
            }
            // Shared, not copied, by each try.
            let body = bytes::Bytes::from(body);
            let what = format!("upload of {} object(s)", carried.len());
            self.send(&what, false, &|| {
                let (mut request, authorize) =
                    self.action_request(reqwest::Method::POST, action)?;
                if authorize {
                    request = self.authorize(request);
                }
                Ok(request
                    .header(header::ACCEPT, LFS_MEDIA_TYPE)
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(body.clone()))
            })
            .map(|response| {
                let status = response.status();
                let mut body = Vec::new();
                let _ = response.take(16 << 20).read_to_end(&mut body);
                (what, status, body)
            })
        };
        let outcome = sent.and_then(|(what, status, body)| {
            if !status.is_success() {
                return Err(self.remote(format!("{what}: HTTP {status}{}", message_in(&body))));
            }
            serde_json::from_slice::<MultiResponse>(&body).map_err(|e| ArchiveError::Remote {
                archive: self.location.clone(),
                message: format!("{what}: the server's answer is not an {MULTI} response"),
                source: Some(Box::new(e)),
            })
        });
        let answers: HashMap<ObjectId, Option<ObjectError>> = match outcome {
            Ok(answer) => answer
                .objects
                .into_iter()
                .filter_map(|o| Some((o.oid.parse().ok()?, o.error)))
                .collect(),
            Err(e) => {
                // The request failed as a whole: so did each object in it.
                let message = match &e {
                    ArchiveError::Remote { message, .. } => message.clone(),
                    other => crate::diagnostics::one_line(other),
                };
                for i in carried {
                    results.push((i, Err(self.remote(message.clone()))));
                }
                return results;
            }
        };
        for i in carried {
            let id = objects[i].0.id;
            results.push((
                i,
                match answers.get(&id) {
                    Some(None) => Ok(true),
                    Some(Some(e)) => {
                        let message = format!(
                            "object {id}: the server refuses the upload: {} {}",
                            e.code, e.message
                        );
                        Err(if e.code == 422 {
                            self.classify_refusal(&objects[i].0, &objects[i].1, message)
                        } else {
                            self.remote(message)
                        })
                    }
                    None => Err(self.missing_answer(&id)),
                },
            ));
        }
        results
    }
}

impl Upload for HttpUpload {
    fn send(&self, source: &Path) -> Result<(), ArchiveError> {
        let inner = &self.inner;
        let id = self.object.id;
        let io_err = |e: io::Error| ArchiveError::Io {
            archive: inner.location.clone(),
            path: source.to_owned(),
            source: e,
        };
        let len = fs_err::metadata(source).map_err(io_err)?.len();
        let what = format!("upload of object {id}");
        let (status, body) = if len > hashing::CHUNK as u64 {
            inner.stream_file(
                reqwest::Method::PUT,
                &self.upload,
                self.object,
                "",
                source,
                len,
                &what,
                true,
            )?
        } else {
            // Small objects: read whole (at most one chunk), checked before
            // anything is sent, one write each, and no hop to another runtime.
            let bytes = inner.read_checked(&self.object, source)?;
            let response = inner.send(&what, false, &|| {
                let (mut request, authorize) =
                    inner.action_request(reqwest::Method::PUT, &self.upload)?;
                if authorize {
                    request = inner.authorize(request);
                }
                if !self
                    .upload
                    .header
                    .keys()
                    .any(|k| k.eq_ignore_ascii_case("content-type"))
                {
                    request = request.header(header::CONTENT_TYPE, "application/octet-stream");
                }
                Ok(request.body(bytes.clone()))
            })?;
            let status = response.status();
            let mut body = Vec::new();
            let _ = response.take(64 << 10).read_to_end(&mut body);
            (status, body)
        };
        if !status.is_success() {
            let message = format!("{what}: HTTP {status}{}", message_in(&body));
            return Err(if status.is_client_error() {
                inner.classify_refusal(&self.object, source, message)
            } else {
                inner.remote(message)
            });
        }
        let Some(verify) = &self.verify else {
            return Ok(());
        };
        let what = format!("verification of object {id}");
        let body = serde_json::to_vec(&ObjectSpec {
            oid: id,
            size: self.object.size,
        })
        .expect("an object spec serializes");
        let response = inner.send(&what, false, &|| {
            let (mut request, authorize) = inner.action_request(reqwest::Method::POST, verify)?;
            if authorize {
                request = inner.authorize(request);
            }
            Ok(request
                .header(header::ACCEPT, LFS_MEDIA_TYPE)
                .header(header::CONTENT_TYPE, LFS_MEDIA_TYPE)
                .timeout(Duration::from_secs(120))
                .body(body.clone()))
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(inner.remote(format!(
                "{what}: the server did not confirm it stored the object: HTTP {status}{}",
                server_message(response)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::body::Body;
    use axum::http::{HeaderMap as AxumHeaders, StatusCode as AxumStatus};
    use axum::response::{IntoResponse, Response as AxumResponse};
    use axum::routing::{get, post};

    use super::*;
    use crate::serve::{Options, Server};

    /// A real `fcache serve` over a directory, on a runtime of its own.
    fn serve(
        root: &Path,
        token_file: Option<std::path::PathBuf>,
    ) -> (tokio::runtime::Runtime, String) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let options = Options {
            listen: "127.0.0.1:0".to_owned(),
            token_file,
            allow_anonymous_remote: false,
            max_object_size: Options::DEFAULT_MAX_OBJECT_SIZE,
            max_request_body: Options::DEFAULT_MAX_REQUEST_BODY,
            max_concurrent: 16,
            public_url: None,
            tmp_dir: root.join("tmp"),
        };
        let archive: Arc<dyn crate::archive::Archive> =
            Arc::new(crate::archive::DirArchive::new("test", root.to_owned()));
        let server = runtime
            .block_on(Server::bind(options, archive, Arc::new(|_| {})))
            .unwrap();
        let url = format!("http://{}", server.local_addr());
        runtime.spawn(server.run(std::future::pending()));
        (runtime, url)
    }

    fn options() -> HttpOptions {
        HttpOptions {
            token: None,
            no_credential_helper: true,
        }
    }

    #[test]
    fn an_upload_body_of_wrong_content_ends_in_an_error_not_its_end() {
        use futures_util::StreamExt;
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let chunks = |parts: &[&'static [u8]]| {
            futures_util::stream::iter(
                parts
                    .iter()
                    .map(|p| Ok(bytes::Bytes::from_static(p)))
                    .collect::<Vec<io::Result<bytes::Bytes>>>(),
            )
        };
        let good = Marker::new(ObjectId::of_bytes(b"hello world"), 11);
        let run = |check: Arc<UploadCheck>, parts: &[&'static [u8]]| {
            runtime.block_on(check.wrap(chunks(parts)).collect::<Vec<_>>())
        };
        let check = Arc::new(UploadCheck::new(good));
        let items = run(check.clone(), &[b"hello ", b"world"]);
        assert!(items.iter().all(Result::is_ok));
        let sent: Vec<u8> = items.iter().flatten().flat_map(|b| b.to_vec()).collect();
        assert_eq!(sent, b"hello world");
        assert!(check.failure("a").is_none());

        let check = Arc::new(UploadCheck::new(good));
        let items = run(check.clone(), &[b"hello ", b"World"]);
        assert!(
            items.last().unwrap().is_err(),
            "the body must not end cleanly"
        );
        assert!(matches!(
            check.failure("a"),
            Some(ArchiveError::WrongContent { .. })
        ));

        let check = Arc::new(UploadCheck::new(good));
        run(check.clone(), &[b"hello"]);
        assert!(matches!(
            check.failure("a"),
            Some(ArchiveError::WrongSize { actual: 5, .. })
        ));
    }

    #[test]
    fn conformance_against_fcache_serve() {
        let dir = tempfile::tempdir().unwrap();
        let (_runtime, url) = serve(dir.path(), None);
        let archive = HttpArchive::new(&url, &options()).unwrap();
        crate::archive::conformance::run(&archive, true);
        // Nothing refused was left behind on the server.
        let left: Vec<_> = fs_err::read_dir(dir.path().join("tmp"))
            .unwrap()
            .flat_map(|d| fs_err::read_dir(d.unwrap().path()).unwrap())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn credentials_from_the_url_or_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "read reader:r-secret\nwrite writer:w-secret\n").unwrap();
        let root = dir.path().join("archive");
        let (_runtime, url) = serve(&root, Some(tokens));
        let src = dir.path().join("obj");
        std::fs::write(&src, b"guarded").unwrap();
        let m = Marker::new(ObjectId::of_bytes(b"guarded"), 7);

        let anonymous = HttpArchive::new(&url, &options()).unwrap();
        let err = (&anonymous as &dyn Archive).contains(&m).unwrap_err();
        assert!(err.to_string().contains("401"), "{err}");
        assert!(err.to_string().contains("fcache.http.token"), "{err}");

        let with_user = url.replace("http://", "http://writer:w-secret@");
        let writer = HttpArchive::new(&with_user, &options()).unwrap();
        assert_eq!(writer.location(), url, "credentials never show in messages");
        assert!((&writer as &dyn Archive).put(&m, &src).unwrap());

        let reader = HttpArchive::new(
            &url,
            &HttpOptions {
                token: Some("r-secret".to_owned()),
                no_credential_helper: true,
            },
        )
        .unwrap();
        let mut out = Vec::new();
        (&reader as &dyn Archive).get(&m, &mut out).unwrap();
        assert_eq!(out, b"guarded");
        let other = Marker::new(ObjectId::of_bytes(b"other"), 5);
        let err = (&reader as &dyn Archive).put(&other, &src).unwrap_err();
        assert!(err.to_string().contains("403"), "{err}");

        let wrong =
            HttpArchive::new(&url.replace("http://", "http://writer:nope@"), &options()).unwrap();
        let err = (&wrong as &dyn Archive).contains(&m).unwrap_err();
        assert!(err.to_string().contains("refused the credentials"), "{err}");
    }

    /// A server that fails the way networks do: the batch answers 503, then
    /// 429 with Retry-After; the first download breaks off half way.
    #[test]
    fn retries_and_resumes_a_broken_download_with_range() {
        let content: Arc<Vec<u8>> = Arc::new((0..3_000_000u32).map(|i| (i % 253) as u8).collect());
        let id = ObjectId::of_bytes(&content);
        let batches = Arc::new(AtomicUsize::new(0));
        let ranges = Arc::new(Mutex::new(Vec::<Option<String>>::new()));
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let total = content.len();
        let app = {
            let (batches, ranges, content, base) = (
                batches.clone(),
                ranges.clone(),
                content.clone(),
                base.clone(),
            );
            Router::new()
                .route(
                    "/objects/batch",
                    post(move || {
                        let n = batches.fetch_add(1, Ordering::SeqCst);
                        let base = base.clone();
                        let len = total;
                        async move {
                            match n {
                                0 => AxumStatus::SERVICE_UNAVAILABLE.into_response(),
                                1 => (AxumStatus::TOO_MANY_REQUESTS, [("retry-after", "1")])
                                    .into_response(),
                                _ => serde_json::json!({
                                    "transfer": "basic",
                                    "objects": [{"oid": id.to_string(), "size": len,
                                        "actions": {"download": {"href": format!("{base}/data")}}}]
                                })
                                .to_string()
                                .into_response(),
                            }
                        }
                    }),
                )
                .route(
                    "/data",
                    get(move |headers: AxumHeaders| {
                        let range = headers.get("range").map(|v| v.to_str().unwrap().to_owned());
                        let first = {
                            let mut r = ranges.lock().unwrap();
                            r.push(range.clone());
                            r.len() == 1
                        };
                        let content = content.clone();
                        async move {
                            if first {
                                // Half the bytes, then the connection breaks.
                                let half = axum::body::Bytes::copy_from_slice(
                                    &content[..content.len() / 2],
                                );
                                let stream = futures_util::stream::iter(vec![
                                    Ok(half),
                                    Err(io::Error::other("cut")),
                                ]);
                                let mut r = AxumResponse::new(Body::from_stream(stream));
                                r.headers_mut()
                                    .insert("content-length", content.len().into());
                                return r;
                            }
                            let start: usize = range
                                .as_deref()
                                .and_then(|r| r.strip_prefix("bytes="))
                                .and_then(|r| r.split('-').next())
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(0);
                            let mut r = AxumResponse::new(Body::from(content[start..].to_vec()));
                            *r.status_mut() = AxumStatus::PARTIAL_CONTENT;
                            r.headers_mut().insert(
                                "content-range",
                                format!("bytes {start}-{}/{}", content.len() - 1, content.len())
                                    .parse()
                                    .unwrap(),
                            );
                            r
                        }
                    }),
                )
        };
        runtime.spawn(async move { axum::serve(listener, app).await });

        let archive = HttpArchive::new(&base, &options()).unwrap();
        let m = Marker::new(id, content.len() as u64);
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        let n = (&archive as &dyn Archive).get(&m, &mut out).unwrap();
        assert_eq!(n, content.len() as u64);
        assert!(out == *content, "every byte once, in order");
        assert_eq!(
            batches.load(Ordering::SeqCst),
            3,
            "503 and 429 were retried"
        );
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "Retry-After was honoured"
        );
        let ranges = ranges.lock().unwrap();
        assert_eq!(ranges.len(), 2, "{ranges:?}");
        assert_eq!(ranges[0], None);
        assert_eq!(
            ranges[1].as_deref(),
            Some(format!("bytes={}-{}", content.len() / 2, content.len() - 1).as_str()),
            "the second request resumed where the first broke off"
        );
    }
}
