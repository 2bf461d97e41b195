//! The learning-rate schedule of pre-training and fine-tuning: linear warmup, then a cosine
//! (BEiT's classification recipes) or a linear decay (mmsegmentation's `poly` with power 1,
//! BEiT's segmentation recipe).

use serde::{Deserialize, Serialize};

/// How the learning rate falls after the warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrDecay {
    #[default]
    Cosine,
    /// A straight line to the minimum (`poly` with power 1).
    Linear,
}

/// Linear warmup from 0 to `base` over `warmup` steps, then the decay to `min`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub base: f64,
    pub min: f64,
    pub warmup: u64,
    pub total: u64,
    pub decay: LrDecay,
}

impl LrSchedule {
    /// Learning rate of update `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup {
            return self.base * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((step - self.warmup) as f64 / span as f64).min(1.0);
        let left = match self.decay {
            LrDecay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            LrDecay::Linear => 1.0 - progress,
        };
        self.min + (self.base - self.min) * left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_min() {
        let s = LrSchedule {
            base: 1.0,
            min: 0.01,
            warmup: 10,
            total: 110,
            decay: LrDecay::Cosine,
        };
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.505).abs() < 1e-12);
        assert!((s.lr(110) - 0.01).abs() < 1e-12);
        assert!((1..110).all(|t| t < 10 || s.lr(t) <= s.lr(t - 1)));
        let poly = LrSchedule {
            decay: LrDecay::Linear,
            ..s
        };
        assert!((poly.lr(60) - 0.505).abs() < 1e-12);
        assert!((poly.lr(35) - (0.01 + 0.99 * 0.75)).abs() < 1e-12);
        assert!((poly.lr(110) - 0.01).abs() < 1e-12);
    }
}
