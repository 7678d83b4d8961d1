//! The `fcache-multi` transfer adapter: many objects in one request.
//!
//! With the basic adapter every object is a request of its own, and a server
//! that answers an upload only once the object is durable flushes the
//! archive once per object. A client that lists `fcache-multi` in a batch request's
//! `transfers` is answered with it for uploads; every object's `upload`
//! action then points at `POST <root>/objects/multi`, whose body is the
//! objects one after another, each as a header line `<oid> <size>\n`
//! followed by exactly `size` bytes. Each object is received while hashed,
//! a small one into memory, a large one into a temporary file; once the
//! body has ended well, the objects that hash to their identifiers go to
//! the archive, which one flush makes durable all together. The answer
//! lists every object with an `error` where it was refused. A body that breaks off, or is not made of such frames,
//! stores nothing. Stock Git LFS clients never ask for this adapter and keep
//! using `basic`.

use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt as _;
use tempfile::TempPath;

use super::batch::archive_failure;
use super::{Access, ApiError, LFS_MEDIA_TYPE, Shared, blocking, receiving_file};
use crate::archive::{Archive, ArchiveError};
use crate::hashing::{self, HashingWriter};
use crate::marker::Marker;
use crate::oid::ObjectId;
use crate::writeback::WriteBehind;

/// The adapter's name in the Batch API's `transfers` lists.
pub use crate::archive::MULTI_TRANSFER as TRANSFER;

/// The most objects one request may carry.
pub const MAX_OBJECTS: usize = 1000;

/// Longest header line: 64 hex digits, a space, a size, a newline.
const MAX_HEADER: u64 = 100;

/// Why an object was refused: the status code and the reason.
type Refusal = (u16, String);

/// Objects up to this size are received into memory, up to
/// `MAX_IN_MEMORY` bytes of them per request: written once, straight where
/// they go, rather than into a temporary file that is then moved there.
const SMALL: u64 = hashing::CHUNK as u64;
const MAX_IN_MEMORY: u64 = 8 << 20;

/// Where an object's bytes were received.
enum Content {
    Memory(Vec<u8>),
    File(TempPath),
}

/// One object of a request body, once its bytes are in.
enum Received {
    Intact(Marker, Content),
    Refused(Marker, String),
}

pub(crate) async fn upload_many(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.authorize(&headers, Access::Write)?;
    let _turn = state.turn().await?;
    let stream = body.into_data_stream().map_err(io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let tmp_dir = state.options.tmp_dir.clone();
    let max_size = state.options.max_object_size;
    let received = {
        let tmp_dir = tmp_dir.clone();
        blocking(move || receive(reader, &tmp_dir, max_size)).await??
    };
    let archive = state.archive.clone();
    let results = blocking(move || store(archive.as_ref(), received, &tmp_dir))
        .await?
        .map_err(archive_failure)?;
    let objects: Vec<serde_json::Value> = results
        .into_iter()
        .map(|(m, refused)| {
            let mut object = serde_json::json!({ "oid": m.id.to_hex(), "size": m.size });
            if let Some((code, message)) = refused {
                object["error"] = serde_json::json!({ "code": code, "message": message });
            }
            object
        })
        .collect();
    let mut response = (
        StatusCode::OK,
        serde_json::json!({ "objects": objects }).to_string(),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(LFS_MEDIA_TYPE),
    );
    Ok(response)
}

/// Read the whole body, each object into a temporary file of its own. Any
/// error drops every file received so far: nothing of a bad body is kept.
fn receive(body: impl Read, tmp_dir: &Path, max_size: u64) -> Result<Vec<Received>, ApiError> {
    let mut body = BufReader::with_capacity(64 << 10, body);
    let mut received = Vec::new();
    let mut in_memory = 0u64;
    while let Some(m) = header_line(&mut body, max_size)? {
        if received.len() == MAX_OBJECTS {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("more than {MAX_OBJECTS} objects in one request; nothing stored"),
            ));
        }
        let broke_off = |why: String| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("upload of object {} broke off: {why}; nothing stored", m.id),
            )
        };
        let (actual, content, copied) = if m.size <= SMALL && in_memory + m.size <= MAX_IN_MEMORY {
            in_memory += m.size;
            let mut bytes = Vec::with_capacity(m.size as usize);
            let copied = (&mut body).take(m.size).read_to_end(&mut bytes);
            (
                ObjectId::of_bytes(&bytes),
                Content::Memory(bytes),
                copied.map(|n| n as u64),
            )
        } else {
            let tmp = receiving_file(tmp_dir, &m.id)?;
            let mut writer = HashingWriter::new(WriteBehind::new(tmp));
            let copied = hashing::copy(&mut (&mut body).take(m.size), &mut writer);
            let (actual, _, tmp) = writer.finish();
            (
                actual,
                Content::File(tmp.into_inner().into_temp_path()),
                copied,
            )
        };
        match copied {
            Ok(n) if n == m.size => {}
            Ok(n) => {
                return Err(broke_off(format!(
                    "the body ended after {n} of its {} bytes",
                    m.size
                )));
            }
            Err(e) => return Err(broke_off(e.to_string())),
        }
        received.push(if actual == m.id {
            Received::Intact(m, content)
        } else {
            Received::Refused(
                m,
                format!(
                    "the bytes sent for object {} hash to {actual}; nothing stored",
                    m.id
                ),
            )
        });
    }
    Ok(received)
}

/// The next object's header line, or `None` where the body ends.
fn header_line(body: &mut impl BufRead, max_size: u64) -> Result<Option<Marker>, ApiError> {
    let mut line = Vec::new();
    body.take(MAX_HEADER)
        .read_until(b'\n', &mut line)
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the request body broke off: {e}; nothing stored"),
            )
        })?;
    if line.is_empty() {
        return Ok(None);
    }
    let malformed = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "expected an object header \"<oid> <size>\\n\", got {:?}; nothing stored",
                String::from_utf8_lossy(&line)
            ),
        )
    };
    let text = line
        .strip_suffix(b"\n")
        .and_then(|l| std::str::from_utf8(l).ok())
        .ok_or_else(malformed)?;
    let (oid, size) = text.split_once(' ').ok_or_else(malformed)?;
    let id = oid.parse::<ObjectId>().map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "invalid oid {oid:?}: expected 64 lowercase hex digits (SHA-256); nothing stored"
            ),
        )
    })?;
    let size = size.parse::<u64>().map_err(|_| malformed())?;
    if size > max_size {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "object {id} of {size} bytes is over this server's limit of {max_size}; nothing stored"
            ),
        ));
    }
    Ok(Some(Marker::new(id, size)))
}

/// Hand the intact objects to the archive and make them durable, with one
/// flush for all. Per object: `None` where stored (or held already), the
/// status and reason where refused.
fn store(
    archive: &dyn Archive,
    received: Vec<Received>,
    tmp_dir: &Path,
) -> Result<Vec<(Marker, Option<Refusal>)>, ArchiveError> {
    let intact: Vec<Marker> = received
        .iter()
        .filter_map(|r| match r {
            Received::Intact(m, _) => Some(*m),
            Received::Refused(..) => None,
        })
        .collect();
    let mut uploads = archive.uploads(&intact)?.into_iter();
    let mut results = Vec::with_capacity(received.len());
    let mut adopted = false;
    for r in received {
        results.push(match r {
            Received::Refused(m, why) => (m, Some((422, why))),
            Received::Intact(m, content) => {
                let upload = uploads.next().expect("a batch answers every object");
                // Held already (perhaps sent by a concurrent request): done.
                let stored = upload.and_then(|u| match (u, content) {
                    (None, _) => Ok(()),
                    (Some(u), Content::Memory(bytes)) => {
                        adopted = true;
                        u.send_checked(&bytes, tmp_dir)
                    }
                    (Some(u), Content::File(file)) => {
                        adopted = true;
                        u.adopt(file)
                    }
                });
                match stored {
                    Ok(()) => (m, None),
                    Err(e) => (m, Some((500, crate::diagnostics::one_line(&e)))),
                }
            }
        });
    }
    // Stored means durable before the client hears so.
    if adopted {
        archive.flush()?;
    }
    Ok(results)
}
