//! The basic transfer adapter's endpoints: `GET` and `PUT
//! /objects/<oid>/<size>`, and `POST /objects/verify`.

use std::io::{self, Write};
use std::ops::Range;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::batch::archive_failure;
use super::{Access, ApiError, LFS_MEDIA_TYPE, Shared, blocking, receiving_file};
use crate::archive::{ArchiveError, Download};
use crate::hashing::HashingWriter;
use crate::marker::Marker;
use crate::oid::ObjectId;
use crate::writeback::WriteBehind;

/// The object named by the path, if the path names one properly.
fn object(oid: &str, size: &str) -> Result<Marker, ApiError> {
    let id = oid.parse::<ObjectId>().map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid oid: expected 64 lowercase hex digits (SHA-256)",
        )
    })?;
    let size = size
        .parse::<u64>()
        .map_err(|_| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid size"))?;
    Ok(Marker::new(id, size))
}

/// What a `Range` header asks of an object of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    Whole,
    Part(Range<u64>),
    Unsatisfiable,
}

fn parse_range(value: Option<&HeaderValue>, size: u64) -> Wanted {
    let Some(spec) = value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Wanted::Whole;
    };
    // Several ranges at once are allowed to be answered with the whole object.
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    let range = if first.is_empty() {
        // `bytes=-N`: the last N bytes.
        match last.parse::<u64>() {
            Ok(0) | Err(_) => return Wanted::Unsatisfiable,
            Ok(n) => size.saturating_sub(n)..size,
        }
    } else {
        let Ok(start) = first.parse::<u64>() else {
            return Wanted::Whole;
        };
        let end = if last.is_empty() {
            size
        } else {
            match last.parse::<u64>() {
                Ok(l) if l >= start => l.saturating_add(1).min(size),
                _ => return Wanted::Whole,
            }
        };
        start..end
    };
    if range.start >= size {
        return Wanted::Unsatisfiable;
    }
    Wanted::Part(range)
}

/// A sink that hands what it is given to the response body.
struct ChannelSink(mpsc::Sender<Result<Bytes, io::Error>>);

impl Write for ChannelSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub(crate) async fn download(
    State(state): State<Shared>,
    Path((oid, size)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(&headers, Access::Read)?;
    let m = object(&oid, &size)?;
    let turn = state.turn().await?;
    let archive = state.archive.clone();
    let handle = blocking(move || archive.downloads(std::slice::from_ref(&m)))
        .await?
        .map_err(archive_failure)?
        .pop()
        .expect("a batch answers every object");
    let handle: Box<dyn Download> = match handle {
        Ok(h) => h,
        Err(ArchiveError::NotFound { .. }) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("object {} does not exist", m.id),
            ));
        }
        Err(ArchiveError::WrongSize { actual, .. }) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "object {} is stored with {actual} bytes, not {}",
                    m.id, m.size
                ),
            ));
        }
        Err(e) => return Err(archive_failure(e)),
    };
    let (status, range) = match parse_range(headers.get(header::RANGE), m.size) {
        Wanted::Whole => (StatusCode::OK, 0..m.size),
        Wanted::Part(r) => (StatusCode::PARTIAL_CONTENT, r),
        Wanted::Unsatisfiable => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("object {} has {} bytes", m.id, m.size),
            )
            .into_response();
            response.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{}", m.size))
                    .expect("digits make a header value"),
            );
            return Ok(response);
        }
    };
    let len = range.end - range.start;
    let (tx, rx) = mpsc::channel(4);
    let reading = range.clone();
    tokio::task::spawn_blocking(move || {
        // The turn lasts as long as the body streams.
        let _turn = turn;
        let mut sink = ChannelSink(tx.clone());
        match handle.read(reading, &mut sink) {
            Ok(n) if n == len => {}
            // Breaking off the body tells the client the bytes are incomplete.
            Ok(n) => {
                let _ = tx.blocking_send(Err(io::Error::other(format!(
                    "object {} ended after {n} of {len} bytes",
                    m.id
                ))));
            }
            Err(ArchiveError::Sink { .. }) => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(io::Error::other(crate::diagnostics::one_line(&e))));
            }
        }
    });
    let mut response = Response::new(Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!(
                "bytes {}-{}/{}",
                range.start,
                range.end - 1,
                m.size
            ))
            .expect("digits make a header value"),
        );
    }
    Ok(response)
}

pub(crate) async fn upload(
    State(state): State<Shared>,
    Path((oid, size)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    state.authorize(&headers, Access::Write)?;
    let m = object(&oid, &size)?;
    let max = state.options.max_object_size;
    if m.size > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "object {} of {} bytes is over this server's limit of {max}",
                m.id, m.size
            ),
        ));
    }
    if let Some(declared) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && declared != m.size
    {
        let status = if declared > m.size {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        return Err(ApiError::new(
            status,
            format!(
                "object {} has {} bytes but the request body has {declared}; nothing stored",
                m.id, m.size
            ),
        ));
    }
    let _turn = state.turn().await?;
    let archive = state.archive.clone();
    let present = blocking(move || archive.contains(&m))
        .await?
        .map_err(archive_failure)?;
    if present {
        return Ok(StatusCode::OK);
    }

    // Received into a temporary file while hashed; the file vanishes with
    // it on any failure, a client that breaks off included.
    let tmp = receiving_file(&state.options.tmp_dir, &m.id)?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(8);
    let writer = tokio::task::spawn_blocking(move || -> io::Result<_> {
        let mut writer = HashingWriter::new(WriteBehind::new(tmp));
        while let Some(chunk) = rx.blocking_recv() {
            writer.write_all(&chunk)?;
        }
        writer.flush()?;
        let (id, len, tmp) = writer.finish();
        Ok((id, len, tmp.into_inner()))
    });
    let mut stream = body.into_data_stream();
    let mut received = 0u64;
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                failure = Some(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("upload of object {} broke off: {e}", m.id),
                ));
                break;
            }
        };
        received += chunk.len() as u64;
        if received > m.size {
            failure = Some(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "object {} has {} bytes but more were sent; nothing stored",
                    m.id, m.size
                ),
            ));
            break;
        }
        if tx.send(chunk).await.is_err() {
            break; // the writer failed; its error is below
        }
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error"));
    if let Some(failure) = failure {
        return Err(failure);
    }
    let (actual, len, tmp) = written?.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot receive object {}: {e}", m.id),
        )
    })?;
    if len != m.size {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "object {} has {} bytes but {len} were sent; nothing stored",
                m.id, m.size
            ),
        ));
    }
    if actual != m.id {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "the bytes sent for object {} hash to {actual}; nothing stored",
                m.id
            ),
        ));
    }
    let archive = state.archive.clone();
    blocking(move || -> Result<(), ArchiveError> {
        // Another upload of the same object may have finished first: then
        // nothing is sent. Stored means durable before the client hears so.
        // The bytes were checked above: a directory archive takes the file
        // as it is rather than copying and hashing it again.
        archive.put_checked(&m, tmp.into_temp_path()).map(drop)
    })
    .await?
    .map_err(|e| match e {
        ArchiveError::WrongContent { .. } | ArchiveError::WrongSize { .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            crate::diagnostics::one_line(&e),
        ),
        e => archive_failure(e),
    })?;
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
struct VerifyRequest {
    oid: String,
    size: u64,
}

pub(crate) async fn verify(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    state.authorize(&headers, Access::Read)?;
    let request: VerifyRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not a verify request: {e}"),
        )
    })?;
    let m = object(&request.oid, &request.size.to_string())?;
    let archive = state.archive.clone();
    let found = blocking(move || archive.contains(&m))
        .await?
        .map_err(archive_failure)?;
    if !found {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("object {} is not stored", m.id),
        ));
    }
    let mut response = (StatusCode::OK, "{}").into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(LFS_MEDIA_TYPE),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> Wanted {
        parse_range(Some(&HeaderValue::from_str(v).unwrap()), size)
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Wanted::Whole);
        assert_eq!(range("bytes=2-4", 10), Wanted::Part(2..5));
        assert_eq!(range("bytes=2-", 10), Wanted::Part(2..10));
        assert_eq!(range("bytes=5-100", 10), Wanted::Part(5..10));
        assert_eq!(range("bytes=-3", 10), Wanted::Part(7..10));
        assert_eq!(range("bytes=-30", 10), Wanted::Part(0..10));
        assert_eq!(range("bytes=10-", 10), Wanted::Unsatisfiable);
        assert_eq!(range("bytes=0-0,5-6", 10), Wanted::Whole);
        assert_eq!(range("items=1-2", 10), Wanted::Whole);
        assert_eq!(range("bytes=4-2", 10), Wanted::Whole);
    }
}
