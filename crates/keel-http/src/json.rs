//! A JSON body extractor whose every failure is an [`ApiError`] with the right status:
//! 415 for a wrong content type, 413 for a body over the limit, 400 for malformed JSON,
//! 422 for well-formed JSON with wrong or missing fields.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use tower_http::timeout::TimeoutError;

use crate::error::ApiError;

pub struct JsonBody<T>(pub T);

/// The raw body, with axum's rejections turned into [`ApiError`]s.
pub async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(|rejection| body_error(&rejection))
}

/// The error for a body that could not be read: too large (413), not in time (408, known
/// by the timeout layer's error type anywhere in the chain), or broken (400).
pub fn body_error(rejection: &BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return body_too_large();
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(e) = source {
        if e.is::<TimeoutError>() {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body was not received within BODY_READ_TIMEOUT_MS",
            );
        }
        source = e.source();
    }
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "unreadable_body",
        format!("cannot read the request body: {rejection}"),
    )
}

/// The raw body, at most `limit` bytes: for routes whose body kinds have limits of their own
/// (`/predict` takes JSON under MAX_BODY_BYTES and images under MAX_IMAGE_BYTES). A body over
/// the limit is answered with `too_large` (413).
pub async fn read_body_within(
    req: Request,
    limit: usize,
    too_large: ApiError,
) -> Result<Bytes, ApiError> {
    let error = match axum::body::to_bytes(req.into_body(), limit).await {
        Ok(bytes) => return Ok(bytes),
        Err(e) => e,
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return Err(too_large);
        }
        if e.is::<TimeoutError>() {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body was not received within BODY_READ_TIMEOUT_MS",
            ));
        }
        source = e.source();
    }
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "unreadable_body",
        format!("cannot read the request body: {error}"),
    ))
}

/// The 413 for a JSON body over MAX_BODY_BYTES.
pub fn body_too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "the request body is larger than MAX_BODY_BYTES allows",
    )
}

pub fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false);
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a body with Content-Type: application/json",
        ))
    }
}

pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    keel_limits::input::check_json_depth(body)
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "json_too_deep", m))?;
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::invalid(e.to_string()),
            Category::Syntax | Category::Eof | Category::Io => ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {e}"),
            ),
        }
    })
}

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        check_json_content_type(req.headers())?;
        let body = read_body(req, state).await?;
        parse_json(&body).map(JsonBody)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        text: String,
    }

    #[test]
    fn syntax_errors_are_400_and_type_errors_are_422() {
        assert_eq!(parse_json::<Body>(b"{\"text\":").unwrap_err().status, 400);
        assert_eq!(parse_json::<Body>(b"{\"text\":1}").unwrap_err().status, 422);
        assert_eq!(parse_json::<Body>(b"{}").unwrap_err().status, 422);
        assert!(parse_json::<Body>(b"{\"text\":\"ok\"}").is_ok());
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        let e = parse_json::<Body>(deep.as_bytes()).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code.as_ref()), (400, "json_too_deep"));
    }

    #[test]
    fn content_type_may_carry_a_charset() {
        let mut h = HeaderMap::new();
        assert_eq!(check_json_content_type(&h).unwrap_err().status, 415);
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(check_json_content_type(&h).is_ok());
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert_eq!(check_json_content_type(&h).unwrap_err().status, 415);
    }
}
