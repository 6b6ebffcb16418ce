//! Hybrid search: the query's embedding against the store's vectors, its terms against the
//! store's BM25 index, each leg filtered inside, fused by weighted reciprocal rank.

use std::time::{Duration, Instant};

use keel_rag::analyze::analyze_query;
use keel_rag::fuse::{rrf, Leg, RRF_K};
use keel_rag::records::ChunkView;
use keel_rag::Filter;

use crate::ingest::normalized;
use crate::{Retrieval, RetrievalError};

/// Candidates each leg contributes per query before fusion.
const LEG_DEPTH: usize = 50;

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub store_id: String,
    pub queries: Vec<String>,
    pub max_results: usize,
    pub filter: Option<Filter>,
    /// Fused scores (0..=1) below this are dropped.
    pub score_threshold: f32,
    /// Leg weights; 0 leaves a leg out.
    pub dense_weight: f32,
    pub bm25_weight: f32,
}

/// A fused hit, with its rank in each leg for the first query (1-based; None: not found
/// by that leg).
#[derive(Debug, Clone)]
pub struct Hit {
    pub chunk: ChunkView,
    pub score: f32,
    pub dense_rank: Option<u32>,
    pub bm25_rank: Option<u32>,
}

impl Retrieval {
    pub async fn search(
        &self,
        owner: &str,
        req: SearchRequest,
    ) -> Result<Vec<Hit>, RetrievalError> {
        let started = Instant::now();
        let (o, id) = (owner.to_owned(), req.store_id.clone());
        self.with_store(move |s| s.check_store(&o, &id)).await?;

        // The BM25 leg needs no embedding: it runs while the query is embedded and scanned.
        let (store_id, filter, queries) = (
            req.store_id.clone(),
            req.filter.clone(),
            req.queries.clone(),
        );
        let bm25_leg = async {
            if req.bm25_weight == 0.0 {
                return Ok((vec![Vec::new(); queries.len()], Duration::ZERO));
            }
            self.with_store(move |s| {
                let t = Instant::now();
                let hits = queries
                    .iter()
                    .map(|q| s.bm25(&store_id, &analyze_query(q), LEG_DEPTH, filter.as_ref()))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((hits, t.elapsed()))
            })
            .await
        };
        let (store_id, filter) = (req.store_id.clone(), req.filter.clone());
        let dense_leg = async {
            if req.dense_weight == 0.0 {
                return Ok((Vec::new(), Duration::ZERO, Duration::ZERO));
            }
            let t = Instant::now();
            let model = self.model()?;
            let deadline = Instant::now() + Duration::from_secs(30);
            let inference = model.embed(req.queries.clone(), deadline).await?;
            let vectors: Vec<Vec<f32>> = inference.outputs.into_iter().map(normalized).collect();
            let embed_ms = t.elapsed();
            let (hits, dense_ms) = self
                .with_store(move |s| {
                    let t = Instant::now();
                    let hits = vectors
                        .iter()
                        .map(|q| s.dense(&store_id, q, LEG_DEPTH, filter.as_ref()))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((hits, t.elapsed()))
                })
                .await?;
            Ok::<_, RetrievalError>((hits, dense_ms, embed_ms))
        };
        let (bm25, dense) = tokio::join!(bm25_leg, dense_leg);
        let (bm25, bm25_ms) = bm25?;
        let (dense, dense_ms, embed_ms) = dense?;

        let dense_ids: Vec<Vec<i64>> = dense
            .iter()
            .map(|l| l.iter().map(|h| h.0).collect())
            .collect();
        let bm25_ids: Vec<Vec<i64>> = bm25
            .iter()
            .map(|l| l.iter().map(|h| h.0).collect())
            .collect();
        // Legs in order: dense then BM25 for the first query, then the others' legs.
        let mut legs = Vec::new();
        for (i, bm25_hits) in bm25_ids.iter().enumerate() {
            // With the dense weight at 0 no query was embedded: an empty, weightless leg.
            let (hits, weight) = match dense_ids.get(i) {
                Some(ids) => (ids.as_slice(), req.dense_weight),
                None => (&[][..], 0.0),
            };
            legs.push(Leg { hits, weight });
            legs.push(Leg {
                hits: bm25_hits,
                weight: req.bm25_weight,
            });
        }
        let fused: Vec<_> = rrf(&legs, RRF_K)
            .into_iter()
            .filter(|f| f.score >= req.score_threshold)
            .take(req.max_results)
            .collect();
        let ids: Vec<i64> = fused.iter().map(|f| f.key).collect();
        let views = self.with_store(move |s| s.chunks(&ids)).await?;
        let hits: Vec<Hit> = fused
            .into_iter()
            .filter_map(|f| {
                let chunk = views.iter().find(|v| v.id == f.key)?.clone();
                Some(Hit {
                    chunk,
                    score: f.score,
                    dense_rank: f.ranks[0],
                    bm25_rank: f.ranks[1],
                })
            })
            .collect();
        let seconds = |d: Duration| d.as_secs_f64();
        metrics::histogram!("keel_rag_search_seconds", "leg" => "embed").record(seconds(embed_ms));
        metrics::histogram!("keel_rag_search_seconds", "leg" => "dense").record(seconds(dense_ms));
        metrics::histogram!("keel_rag_search_seconds", "leg" => "bm25").record(seconds(bm25_ms));
        metrics::histogram!("keel_rag_search_seconds", "leg" => "total")
            .record(seconds(started.elapsed()));
        tracing::info!(target: "keel::rag", store = %req.store_id, queries = req.queries.len(),
            query_chars = req.queries.iter().map(|q| q.chars().count()).sum::<usize>(),
            filtered = req.filter.is_some(), hits = hits.len(),
            embed_ms = embed_ms.as_millis() as u64, dense_ms = dense_ms.as_secs_f64() * 1e3,
            bm25_ms = bm25_ms.as_secs_f64() * 1e3, total_ms = started.elapsed().as_millis() as u64, "search");
        Ok(hits)
    }
}
