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
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: None,
            max_tokens: 256,
            stop: Vec::new(),
        }
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

    /// The next token id from one row of logits. Only what the filters
    /// need is sorted: top-k by selection, top-p over a growing prefix of the
    /// most likely tokens, plain temperature sampling not at all (sorting the
    /// whole vocabulary would cost milliseconds per token).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let argmax = || {
            logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i as u32)
        };
        if self.params.temperature <= 0.0 || logits.is_empty() {
            return argmax();
        }
        let inv_t = 1.0 / self.params.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // (id, unnormalised probability), most likely first where it matters.
        let mut p = logits.to_vec();
        maas_kernels::cpu::exp_scaled_inplace(&mut p, inv_t, max * inv_t);
        let mut cand: Vec<(u32, f32)> = p
            .into_iter()
            .enumerate()
            .map(|(i, e)| (i as u32, e))
            .collect();
        let by_p = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if self.params.top_k > 0 && self.params.top_k < cand.len() {
            cand.select_nth_unstable_by(self.params.top_k - 1, by_p);
            cand.truncate(self.params.top_k);
            cand.sort_unstable_by(by_p);
        }
        let total: f32 = cand.iter().map(|c| c.1).sum();
        let mut kept = total;
        if self.params.top_p < 1.0 {
            let want = self.params.top_p * total;
            // Sort a prefix large enough to hold the nucleus.
            let mut k = 64.min(cand.len());
            loop {
                if k < cand.len() {
                    cand.select_nth_unstable_by(k - 1, by_p);
                }
                cand[..k].sort_unstable_by(by_p);
                let prefix: f32 = cand[..k].iter().map(|c| c.1).sum();
                if prefix >= want || k == cand.len() {
                    break;
                }
                k = (k * 4).min(cand.len());
            }
            let mut acc = 0.0;
            let keep = cand.iter().position(|c| {
                acc += c.1;
                acc >= want
            });
            cand.truncate(keep.map_or(cand.len(), |i| i + 1));
            kept = cand.iter().map(|c| c.1).sum();
        }
        let mut r: f32 = self.rng.random::<f32>() * kept;
        for c in &cand {
            if r < c.1 {
                return c.0;
            }
            r -= c.1;
        }
        cand[cand.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_largest_logit() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            ..Default::default()
        });
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]), 1);
    }

    #[test]
    fn the_same_seed_gives_the_same_draws_and_filters_hold() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let p = SamplingParams {
            temperature: 0.9,
            seed: Some(42),
            ..Default::default()
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(p.clone());
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p);
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        let mut ranked: Vec<u32> = (0..100).collect();
        ranked.sort_by(|x, y| logits[*y as usize].total_cmp(&logits[*x as usize]));
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 3,
            seed: Some(1),
            ..Default::default()
        });
        assert!(
            (0..200).all(|_| ranked[..3].contains(&s.sample(&logits))),
            "top_k = 3 keeps the three best"
        );
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 1e-6,
            seed: Some(1),
            ..Default::default()
        });
        assert!(
            (0..50).all(|_| s.sample(&logits) == ranked[0]),
            "a tiny top_p keeps only the best"
        );
    }
}
