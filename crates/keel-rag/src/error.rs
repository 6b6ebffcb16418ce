//! Why a file could not be ingested, or a request was refused.

/// A file that cannot become chunks; the message says why, for the file's `last_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// Not a kind of file Keel reads (binary, an archive, an unknown extension).
    #[error("{0}")]
    Unsupported(String),
    /// A kind Keel reads, but this file has no usable text (empty, undecodable).
    #[error("{0}")]
    Invalid(String),
}

impl ExtractError {
    /// The code OpenAI's `last_error` carries for this kind.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unsupported(_) => "unsupported_file",
            Self::Invalid(_) => "invalid_file",
        }
    }
}

/// A request this crate refuses, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RagError {
    /// A request field is wrong; the message starts with its path.
    #[error("{0}")]
    Invalid(String),
    /// The tokenizer could not read the text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}
