//! Bytes into upright RGB, with every size limit checked before the pixel buffer exists.
//!
//! The order matters: the byte count first, then the format from the magic bytes (not the
//! file name or the Content-Type, which clients get wrong), then the dimensions from the
//! header against `max_pixels`, and only then the decode, under the `image` crate's own
//! allocation cap as a second fence for formats whose header understates what they need.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::ImageError;

/// The formats Keel decodes, by the names the log line and errors use.
pub const ACCEPTED_FORMATS: &[&str] = &["jpeg", "png", "gif", "webp", "bmp", "tiff"];

/// Bounds on one upload, from `MAX_IMAGE_BYTES` and `MAX_IMAGE_PIXELS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    pub max_pixels: u64,
    pub max_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_pixels: 40_000_000,
            max_bytes: 20 * 1024 * 1024,
        }
    }
}

/// An upload decoded: 8-bit RGB, EXIF orientation applied, alpha flattened on white.
/// `width` and `height` are the upright image's.
#[derive(Debug)]
pub struct DecodedImage {
    pub rgb: RgbImage,
    pub format: &'static str,
    pub width: u32,
    pub height: u32,
    pub bytes: usize,
}

/// Decodes one untrusted upload. Never panics: a decoder panic becomes [`ImageError::Invalid`].
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Invalid("the image is empty (0 bytes)".into()));
    }
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooLarge(format!(
            "the image is {} bytes; the limit (MAX_IMAGE_BYTES) is {}",
            bytes.len(),
            limits.max_bytes
        )));
    }
    let (format, name) = sniff(bytes)?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // zune-jpeg fills a truncated scan with grey rather than failing; a half-received
        // photo would then be classified as if it were whole.
        return Err(ImageError::Invalid(
            "the jpeg file is truncated (no end-of-image marker after its last scan)".into(),
        ));
    }
    catch_unwind(AssertUnwindSafe(|| decode_as(bytes, format, name, limits))).unwrap_or_else(|_| {
        Err(ImageError::Invalid(format!(
            "the {name} decoder could not read this file"
        )))
    })
}

fn sniff(bytes: &[u8]) -> Result<(ImageFormat, &'static str), ImageError> {
    let accepted = ACCEPTED_FORMATS.join(", ");
    let format = image::guess_format(bytes).map_err(|_| {
        ImageError::Unsupported(format!(
            "the bytes are not an image Keel reads ({accepted})"
        ))
    })?;
    let name = match format {
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::Png => "png",
        ImageFormat::Gif => "gif",
        ImageFormat::WebP => "webp",
        ImageFormat::Bmp => "bmp",
        ImageFormat::Tiff => "tiff",
        other => {
            return Err(ImageError::Unsupported(format!(
                "{} images are not accepted; send one of {accepted}",
                other.extensions_str().first().unwrap_or(&"these")
            )))
        }
    };
    Ok((format, name))
}

/// Entropy-coded data never contains `FF D9` (a literal `FF` is stuffed as `FF 00`), so a
/// complete file has that marker after the start of its last scan (`FF DA`).
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let marker = |m: u8| bytes.windows(2).rposition(|w| w == [0xFF, m]);
    match (marker(0xDA), marker(0xD9)) {
        (Some(scan), Some(end)) => end > scan,
        _ => false,
    }
}

fn decode_as(
    bytes: &[u8],
    format: ImageFormat,
    name: &'static str,
    limits: &DecodeLimits,
) -> Result<DecodedImage, ImageError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut caps = Limits::default();
    // RGBA at 16 bits per channel is the largest buffer a decoder fills: 8 bytes a pixel.
    caps.max_alloc = Some(limits.max_pixels.saturating_mul(8).max(1 << 20));
    reader.limits(caps);
    let mut decoder = reader.into_decoder().map_err(|e| refused(e, name))?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(ImageError::Invalid(format!(
            "the {name} image is {width}x{height}: it has no pixels"
        )));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(ImageError::TooLarge(format!(
            "the {name} image is {width}x{height} = {pixels} pixels; the limit \
             (MAX_IMAGE_PIXELS) is {}",
            limits.max_pixels
        )));
    }
    // A broken EXIF block is not worth refusing the photo for: it is shown as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| refused(e, name))?;
    image.apply_orientation(orientation);
    let rgb = flatten_on_white(image);
    let (width, height) = rgb.dimensions();
    Ok(DecodedImage {
        rgb,
        format: name,
        width,
        height,
        bytes: bytes.len(),
    })
}

fn refused(error: image::ImageError, name: &str) -> ImageError {
    match error {
        image::ImageError::Limits(_) => ImageError::TooLarge(format!(
            "decoding this {name} image would need more memory than MAX_IMAGE_PIXELS allows"
        )),
        image::ImageError::Unsupported(e) => {
            ImageError::Unsupported(format!("this {name} variant is not supported: {e}"))
        }
        other => ImageError::Invalid(format!("the {name} file is corrupt or truncated: {other}")),
    }
}

/// Models see RGB; a transparent pixel is shown as it would be on a white page.
fn flatten_on_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let mut rgb = RgbImage::new(rgba.width(), rgba.height());
    for (out, p) in rgb.pixels_mut().zip(rgba.pixels()) {
        let alpha = u32::from(p[3]);
        for c in 0..3 {
            out[c] = ((u32::from(p[c]) * alpha + 255 * (255 - alpha) + 127) / 255) as u8;
        }
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, Rgb, Rgba};

    fn encode(image: DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7) as u8, (y * 5) as u8, 128]))
    }

    #[test]
    fn png_and_jpeg_decode_to_their_size_and_format() {
        let png = encode(gradient(40, 30).into(), ImageFormat::Png);
        let decoded = decode(&png, &DecodeLimits::default()).unwrap();
        assert_eq!(
            (decoded.width, decoded.height, decoded.format),
            (40, 30, "png")
        );
        assert_eq!(decoded.rgb, gradient(40, 30));
        assert_eq!(decoded.bytes, png.len());
        let jpeg = encode(gradient(40, 30).into(), ImageFormat::Jpeg);
        let decoded = decode(&jpeg, &DecodeLimits::default()).unwrap();
        assert_eq!(
            (decoded.width, decoded.height, decoded.format),
            (40, 30, "jpeg")
        );
    }

    #[test]
    fn limits_refuse_before_decoding() {
        let png = encode(gradient(100, 100).into(), ImageFormat::Png);
        let pixels = DecodeLimits {
            max_pixels: 9_999,
            ..DecodeLimits::default()
        };
        let e = decode(&png, &pixels).unwrap_err();
        assert_eq!((e.status(), e.code()), (413, "image_too_large"), "{e}");
        assert!(e.to_string().contains("100x100"), "{e}");
        let bytes = DecodeLimits {
            max_bytes: png.len() - 1,
            ..DecodeLimits::default()
        };
        assert_eq!(decode(&png, &bytes).unwrap_err().status(), 413);
    }

    #[test]
    fn non_images_empty_and_truncated_files_are_refused_with_their_reason() {
        let limits = DecodeLimits::default();
        let text = decode(b"holiday notes, not a photo", &limits).unwrap_err();
        assert_eq!(
            (text.status(), text.code()),
            (415, "unsupported_image_format")
        );
        let empty = decode(b"", &limits).unwrap_err();
        assert_eq!((empty.status(), empty.code()), (422, "invalid_image"));
        let jpeg = encode(gradient(64, 64).into(), ImageFormat::Jpeg);
        let half = decode(&jpeg[..jpeg.len() / 2], &limits).unwrap_err();
        assert_eq!(half.code(), "invalid_image", "{half}");
        let png = encode(gradient(64, 64).into(), ImageFormat::Png);
        let cut = decode(&png[..png.len() / 2], &limits).unwrap_err();
        assert_eq!(cut.code(), "invalid_image", "{cut}");
    }

    #[test]
    fn alpha_is_flattened_on_white() {
        let rgba = ImageBuffer::from_fn(2, 1, |x, _| {
            if x == 0 {
                Rgba([0u8, 0, 0, 0])
            } else {
                Rgba([10u8, 20, 30, 255])
            }
        });
        let png = encode(DynamicImage::ImageRgba8(rgba), ImageFormat::Png);
        let decoded = decode(&png, &DecodeLimits::default()).unwrap();
        assert_eq!(decoded.rgb.get_pixel(0, 0), &Rgb([255, 255, 255]));
        assert_eq!(decoded.rgb.get_pixel(1, 0), &Rgb([10, 20, 30]));
    }

    #[test]
    fn sixteen_bit_grayscale_becomes_rgb() {
        let gray = ImageBuffer::from_fn(3, 1, |x, _| Luma([(x as u16) * 30_000]));
        let png = encode(DynamicImage::ImageLuma16(gray), ImageFormat::Png);
        let decoded = decode(&png, &DecodeLimits::default()).unwrap();
        let row: Vec<_> = decoded.rgb.pixels().map(|p| p.0).collect();
        assert_eq!(row[0], [0, 0, 0]);
        assert_eq!(row[2][0], row[2][1]);
        assert!(row[2][0] > 200, "{row:?}");
    }
}
