//! An image into the tensor its model was trained on, as `preprocessor_config.json` says.
//!
//! Hugging Face image processors (what `optimum` exports next to `model.onnx`) all follow one
//! recipe: resize (the shorter side to a length, or to an exact size), centre crop, rescale,
//! normalise per channel, channels first. The resize filters are Pillow's, which
//! `fast_image_resize` reimplements (convolution with the filter's support widened by the
//! scale factor, so downscaling is antialiased as in training).

use std::path::Path;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resize {
    /// The shorter side to this length, the longer side in proportion (truncated, as HF does).
    ShortestEdge(u32),
    Exact {
        height: u32,
        width: u32,
    },
}

/// How one model's inputs are made; built once at load from its `preprocessor_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessing {
    resize: Option<Resize>,
    /// Pillow's resample code: 0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming.
    resample: u8,
    crop: Option<(u32, u32)>,
    rescale: f32,
    mean: [f32; 3],
    std: [f32; 3],
}

impl Preprocessing {
    pub fn from_hf_config(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let config: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        Self::from_json(&config)
    }

    pub fn from_json(config: &Value) -> Result<Self, String> {
        let flag =
            |key: &str, default: bool| config.get(key).and_then(Value::as_bool).unwrap_or(default);
        let size = config.get("size").filter(|v| !v.is_null());
        let crop_pct = config.get("crop_pct").and_then(Value::as_f64);
        let mut crop = if flag("do_center_crop", config.get("crop_size").is_some()) {
            let size = config
                .get("crop_size")
                .ok_or("do_center_crop is set but crop_size is missing")?;
            Some(height_width(size, "crop_size")?)
        } else {
            None
        };
        let resize = if !flag("do_resize", true) {
            None
        } else {
            let size = size.ok_or("do_resize is set but size is missing")?;
            match size.get("shortest_edge").and_then(Value::as_u64) {
                // ConvNeXt's processor: below 384 it resizes to edge / crop_pct and crops
                // back to the edge; at 384 and above it warps to a square.
                Some(edge) if crop_pct.is_some() && crop.is_none() => {
                    let edge = positive(edge, "size.shortest_edge")?;
                    if edge < 384 {
                        crop = Some((edge, edge));
                        let scaled = f64::from(edge) / crop_pct.unwrap_or(1.0);
                        Some(Resize::ShortestEdge(scaled as u32))
                    } else {
                        Some(Resize::Exact {
                            height: edge,
                            width: edge,
                        })
                    }
                }
                Some(edge) => Some(Resize::ShortestEdge(positive(edge, "size.shortest_edge")?)),
                None => {
                    let (height, width) = height_width(size, "size")?;
                    Some(Resize::Exact { height, width })
                }
            }
        };
        let resample = config.get("resample").and_then(Value::as_u64).unwrap_or(2);
        if resample > 5 {
            return Err(format!(
                "resample {resample} is not one of Pillow's filters 0-5"
            ));
        }
        let rescale = if flag("do_rescale", true) {
            config
                .get("rescale_factor")
                .and_then(Value::as_f64)
                .unwrap_or(1.0 / 255.0) as f32
        } else {
            1.0
        };
        let (mean, std) = if flag("do_normalize", true) {
            (
                channels(config, "image_mean")?,
                channels(config, "image_std")?,
            )
        } else {
            ([0.0; 3], [1.0; 3])
        };
        if std.contains(&0.0) {
            return Err("image_std has a zero".into());
        }
        let pre = Self {
            resize,
            resample: resample as u8,
            crop,
            rescale,
            mean,
            std,
        };
        if pre.fixed_size().is_none() {
            return Err(
                "the model's input size is not fixed: set crop_size, or size as \
                        height and width"
                    .into(),
            );
        }
        Ok(pre)
    }

    fn fixed_size(&self) -> Option<(u32, u32)> {
        match (self.crop, self.resize) {
            (Some(crop), _) => Some(crop),
            (None, Some(Resize::Exact { height, width })) => Some((height, width)),
            _ => None,
        }
    }

    /// The tensor's (height, width).
    pub fn input_size(&self) -> (u32, u32) {
        self.fixed_size()
            .expect("from_json refuses configs without a fixed size")
    }

    /// The model input for one image: `3 x height x width` floats, channels first.
    pub fn apply(&self, image: &RgbImage) -> Vec<f32> {
        let (w, h) = self
            .resized_size(image.width(), image.height())
            .unwrap_or(image.dimensions());
        let (ch, cw) = self.crop.unwrap_or((h, w));
        // Floor division, as HF's centre crop does; a crop larger than the image pads with 0.
        let top = (i64::from(h) - i64::from(ch)).div_euclid(2);
        let left = (i64::from(w) - i64::from(cw)).div_euclid(2);
        let resized;
        let (source, (sw, sh), top, left) = if (w, h) == image.dimensions() {
            (image.as_raw().as_slice(), (w, h), top, left)
        } else if top >= 0 && left >= 0 {
            // Only the window the crop keeps is resized: the same pixels as resizing the
            // whole image and cropping, for about half the work.
            resized = self.resize(image, (w, h), (left as u32, top as u32, cw, ch));
            (resized.as_slice(), (cw, ch), 0, 0)
        } else {
            resized = self.resize(image, (w, h), (0, 0, w, h));
            (resized.as_slice(), (w, h), top, left)
        };
        let (w, h) = (sw, sh);
        let lut: Vec<[f32; 256]> = (0..3)
            .map(|c| {
                let mut t = [0f32; 256];
                for (v, out) in t.iter_mut().enumerate() {
                    *out = (v as f32 * self.rescale - self.mean[c]) / self.std[c];
                }
                t
            })
            .collect();
        let plane = (ch * cw) as usize;
        let mut out = vec![0f32; 3 * plane];
        for y in 0..ch as i64 {
            let sy = y + top;
            for x in 0..cw as i64 {
                let sx = x + left;
                let inside = (0..i64::from(h)).contains(&sy) && (0..i64::from(w)).contains(&sx);
                let at = (y * i64::from(cw) + x) as usize;
                for c in 0..3 {
                    let value = if inside {
                        source[((sy * i64::from(w) + sx) * 3) as usize + c]
                    } else {
                        0
                    };
                    out[c * plane + at] = lut[c][value as usize];
                }
            }
        }
        out
    }

    fn resized_size(&self, w: u32, h: u32) -> Option<(u32, u32)> {
        match self.resize? {
            Resize::Exact { height, width } => Some((width, height)),
            Resize::ShortestEdge(edge) => {
                let (short, long) = (w.min(h), w.max(h));
                let scaled = (u64::from(edge) * u64::from(long) / u64::from(short)).max(1) as u32;
                Some(if w <= h {
                    (edge, scaled)
                } else {
                    (scaled, edge)
                })
            }
        }
    }

    /// The `window` (left, top, width, height) of `image` resized to `size`.
    fn resize(&self, image: &RgbImage, size: (u32, u32), window: (u32, u32, u32, u32)) -> Vec<u8> {
        let (iw, ih) = image.dimensions();
        let (sx, sy) = (
            f64::from(iw) / f64::from(size.0),
            f64::from(ih) / f64::from(size.1),
        );
        let (left, top, ww, wh) = window;
        let (left, top) = (f64::from(left) * sx, f64::from(top) * sy);
        let filter = match self.resample {
            0 => {
                let options = ResizeOptions::new().resize_alg(ResizeAlg::Nearest).crop(
                    left,
                    top,
                    f64::from(ww) * sx,
                    f64::from(wh) * sy,
                );
                return nearest(image, (ww, wh), &options);
            }
            1 => FilterType::Lanczos3,
            3 => FilterType::CatmullRom,
            4 => FilterType::Box,
            5 => FilterType::Hamming,
            _ => FilterType::Bilinear,
        };
        // Pillow resizes rows first and rounds to 8 bits before the columns. The 8-bit path of
        // fast_image_resize keeps 15-bit coefficients (Pillow-SIMD's) and is off by one on a
        // fifth of the values, which moves close calls between classes; each pass here runs in
        // f32 and is rounded as Pillow rounds, which matches Pillow's output.
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter));
        let source: Vec<f32> = image.as_raw().iter().map(|&v| f32::from(v)).collect();
        let rows = options.crop(left, 0.0, f64::from(ww) * sx, f64::from(ih));
        let rows = convolve(&source, (iw, ih), (ww, ih), &rows);
        let columns = options.crop(0.0, top, f64::from(ww), f64::from(wh) * sy);
        let both = convolve(&rows, (ww, ih), (ww, wh), &columns);
        both.iter().map(|&v| v as u8).collect()
    }
}

/// One resize pass in f32, rounded half up and clamped to 0..=255 as Pillow's 8-bit passes are.
fn convolve(source: &[f32], from: (u32, u32), to: (u32, u32), options: &ResizeOptions) -> Vec<f32> {
    let mut out = vec![0f32; (to.0 * to.1 * 3) as usize];
    // Both buffers are f32 x 3 of the sizes given, so neither view nor resize can fail.
    let src = ImageRef::new(
        from.0,
        from.1,
        bytemuck::cast_slice(source),
        PixelType::F32x3,
    )
    .expect("an f32 buffer of w x h x 3");
    let mut dst = Image::from_slice_u8(
        to.0,
        to.1,
        bytemuck::cast_slice_mut(&mut out),
        PixelType::F32x3,
    )
    .expect("an f32 buffer of w x h x 3");
    Resizer::new()
        .resize(&src, &mut dst, options)
        .expect("same pixel type, non-zero sizes");
    for v in &mut out {
        *v = (*v + 0.5).floor().clamp(0.0, 255.0);
    }
    out
}

fn nearest(image: &RgbImage, size: (u32, u32), options: &ResizeOptions) -> Vec<u8> {
    let src = ImageRef::new(
        image.width(),
        image.height(),
        image.as_raw(),
        PixelType::U8x3,
    )
    .expect("an RgbImage buffer is w x h x 3 bytes");
    let mut dst = Image::new(size.0, size.1, PixelType::U8x3);
    Resizer::new()
        .resize(&src, &mut dst, options)
        .expect("same pixel type, non-zero sizes");
    dst.into_vec()
}

fn positive(v: u64, what: &str) -> Result<u32, String> {
    u32::try_from(v)
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("{what} must be a positive size, not {v}"))
}

/// A size as HF writes it: `{"height", "width"}`, `{"shortest_edge"}` (square) or a number.
fn height_width(v: &Value, what: &str) -> Result<(u32, u32), String> {
    if let Some(n) = v.as_u64() {
        let n = positive(n, what)?;
        return Ok((n, n));
    }
    let get = |k: &str| v.get(k).and_then(Value::as_u64);
    match (get("height"), get("width"), get("shortest_edge")) {
        (Some(h), Some(w), _) => Ok((positive(h, what)?, positive(w, what)?)),
        (_, _, Some(n)) => {
            let n = positive(n, what)?;
            Ok((n, n))
        }
        _ => Err(format!("{what} needs height and width: {v}")),
    }
}

fn channels(config: &Value, key: &str) -> Result<[f32; 3], String> {
    let v = config
        .get(key)
        .ok_or_else(|| format!("do_normalize is set but {key} is missing"))?;
    if let Some(x) = v.as_f64() {
        return Ok([x as f32; 3]);
    }
    let list: Vec<f32> = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_f64)
                .map(|x| x as f32)
                .collect()
        })
        .unwrap_or_default();
    <[f32; 3]>::try_from(list).map_err(|_| format!("{key} needs three numbers: {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;
    use serde_json::json;

    fn lite() -> Value {
        json!({
            "do_resize": true, "size": {"shortest_edge": 256}, "resample": 2,
            "do_center_crop": true, "crop_size": {"height": 224, "width": 224},
            "do_rescale": true, "rescale_factor": 1.0 / 255.0, "do_normalize": true,
            "image_mean": [127.0 / 255.0, 127.0 / 255.0, 127.0 / 255.0],
            "image_std": [128.0 / 255.0, 128.0 / 255.0, 128.0 / 255.0]
        })
    }

    #[test]
    fn efficientnet_lite_config_gives_224_and_x_minus_127_over_128() {
        let pre = Preprocessing::from_json(&lite()).unwrap();
        assert_eq!(pre.input_size(), (224, 224));
        let flat = RgbImage::from_pixel(640, 480, Rgb([255, 127, 0]));
        let out = pre.apply(&flat);
        assert_eq!(out.len(), 3 * 224 * 224);
        let plane = 224 * 224;
        for (c, want) in [(0, 1.0f32), (1, 0.0), (2, -127.0 / 128.0)] {
            let worst = out[c * plane..(c + 1) * plane]
                .iter()
                .map(|v| (v - want).abs())
                .fold(0.0, f32::max);
            assert!(worst < 1e-5, "channel {c}: {worst}");
        }
    }

    #[test]
    fn shorter_side_scales_and_the_crop_is_centred() {
        let pre = Preprocessing::from_json(&lite()).unwrap();
        assert_eq!(pre.resized_size(640, 480), Some((341, 256)));
        assert_eq!(pre.resized_size(480, 640), Some((256, 341)));
        // Nearest and no resize: a column index image shows where the crop starts.
        let mut config = lite();
        config["do_resize"] = json!(false);
        config["do_normalize"] = json!(false);
        config["do_rescale"] = json!(false);
        let pre = Preprocessing::from_json(&config).unwrap();
        let image = RgbImage::from_fn(250, 230, |x, y| Rgb([x as u8, y as u8, 0]));
        let out = pre.apply(&image);
        assert_eq!(out[0], 13.0, "left = (250 - 224) / 2");
        assert_eq!(out[224 * 224], 3.0, "top = (230 - 224) / 2");
    }

    #[test]
    fn exact_size_and_scalar_mean_are_read_and_bad_configs_refused() {
        let vit = json!({"size": {"height": 32, "width": 48}, "image_mean": 0.5, "image_std": 0.5});
        let pre = Preprocessing::from_json(&vit).unwrap();
        assert_eq!(pre.input_size(), (32, 48));
        let out = pre.apply(&RgbImage::from_pixel(100, 90, Rgb([255, 255, 255])));
        assert_eq!(out.len(), 3 * 32 * 48);
        assert!(out.iter().all(|v| (v - 1.0).abs() < 1e-5));
        let convnext = json!({"size": {"shortest_edge": 224}, "crop_pct": 0.875,
                              "image_mean": [0.4, 0.4, 0.4], "image_std": [0.2, 0.2, 0.2]});
        assert_eq!(
            Preprocessing::from_json(&convnext).unwrap().input_size(),
            (224, 224)
        );
        for bad in [
            json!({"size": {"shortest_edge": 256}, "image_mean": 0.5, "image_std": 0.5}),
            json!({"size": 224, "image_mean": [0.5, 0.5], "image_std": 0.5}),
            json!({"size": 224, "resample": 9, "image_mean": 0.5, "image_std": 0.5}),
            json!({"size": 0, "image_mean": 0.5, "image_std": 0.5}),
            json!({"size": 224}),
        ] {
            assert!(Preprocessing::from_json(&bad).is_err(), "{bad}");
        }
    }
}
