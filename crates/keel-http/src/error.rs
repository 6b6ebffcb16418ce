//! The one error type of the HTTP edge: a status and `{"error": {"code", "message"}}`.

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keel_engine::EngineError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Keel's own codes are static; an upstream's error code is passed on as it came.
    pub code: Cow<'static, str>,
    pub message: String,
    /// Seconds after which a retry may succeed (429, 503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(code = %self.code, message = %self.message, "request failed");
        }
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut response = (self.status, body).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        use StatusCode as S;
        match e {
            EngineError::UnknownModel(_) | EngineError::NoModelForTask(_) => {
                Self::new(S::UNPROCESSABLE_ENTITY, "model_not_found", message)
            }
            EngineError::WrongTask { .. } => {
                Self::new(S::UNPROCESSABLE_ENTITY, "wrong_task", message)
            }
            EngineError::EmptyInput { .. } => {
                Self::new(S::UNPROCESSABLE_ENTITY, "empty_input", message)
            }
            EngineError::InputTooLong { .. } => {
                Self::new(S::UNPROCESSABLE_ENTITY, "input_too_long", message)
            }
            EngineError::Tokenization(_) => {
                Self::new(S::UNPROCESSABLE_ENTITY, "tokenization_failed", message)
            }
            EngineError::Image { error, .. } => Self::new(
                S::from_u16(error.status()).unwrap_or(S::UNPROCESSABLE_ENTITY),
                error.code(),
                message,
            ),
            EngineError::NotReady { .. } => {
                Self::new(S::SERVICE_UNAVAILABLE, "model_not_ready", message).retry_after(5)
            }
            EngineError::DeadlineExceeded => {
                Self::new(S::GATEWAY_TIMEOUT, "deadline_exceeded", message)
            }
            EngineError::QueueFull(_) | EngineError::QueueTooSlow { .. } => {
                Self::new(S::TOO_MANY_REQUESTS, "queue_full", message).retry_after(1)
            }
            // A panic in the tokenizer or the backend is the server's fault, whatever the
            // input; the message names the model.
            EngineError::Inference(_)
            | EngineError::WorkerStopped(_)
            | EngineError::BackendPanicked { .. }
            | EngineError::TokenizerPanicked { .. } => {
                Self::new(S::INTERNAL_SERVER_ERROR, "inference_failed", message)
            }
        }
    }
}

impl From<keel_rag::records::StoreError> for ApiError {
    fn from(e: keel_rag::records::StoreError) -> Self {
        use keel_rag::records::StoreError as E;
        let message = e.to_string();
        match e {
            E::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, "not_found", message),
            E::Invalid(_) => Self::invalid(message),
            E::Backend(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                message,
            )
            .retry_after(1),
        }
    }
}

impl From<keel_retrieval::RetrievalError> for ApiError {
    fn from(e: keel_retrieval::RetrievalError) -> Self {
        use keel_retrieval::RetrievalError as E;
        match e {
            E::Store(e) => e.into(),
            E::Engine(e) => e.into(),
            E::Invalid(m) => Self::invalid(m),
        }
    }
}

impl From<keel_rag::RagError> for ApiError {
    fn from(e: keel_rag::RagError) -> Self {
        Self::invalid(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_are_server_errors_that_name_the_model() {
        for e in [
            EngineError::BackendPanicked {
                model: "sentiment".into(),
            },
            EngineError::TokenizerPanicked {
                model: "sentiment".into(),
            },
        ] {
            let api = ApiError::from(e);
            assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(api.code, "inference_failed");
            assert!(api.message.contains("sentiment"), "{}", api.message);
        }
        let api = ApiError::from(EngineError::Tokenization("bad input".into()));
        assert_eq!(api.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
}
