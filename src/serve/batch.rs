//! `POST /objects/batch`: which objects can be downloaded or must be
//! uploaded, with hrefs to this server's own object endpoints.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{Access, ApiError, LFS_MEDIA_TYPE, Shared, blocking, multi};
use crate::archive::ArchiveError;
use crate::marker::Marker;
use crate::oid::ObjectId;

/// The most objects one batch request may name.
const MAX_BATCH_OBJECTS: usize = 1000;
#[derive(Deserialize)]
struct BatchRequest {
    operation: String,
    #[serde(default)]
    transfers: Option<Vec<String>>,
    objects: Vec<RequestObject>,
    #[serde(default)]
    hash_algo: Option<String>,
}

#[derive(Deserialize)]
struct RequestObject {
    oid: serde_json::Value,
    size: serde_json::Value,
}

#[derive(Serialize)]
struct BatchResponse {
    transfer: &'static str,
    objects: Vec<ResponseObject>,
    hash_algo: &'static str,
}

#[derive(Serialize)]
struct ResponseObject {
    oid: String,
    size: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    authenticated: Option<bool>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    actions: BTreeMap<&'static str, Action>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ObjectError>,
}

#[derive(Serialize)]
struct Action {
    href: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    header: BTreeMap<&'static str, String>,
    expires_in: u64,
}

#[derive(Serialize)]
struct ObjectError {
    code: u16,
    message: String,
}

/// Actions stay valid this long (they never really expire here).
const EXPIRES_IN: u64 = 24 * 3600;

pub(crate) async fn batch(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: BatchRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("not a Batch API request: {e}"),
        )
    })?;
    let upload = match request.operation.as_str() {
        "upload" => true,
        "download" => false,
        other => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("unknown operation {other:?}: expected \"upload\" or \"download\""),
            ));
        }
    };
    state.authorize(&headers, if upload { Access::Write } else { Access::Read })?;
    if let Some(algo) = &request.hash_algo
        && algo != "sha256"
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("hash algorithm {algo:?} is not supported: only sha256"),
        ));
    }
    // No list means basic. Uploads go in many-object requests when the
    // client offers that adapter; downloads are basic either way.
    let offered = |name: &str| {
        request
            .transfers
            .as_ref()
            .is_none_or(|t| t.is_empty() || t.iter().any(|t| t == name))
    };
    let multi = upload
        && request
            .transfers
            .as_ref()
            .is_some_and(|t| t.iter().any(|t| t == multi::TRANSFER));
    if !multi && !offered("basic") {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "no transfer adapter in common: this server offers \"basic\" and, for uploads, {:?}",
                multi::TRANSFER
            ),
        ));
    }
    // Each object may cost the storage a lookup: a batch is bounded, well
    // above the 100 that Git LFS clients send.
    if request.objects.len() > MAX_BATCH_OBJECTS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} objects in one batch: at most {MAX_BATCH_OBJECTS}",
                request.objects.len()
            ),
        ));
    }
    let max_size = state.options.max_object_size;
    let mut answers: Vec<ResponseObject> = Vec::with_capacity(request.objects.len());
    let mut valid: Vec<(usize, Marker)> = Vec::new();
    for (i, object) in request.objects.into_iter().enumerate() {
        let shown_oid = match &object.oid {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut answer = ResponseObject {
            oid: shown_oid.clone(),
            size: object.size.clone(),
            authenticated: None,
            actions: BTreeMap::new(),
            error: None,
        };
        let id = shown_oid.parse::<ObjectId>();
        let size = object.size.as_u64();
        match (id, size) {
            (Err(_), _) => {
                answer.error = Some(error(
                    422,
                    "invalid oid: expected 64 lowercase hex digits (SHA-256)",
                ))
            }
            (_, None) => answer.error = Some(error(422, "invalid size: expected a byte count")),
            (Ok(_), Some(size)) if upload && size > max_size => {
                answer.error = Some(error(
                    422,
                    &format!("object of {size} bytes is over this server's limit of {max_size}"),
                ))
            }
            (Ok(id), Some(size)) => valid.push((i, Marker::new(id, size))),
        }
        answers.push(answer);
    }

    let _turn = state.turn().await?;
    let base = state.base_url(&headers);
    let authorization = headers.get(header::AUTHORIZATION).cloned();
    let markers: Vec<Marker> = valid.iter().map(|(_, m)| *m).collect();
    let archive = state.archive.clone();
    let href = |m: &Marker| format!("{base}/objects/{}/{}", m.id, m.size);
    let multi_href = format!("{base}/objects/multi");
    let action = |href: String| Action {
        href,
        // Clients send the action's headers with the transfer: pass on the
        // credentials the batch request came with.
        header: authorization
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .map(|v| BTreeMap::from([("Authorization", v.to_owned())]))
            .unwrap_or_default(),
        expires_in: EXPIRES_IN,
    };
    if upload {
        let results = blocking(move || archive.uploads(&markers)).await?;
        let results = results.map_err(archive_failure)?;
        for ((i, m), result) in valid.iter().zip(results) {
            let answer = &mut answers[*i];
            match result {
                Ok(None) => {}
                // No `verify` action: an upload is answered 200 only once
                // the object is checked and durable, so a verify request
                // would tell the client nothing more and cost a round trip
                // per object. The endpoint stays for clients that call it.
                Ok(Some(_)) => {
                    let href = if multi { multi_href.clone() } else { href(m) };
                    answer.actions.insert("upload", action(href));
                }
                Err(e) => answer.error = Some(object_error(&e)),
            }
        }
    } else {
        let results = blocking(move || archive.downloads(&markers)).await?;
        let results = results.map_err(archive_failure)?;
        for ((i, m), result) in valid.iter().zip(results) {
            let answer = &mut answers[*i];
            match result {
                Ok(_) => {
                    answer.actions.insert("download", action(href(m)));
                }
                Err(e) => answer.error = Some(object_error(&e)),
            }
        }
    }
    let body = serde_json::to_vec(&BatchResponse {
        transfer: if multi { multi::TRANSFER } else { "basic" },
        objects: answers,
        hash_algo: "sha256",
    })
    .expect("a batch response serializes");
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(LFS_MEDIA_TYPE),
    );
    Ok(response)
}

fn error(code: u16, message: &str) -> ObjectError {
    ObjectError {
        code,
        message: message.to_owned(),
    }
}

fn object_error(e: &ArchiveError) -> ObjectError {
    match e {
        ArchiveError::NotFound { .. } => error(404, "object does not exist"),
        ArchiveError::WrongSize { actual, .. } => error(
            422,
            &format!("the stored object with this oid has {actual} bytes"),
        ),
        other => error(500, &crate::diagnostics::one_line(other)),
    }
}

pub(super) fn archive_failure(e: ArchiveError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        crate::diagnostics::one_line(&e),
    )
}
