//! Weight quantization for the int8 graph: symmetric, per output channel.
//!
//! Each column of a `[in, out]` weight matrix (one output feature) gets its own scale, so a
//! few large weights in one feature do not crush the resolution of every other feature: on
//! all-MiniLM-L6-v2 one scale per tensor gives a cosine of about 0.92 against fp32, one per
//! column about 0.99. Zero points are 0 (symmetric), which ONNX Runtime's integer kernels
//! handle without a correction term. Activations are quantized at run time by the
//! `DynamicQuantizeMatMul` node that consumes these weights.

/// A `[rows, cols]` matrix as int8 with one scale per column: `w[r][c] ≈ q[r][c] * scales[c]`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedMatrix {
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
}

/// The widest weight range this CPU's integer kernels add up exactly.
///
/// ONNX Runtime multiplies u8 activations by s8 weights. With VNNI the products accumulate
/// in 32 bits; without it (AVX2, or AVX-512 before VNNI) the x86 kernels use `vpmaddubsw`,
/// whose sum of two products saturates at 32767: 2 x 255 x 127 overflows, 2 x 255 x 63 does
/// not. There, weights get 7 bits (what ONNX Runtime's own quantizer calls `reduce_range`);
/// measured on an AVX2-only AMD EPYC, full-range weights were off by up to 0.68 on a
/// random-weight model, against under 0.25 with VNNI.
pub fn weight_limit() -> i8 {
    #[cfg(target_arch = "x86_64")]
    {
        let vnni = std::arch::is_x86_feature_detected!("avx512vnni")
            || std::arch::is_x86_feature_detected!("avxvnni");
        if !vnni {
            return 63;
        }
    }
    127
}

/// Quantizes a row-major `[rows, cols]` matrix per column, to the symmetric range
/// [-limit, limit] (-128 is never used, so that negating a value cannot overflow and the range
/// stays symmetric; `limit` is at most 127, see [`weight_limit`]).
pub fn quantize_per_column(
    weights: &[f32],
    rows: usize,
    cols: usize,
    limit: i8,
) -> QuantizedMatrix {
    let limit = f32::from(limit.clamp(1, 127));
    assert_eq!(weights.len(), rows * cols, "matrix is not {rows}x{cols}");
    let mut max_abs = vec![0f32; cols];
    for row in weights.chunks_exact(cols) {
        for (m, &w) in max_abs.iter_mut().zip(row) {
            *m = m.max(w.abs());
        }
    }
    // An all-zero column quantizes to zeros with any scale; 1 keeps the division finite.
    let scales: Vec<f32> = max_abs
        .iter()
        .map(|&m| if m > 0.0 { m / limit } else { 1.0 })
        .collect();
    let inverse: Vec<f32> = scales.iter().map(|s| 1.0 / s).collect();
    let values = weights
        .chunks_exact(cols)
        .flat_map(|row| {
            row.iter()
                .zip(&inverse)
                .map(|(&w, &inv)| (w * inv).round().clamp(-limit, limit) as i8)
        })
        .collect();
    QuantizedMatrix { values, scales }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_column_uses_its_own_range() {
        // Column 0 spans ±1, column 1 spans ±100: a shared scale would round column 0 to 0/±1.
        let w = [1.0, 100.0, -0.5, -50.0, 0.25, 25.0];
        let q = quantize_per_column(&w, 3, 2, 127);
        assert_eq!(q.scales.len(), 2);
        assert!((q.scales[0] - 1.0 / 127.0).abs() < 1e-7);
        assert!((q.scales[1] - 100.0 / 127.0).abs() < 1e-5);
        assert_eq!(q.values, [127, 127, -64, -64, 32, 32]);
        for (i, &orig) in w.iter().enumerate() {
            let back = q.values[i] as f32 * q.scales[i % 2];
            assert!((back - orig).abs() <= q.scales[i % 2] / 2.0 + 1e-6);
        }
    }

    #[test]
    fn a_reduced_range_keeps_every_value_within_it() {
        let w = [1.0, -1.0, 0.25, 0.01];
        let q = quantize_per_column(&w, 4, 1, 63);
        assert_eq!(q.values, [63, -63, 16, 1]);
        assert!((q.scales[0] - 1.0 / 63.0).abs() < 1e-7);
    }

    #[test]
    fn zero_columns_stay_zero() {
        let q = quantize_per_column(&[0.0, 1.0, 0.0, -1.0], 2, 2, 127);
        assert_eq!(q.scales[0], 1.0);
        assert_eq!(q.values, [0, 127, 0, -127]);
    }
}
