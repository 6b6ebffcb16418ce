//! Images as they arrive in a `/predict` request: a multipart form (the browser's and
//! `curl -F`'s form), a raw body with an image content type, or base64 in JSON.
//!
//! Only the bytes are taken here; what they are is decided by decoding them (in the engine,
//! on the blocking pool), never by a file name or a declared type. A declared type still
//! refuses early what no decoder here reads (`image/svg+xml`, `image/heic`).

use axum::body::Bytes;
use axum::extract::multipart::{Multipart, MultipartError};
use axum::http::{header, HeaderMap, StatusCode};
use base64::Engine;

use crate::error::ApiError;
use crate::Limits;

/// The raw content types accepted as one image body.
const IMAGE_TYPES: &[&str] = &[
    "image/jpeg",
    "image/jpg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/x-ms-bmp",
    "image/tiff",
];

/// How the request's body is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Multipart,
    /// One image as the whole body.
    RawImage,
}

/// Classifies the body by its `Content-Type`; `None` when it is none of the accepted ones.
pub fn body_kind(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json")) {
        return Ok(BodyKind::Json);
    }
    if mime == "multipart/form-data" {
        return Ok(BodyKind::Multipart);
    }
    if IMAGE_TYPES.contains(&mime.as_str()) || mime == "application/octet-stream" {
        return Ok(BodyKind::RawImage);
    }
    if mime.starts_with("image/") {
        return Err(unsupported_type(&mime));
    }
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "expected Content-Type: application/json, multipart/form-data, or an image type \
         (image/jpeg, png, webp, gif, bmp, tiff)",
    ))
}

fn unsupported_type(mime: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_image_format",
        format!("{mime} is not supported; send JPEG, PNG, WebP, GIF, BMP or TIFF"),
    )
}

/// The images and text fields of a multipart form.
#[derive(Debug, Default)]
pub struct Form {
    pub images: Vec<Bytes>,
    pub model: Option<String>,
    pub top_k: Option<u32>,
}

/// Reads a multipart form: parts with a file name or a content type are images (in order);
/// the text parts `model` and `top_k` are options; any other text part is refused, so a
/// misspelt option is not silently ignored.
pub async fn read_form(mut multipart: Multipart, limits: &Limits) -> Result<Form, ApiError> {
    let mut form = Form::default();
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_string();
        let is_file = field.file_name().is_some() || field.content_type().is_some();
        if is_file {
            if let Some(mime) = field.content_type() {
                let mime = mime.to_ascii_lowercase();
                if mime.starts_with("image/") && !IMAGE_TYPES.contains(&mime.as_str()) {
                    return Err(unsupported_type(&mime));
                }
            }
            if form.images.len() == limits.max_client_batch {
                return Err(ApiError::invalid(format!(
                    "more than {} images in one request (MAX_CLIENT_BATCH)",
                    limits.max_client_batch
                )));
            }
            form.images
                .push(field.bytes().await.map_err(multipart_error)?);
            continue;
        }
        let value = field.text().await.map_err(multipart_error)?;
        match name.as_str() {
            "model" => form.model = Some(value),
            "top_k" => {
                form.top_k = Some(value.trim().parse().map_err(|_| {
                    ApiError::invalid(format!("top_k must be a whole number, got \"{value}\""))
                })?)
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unexpected form field \"{other}\": send images as file parts, and only \
                     \"model\" and \"top_k\" as text"
                )))
            }
        }
    }
    if form.images.is_empty() {
        return Err(ApiError::invalid(
            "the form has no image: send it as a file part (curl -F file=@photo.jpg)",
        ));
    }
    Ok(form)
}

fn multipart_error(e: MultipartError) -> ApiError {
    form_error(e, || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "image_too_large",
            "the upload is larger than MAX_IMAGE_BYTES allows",
        )
    })
}

/// A multipart form that could not be read: `too_large` when it passed the route's body
/// limit, else 400 `malformed_multipart` with axum's reason.
pub(crate) fn form_error(e: MultipartError, too_large: impl FnOnce() -> ApiError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large();
    }
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "malformed_multipart",
        format!("cannot read the multipart form: {}", e.body_text()),
    )
}

/// An image given in JSON: base64, or a `data:` URL carrying base64.
pub fn decode_base64(index: usize, text: &str) -> Result<Bytes, ApiError> {
    let payload = match text.strip_prefix("data:") {
        Some(url) => {
            let (meta, data) = url
                .split_once(',')
                .ok_or_else(|| invalid_image(index, "the data: URL has no ',' before its data"))?;
            if !meta.ends_with(";base64") {
                return Err(invalid_image(index, "only base64 data: URLs are accepted"));
            }
            let mime = meta.trim_end_matches(";base64").to_ascii_lowercase();
            if mime.starts_with("image/") && !IMAGE_TYPES.contains(&mime.as_str()) {
                return Err(unsupported_type(&mime));
            }
            data
        }
        None => text,
    };
    // Line breaks are common in base64 pasted from tools; padding is optional in practice.
    let compact: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(compact.as_bytes())
        .map(Bytes::from)
        .map_err(|e| invalid_image(index, &format!("not valid base64: {e}")))
}

fn invalid_image(index: usize, reason: &str) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_image",
        format!("image {index}: {reason}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        h
    }

    #[test]
    fn body_kinds_follow_the_content_type() {
        assert_eq!(
            body_kind(&headers("application/json; charset=utf-8")).unwrap(),
            BodyKind::Json
        );
        assert_eq!(
            body_kind(&headers("multipart/form-data; boundary=x")).unwrap(),
            BodyKind::Multipart
        );
        assert_eq!(
            body_kind(&headers("image/PNG")).unwrap(),
            BodyKind::RawImage
        );
        let e = body_kind(&headers("image/svg+xml")).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.code.as_ref()),
            (415, "unsupported_image_format")
        );
        assert_eq!(body_kind(&headers("text/plain")).unwrap_err().status, 415);
        assert_eq!(body_kind(&HeaderMap::new()).unwrap_err().status, 415);
    }

    #[test]
    fn base64_and_data_urls_decode_and_junk_is_422() {
        assert_eq!(&decode_base64(0, "aGk=").unwrap()[..], b"hi");
        assert_eq!(&decode_base64(0, "aGk").unwrap()[..], b"hi");
        assert_eq!(
            &decode_base64(0, "data:image/png;base64,aG\nk=").unwrap()[..],
            b"hi"
        );
        let e = decode_base64(3, "not base64!").unwrap_err();
        assert_eq!(e.status.as_u16(), 422);
        assert!(e.message.contains("image 3"), "{}", e.message);
        assert_eq!(
            decode_base64(0, "data:image/png,raw").unwrap_err().status,
            422
        );
        assert_eq!(
            decode_base64(0, "data:image/svg+xml;base64,aGk=")
                .unwrap_err()
                .status,
            415
        );
    }
}
