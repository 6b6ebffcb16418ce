//! The resize and crop against Pillow's, which the reference preprocessing
//! (`tests/fixtures/make_image_fixtures.py`) used to make the crops in `tests/fixtures/images/`.
//! The photos come from `scripts/fetch-test-images.sh` (run by `make test`).

use std::path::PathBuf;

use keel_vision::{decode, DecodeLimits, Preprocessing};
use serde_json::json;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn resize_and_crop_match_pillow_on_the_fixture_photos() {
    // Rescale 1, no normalisation: the tensor holds the cropped 8-bit pixels themselves.
    let pre = Preprocessing::from_json(&json!({
        "size": {"shortest_edge": 256}, "resample": 2, "crop_size": {"height": 224, "width": 224},
        "do_rescale": false, "do_normalize": false
    }))
    .unwrap();
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/images.json")).unwrap(),
    )
    .unwrap();
    for image in fixture["images"].as_array().unwrap() {
        let name = image["name"].as_str().unwrap();
        let photo = root().join(".cache/test-images").join(name);
        let bytes = std::fs::read(&photo).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run scripts/fetch-test-images.sh)",
                photo.display()
            )
        });
        let ours = pre.apply(&decode(&bytes, &DecodeLimits::default()).unwrap().rgb);
        let crop = std::fs::read(
            root()
                .join("tests/fixtures")
                .join(image["crop"].as_str().unwrap()),
        )
        .unwrap();
        let theirs = decode(&crop, &DecodeLimits::default()).unwrap().rgb;
        let plane = 224 * 224;
        let mut worst = 0f32;
        let mut differing = 0;
        for (x, y, p) in theirs.enumerate_pixels() {
            for c in 0..3 {
                let d = (ours[c * plane + (y * 224 + x) as usize] - f32::from(p[c])).abs();
                worst = worst.max(d);
                differing += usize::from(d > 0.0);
            }
        }
        println!(
            "{name}: {differing} of {} values differ, by at most {worst}",
            3 * plane
        );
        // Rounding ties aside the resize is Pillow's; the JPEG adds its decoder's own
        // differences (zune-jpeg against libjpeg-turbo's IDCT and chroma upsampling).
        let bound = if name.ends_with(".jpg") { 2.0 } else { 1.0 };
        assert!(
            worst <= bound,
            "{name}: a value differs from Pillow's by {worst}"
        );
        assert!(
            differing * 100 < 3 * plane,
            "{name}: {differing} values differ (over 1%)"
        );
    }
}
