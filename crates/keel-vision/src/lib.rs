//! Untrusted image bytes into model-ready tensors.
//!
//! [`decode`] turns an upload into upright 8-bit RGB, refusing anything too large *before*
//! a pixel buffer exists (the header's size against [`DecodeLimits`], and the decoder's own
//! allocation cap as a second fence). [`Preprocessing`] then does what the model's
//! `preprocessor_config.json` says: resize, centre crop, rescale, normalise, channels first.
//! Nothing here is async or shared: callers run it on a blocking pool.

mod decode;
mod error;
mod preprocess;

pub use decode::{decode, DecodeLimits, DecodedImage, ACCEPTED_FORMATS};
pub use error::ImageError;
pub use image::RgbImage;
pub use preprocess::Preprocessing;
