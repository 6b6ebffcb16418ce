//! Weighted reciprocal rank fusion of ranked legs (dense, BM25).
//!
//! RRF needs no score calibration between legs, which is why it is the usual way to mix a
//! cosine similarity with a BM25 score: each leg contributes `weight / (k + rank)`. Scores are
//! divided by the best possible sum, so the fused score lies in (0, 1] and OpenAI's
//! `score_threshold` means the same whatever the weights.

use std::collections::HashMap;
use std::hash::Hash;

/// The constant of the original RRF paper (Cormack et al., 2009).
pub const RRF_K: f32 = 60.0;

/// One ranked list, best first, with its weight; a weight of 0 leaves the leg out.
pub struct Leg<'a, K> {
    pub hits: &'a [K],
    pub weight: f32,
}

/// A fused hit: its score and its 1-based rank in each leg, in the order the legs were given.
#[derive(Debug, Clone, PartialEq)]
pub struct Fused<K> {
    pub key: K,
    pub score: f32,
    pub ranks: Vec<Option<u32>>,
}

/// Fuses `legs`; ties go to the better rank in the first leg, then to the smaller key, so
/// the order is the same on every replica.
pub fn rrf<K: Copy + Eq + Hash + Ord>(legs: &[Leg<'_, K>], k: f32) -> Vec<Fused<K>> {
    let best: f32 = legs
        .iter()
        .filter(|l| l.weight > 0.0)
        .map(|l| l.weight / (k + 1.0))
        .sum();
    if best <= 0.0 {
        return Vec::new();
    }
    let mut by_key: HashMap<K, Fused<K>> = HashMap::new();
    for (i, leg) in legs.iter().enumerate() {
        if leg.weight <= 0.0 {
            continue;
        }
        for (rank, key) in leg.hits.iter().enumerate() {
            let entry = by_key.entry(*key).or_insert_with(|| Fused {
                key: *key,
                score: 0.0,
                ranks: vec![None; legs.len()],
            });
            // A key listed twice in one leg counts once, at its best rank.
            if entry.ranks[i].is_none() {
                entry.ranks[i] = Some(rank as u32 + 1);
                entry.score += leg.weight / (k + rank as f32 + 1.0);
            }
        }
    }
    let mut fused: Vec<Fused<K>> = by_key
        .into_values()
        .map(|mut f| {
            f.score /= best;
            f
        })
        .collect();
    fused.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| rank_order(a.ranks.first(), b.ranks.first()))
            .then_with(|| a.key.cmp(&b.key))
    });
    fused
}

fn rank_order(a: Option<&Option<u32>>, b: Option<&Option<u32>>) -> std::cmp::Ordering {
    let r = |x: Option<&Option<u32>>| x.copied().flatten().unwrap_or(u32::MAX);
    r(a).cmp(&r(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_between_legs_ranks_first_and_scores_are_normalised() {
        let dense = [1u64, 2, 3];
        let bm25 = [3u64, 4, 1];
        let fused = rrf(
            &[
                Leg {
                    hits: &dense,
                    weight: 1.0,
                },
                Leg {
                    hits: &bm25,
                    weight: 1.0,
                },
            ],
            RRF_K,
        );
        let keys: Vec<u64> = fused.iter().map(|f| f.key).collect();
        assert_eq!(keys, [1, 3, 2, 4]);
        assert_eq!(fused[0].ranks, [Some(1), Some(3)]);
        assert!(fused.iter().all(|f| f.score > 0.0 && f.score <= 1.0));
        let top = rrf(
            &[
                Leg {
                    hits: &dense,
                    weight: 1.0,
                },
                Leg {
                    hits: &dense,
                    weight: 1.0,
                },
            ],
            RRF_K,
        );
        assert!((top[0].score - 1.0).abs() < 1e-6);
    }

    #[test]
    fn a_zero_weight_drops_its_leg() {
        let dense = [1u64, 2];
        let bm25 = [9u64, 8];
        let fused = rrf(
            &[
                Leg {
                    hits: &dense,
                    weight: 0.0,
                },
                Leg {
                    hits: &bm25,
                    weight: 1.0,
                },
            ],
            RRF_K,
        );
        let keys: Vec<u64> = fused.iter().map(|f| f.key).collect();
        assert_eq!(keys, [9, 8]);
        assert!(rrf::<u64>(
            &[Leg {
                hits: &dense,
                weight: 0.0
            }],
            RRF_K
        )
        .is_empty());
    }

    #[test]
    fn ties_go_to_the_first_legs_rank_then_the_key() {
        let dense = [5u64, 6];
        let bm25 = [6u64, 5];
        let fused = rrf(
            &[
                Leg {
                    hits: &dense,
                    weight: 1.0,
                },
                Leg {
                    hits: &bm25,
                    weight: 1.0,
                },
            ],
            RRF_K,
        );
        assert_eq!(fused[0].key, 5);
        let only = [7u64];
        let other = [3u64];
        let fused = rrf(
            &[
                Leg {
                    hits: &only,
                    weight: 1.0,
                },
                Leg {
                    hits: &other,
                    weight: 1.0,
                },
            ],
            RRF_K,
        );
        assert_eq!(fused.iter().map(|f| f.key).collect::<Vec<_>>(), [7, 3]);
    }
}
