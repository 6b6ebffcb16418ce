//! Why an image was refused, with the HTTP status and code its kind calls for.

/// A refused image. Every variant is the client's doing; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Over `MAX_IMAGE_BYTES` or `MAX_IMAGE_PIXELS`, or a decoder would need more memory.
    #[error("{0}")]
    TooLarge(String),
    /// Not a format Keel decodes (or not an image at all).
    #[error("{0}")]
    Unsupported(String),
    /// A known format, but the file is empty, truncated, corrupt or zero-sized.
    #[error("{0}")]
    Invalid(String),
}

impl ImageError {
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge(_) => 413,
            Self::Unsupported(_) => 415,
            Self::Invalid(_) => 422,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "image_too_large",
            Self::Unsupported(_) => "unsupported_image_format",
            Self::Invalid(_) => "invalid_image",
        }
    }
}
