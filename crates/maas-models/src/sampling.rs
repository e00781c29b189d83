//! Choosing the next token: greedy, or temperature with top-k and top-p
//! (nucleus) filtering, from a seeded generator so that the same seed gives
//! the same output.

use rand::{Rng, SeedableRng};

#[derive(Debug, Clone)]
pub struct SamplingParams {
    /// 0 is greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 is no limit.
    pub top_k: usize,
    pub seed: Option<u64>,
    pub max_tokens: usize,
    pub stop: Vec<String>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { temperature: 1.0, top_p: 1.0, top_k: 0, seed: None, max_tokens: 256, stop: Vec::new() }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: rand::rngs::StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => rand::rngs::StdRng::seed_from_u64(s),
            None => rand::rngs::StdRng::from_os_rng(),
        };
        Self { params, rng }
    }

    /// The next token id from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let argmax = || logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32);
        if self.params.temperature <= 0.0 {
            return argmax();
        }
        let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l / self.params.temperature)).collect();
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if self.params.top_k > 0 {
            cand.truncate(self.params.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|c| (c.1 - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            let keep = probs.iter().position(|p| {
                acc += p;
                acc >= self.params.top_p
            });
            let keep = keep.map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            cand.truncate(keep);
            let total: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let mut r: f32 = self.rng.random();
        for (c, p) in cand.iter().zip(&probs) {
            if r < *p {
                return c.0;
            }
            r -= p;
        }
        cand[cand.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest_logit() {
        let mut s = Sampler::new(SamplingParams { temperature: 0.0, ..Default::default() });
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]), 1);
    }

    #[test]
    fn the_same_seed_gives_the_same_draws_and_filters_hold() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let p = SamplingParams { temperature: 0.9, seed: Some(42), ..Default::default() };
        let a: Vec<u32> = { let mut s = Sampler::new(p.clone()); (0..50).map(|_| s.sample(&logits)).collect() };
        let b: Vec<u32> = { let mut s = Sampler::new(p); (0..50).map(|_| s.sample(&logits)).collect() };
        assert_eq!(a, b);
        let mut ranked: Vec<u32> = (0..100).collect();
        ranked.sort_by(|x, y| logits[*y as usize].total_cmp(&logits[*x as usize]));
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 3, seed: Some(1), ..Default::default() });
        assert!((0..200).all(|_| ranked[..3].contains(&s.sample(&logits))), "top_k = 3 keeps the three best");
        let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_p: 1e-6, seed: Some(1), ..Default::default() });
        assert!((0..50).all(|_| s.sample(&logits) == ranked[0]), "a tiny top_p keeps only the best");
    }
}
