//! A request's sampling parameters as a llama.cpp sampler chain, in the order llama.cpp's
//! own server applies them: biases and penalties first, then the truncations (top-k, top-p,
//! min-p), temperature, and the seeded draw; temperature 0 is a plain argmax.

use keel_engine::generate::Sampling;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use llama_cpp_2::token::LlamaToken;

pub fn chain(sampling: &Sampling, n_vocab: i32, penalty_window: i32) -> LlamaSampler {
    let mut parts = Vec::new();
    if !sampling.logit_bias.is_empty() {
        let biases: Vec<LlamaLogitBias> = sampling
            .logit_bias
            .iter()
            .map(|&(token, bias)| LlamaLogitBias::new(LlamaToken(token), bias))
            .collect();
        parts.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }
    if sampling.presence_penalty != 0.0 || sampling.frequency_penalty != 0.0 {
        parts.push(LlamaSampler::penalties(
            n_vocab,
            penalty_window,
            1.0,
            sampling.frequency_penalty,
            sampling.presence_penalty,
        ));
    }
    if sampling.temperature <= 0.0 {
        parts.push(LlamaSampler::greedy());
    } else {
        if sampling.top_k > 0 {
            parts.push(LlamaSampler::top_k(sampling.top_k));
        }
        if sampling.top_p < 1.0 {
            parts.push(LlamaSampler::top_p(sampling.top_p, 1));
        }
        if sampling.min_p > 0.0 {
            parts.push(LlamaSampler::min_p(sampling.min_p, 1));
        }
        parts.push(LlamaSampler::temp(sampling.temperature));
        let seed = sampling.seed.unwrap_or_else(rand::random);
        parts.push(LlamaSampler::dist(seed));
    }
    LlamaSampler::chain_simple(parts)
}
