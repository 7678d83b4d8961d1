//! `fcache serve`: an archive server speaking the Git LFS Batch API with the
//! basic transfer adapter, so fcache and stock git-lfs clients alike can use
//! it, and with an adapter of fcache's own for uploads of many objects in
//! one request (`multi`). The server root is the LFS endpoint: `POST <root>/objects/batch`.
//!
//! Storage is any `Archive` (a directory, or whatever `archive::open`
//! accepts); its calls block, so they run on tokio's blocking pool. Uploads
//! stream into a temporary file while hashed and reach the archive only when
//! their bytes hash to the identifier and have the announced size.

mod auth;
mod batch;
mod multi;
mod objects;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use self::auth::{Access, Auth, AuthError};
use crate::archive::Archive;

/// The media type of Batch API requests and responses.
pub const LFS_MEDIA_TYPE: &str = "application/vnd.git-lfs+json";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot resolve listen address {addr}")]
    Resolve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listen address {addr} resolves to nothing")]
    NoAddress { addr: String },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "refusing to serve without credentials on {addr}, which is not a loopback address: give --token-file FILE, or --allow-anonymous-remote to let anyone read and write"
    )]
    AnonymousRemote { addr: SocketAddr },
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("cannot create the temporary directory {}", path.display())]
    TmpDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the server failed")]
    Serve(#[source] std::io::Error),
}

/// How the server runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// `HOST:PORT` to listen on; port 0 picks a free one.
    pub listen: String,
    /// Credentials (see `auth`); without them everyone may read and write.
    pub token_file: Option<PathBuf>,
    /// Serve without credentials on an address other machines can reach.
    pub allow_anonymous_remote: bool,
    /// Largest object accepted, in bytes.
    pub max_object_size: u64,
    /// Largest JSON request body (batch, verify), in bytes.
    pub max_request_body: usize,
    /// Requests handled at once; more wait for a turn.
    pub max_concurrent: usize,
    /// The URL clients reach the server at, for the hrefs in batch answers;
    /// default: `http://` and the request's Host header.
    pub public_url: Option<String>,
    /// Where uploads are received before they go to the archive.
    pub tmp_dir: PathBuf,
}

impl Options {
    pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 100 << 30;
    pub const DEFAULT_MAX_REQUEST_BODY: usize = 1 << 20;
    pub const DEFAULT_MAX_CONCURRENT: usize = 64;
}

/// Where the server writes its one line per request.
pub type Log = Arc<dyn Fn(String) + Send + Sync>;

pub(crate) struct AppState {
    archive: Arc<dyn Archive>,
    auth: Auth,
    options: Options,
    turns: Arc<Semaphore>,
}

type Shared = Arc<AppState>;

/// A bound server, ready to run.
pub struct Server {
    listener: TcpListener,
    router: Router,
    addr: SocketAddr,
}

impl Server {
    pub async fn bind(
        options: Options,
        archive: Arc<dyn Archive>,
        log: Log,
    ) -> Result<Self, ServeError> {
        let auth = match &options.token_file {
            Some(path) => Auth::from_file(path)?,
            None => Auth::Anonymous,
        };
        let addr = tokio::net::lookup_host(&options.listen)
            .await
            .map_err(|source| ServeError::Resolve {
                addr: options.listen.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| ServeError::NoAddress {
                addr: options.listen.clone(),
            })?;
        if matches!(auth, Auth::Anonymous)
            && !options.allow_anonymous_remote
            && !addr.ip().is_loopback()
        {
            return Err(ServeError::AnonymousRemote { addr });
        }
        fs_err::create_dir_all(&options.tmp_dir).map_err(|source| ServeError::TmpDir {
            path: options.tmp_dir.clone(),
            source,
        })?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: options.listen.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: options.listen.clone(),
            source,
        })?;
        let state = Arc::new(AppState {
            archive,
            auth,
            turns: Arc::new(Semaphore::new(options.max_concurrent.max(1))),
            options,
        });
        let router = Router::new()
            .route("/objects/batch", post(batch::batch))
            .route("/objects/verify", post(objects::verify))
            .route("/objects/multi", post(multi::upload_many))
            .route(
                "/objects/{oid}/{size}",
                get(objects::download).put(objects::upload),
            )
            // Plain text, so clients can tell a wrong URL from an LFS answer.
            .fallback(|| async { (StatusCode::NOT_FOUND, "no such endpoint\n") })
            .layer(DefaultBodyLimit::max(state.options.max_request_body))
            .with_state(state)
            .layer(middleware::from_fn_with_state(log, log_request));
        Ok(Self {
            listener,
            router,
            addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve until `shutdown` completes, then finish the requests under way.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        use axum::serve::ListenerExt as _;
        // Without TCP_NODELAY a response whose head and body go out in two
        // writes waits for the client's delayed ACK: 40 ms per small object.
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        // Requests under way when the signal comes may finish, for a while:
        // a client that stalls must not keep the server from stopping.
        let (fired, fired_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            shutdown.await;
            let _ = fired.send(());
        };
        let serve = axum::serve(
            listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown);
        tokio::select! {
            served = serve => served.map_err(ServeError::Serve),
            () = async {
                match fired_rx.await {
                    Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
                    Err(_) => std::future::pending().await,
                }
            } => Ok(()),
        }
    }
}

/// How long requests under way may take to finish once the server is told to stop.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Completes on Ctrl-C or SIGTERM. The handlers are in place when this
/// returns (call it inside the runtime, before telling anyone the server is
/// up), so a signal sent right after start-up is not lost.
#[cfg(unix)]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut interrupt = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(term.take()) => {}
            () = wait(interrupt.take()) => {}
        }
    }
}

#[cfg(not(unix))]
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn log_request(
    axum::extract::State(log): axum::extract::State<Log>,
    request: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_else(|| "-".to_owned());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    log(format!(
        "{remote} {method} {path} {} {}ms",
        response.status().as_u16(),
        start.elapsed().as_millis()
    ));
    response
}

impl AppState {
    /// Wait for a turn: at most `max_concurrent` requests work at once.
    async fn turn(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        match tokio::time::timeout(Duration::from_secs(60), self.turns.clone().acquire_owned())
            .await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is busy; try again",
            )
            .retry_after(1)),
        }
    }

    fn authorize(&self, headers: &HeaderMap, needed: Access) -> Result<(), ApiError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.auth
            .check(value, needed)
            .map_err(|denied| match denied {
                auth::Denied::Unauthenticated => {
                    ApiError::new(StatusCode::UNAUTHORIZED, "credentials are missing or wrong")
                }
                auth::Denied::Forbidden => {
                    ApiError::new(StatusCode::FORBIDDEN, "these credentials may only read")
                }
            })
    }

    /// The URL hrefs in batch answers start with.
    fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(url) = &self.options.public_url {
            return url.trim_end_matches('/').to_owned();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '\\', '@']));
        match host {
            Some(h) => format!("http://{h}"),
            None => "http://localhost".to_owned(),
        }
    }
}

/// An error answer: JSON `{"message": ...}` as the Batch API describes.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "message": self.message }).to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(LFS_MEDIA_TYPE),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = HeaderValue::from_static("Basic realm=\"fcache\"");
            headers.insert("lfs-authenticate", challenge.clone());
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A temporary file to receive object `id` into, which vanishes with its
/// handle unless the object is stored. The files are spread over
/// subdirectories by the identifier's first two digits, as git spreads its
/// objects, so that parallel uploads do not queue on one directory's lock.
fn receiving_file(
    tmp_dir: &std::path::Path,
    id: &crate::oid::ObjectId,
) -> Result<tempfile::NamedTempFile, ApiError> {
    let dir = tmp_dir.join(&id.to_hex()[..2]);
    std::fs::create_dir_all(&dir)
        .and_then(|()| tempfile::Builder::new().prefix("upload-").tempfile_in(&dir))
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot create a temporary file in {}: {e}", dir.display()),
            )
        })
}

/// Run blocking archive work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"))
}
