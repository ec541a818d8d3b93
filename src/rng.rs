//! A small deterministic PRNG: xoshiro256** seeded through SplitMix64.
//!
//! Why not the `rand` crate: a training checkpoint must save the generator and
//! resume it bit for bit, across crate versions. Here the whole state is four
//! `u64`s ([`Rng::get_state`] / [`Rng::set_state`]) and the algorithm is
//! fixed by this file, with a reference vector in the tests.
//!
//! Independent streams (per epoch, per sample) come from [`Rng::derive`],
//! which hashes a seed and a list of keys into a fresh state. This is what
//! makes data order and augmentation independent of thread scheduling and of
//! where a run was resumed.

use crate::{bail, Result};

/// Names of the random streams of a training run, for [`Rng::derive`]
/// (ASCII "perm" and "augm"): the order of epoch `e` is drawn from
/// `derive(seed, [PERMUTATION, e])`, the augmentation of sample `i` in epoch
/// `e` from `derive(seed, [AUGMENT, e, i])`.
pub mod stream {
    pub const PERMUTATION: u64 = 0x7065_726d;
    pub const AUGMENT: u64 = 0x6175_676d;
}

/// xoshiro256** (Blackman and Vigna, 2018): fast, 256 bits of state, passes
/// BigCrush; more than enough for shuffling, augmentation and weight init.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

/// The SplitMix64 finalizer: a bijection on `u64` with good avalanche, used to
/// turn seeds and keys (often small, similar integers) into unrelated states.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl Rng {
    /// Seeds the state with four consecutive SplitMix64 outputs, as the
    /// xoshiro authors recommend. SplitMix64 is a bijection of its counter, so
    /// the four words are distinct and the state is never all zero.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(GOLDEN_GAMMA);
            mix64(x)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// A generator for the stream named by `keys` under `seed`, e.g.
    /// `derive(seed, &[AUGMENT, epoch, sample])`. Keys are absorbed in order, so
    /// `[a, b]` and `[b, a]` give different streams.
    pub fn derive(seed: u64, keys: &[u64]) -> Self {
        let mut h = mix64(seed ^ GOLDEN_GAMMA);
        for &k in keys {
            h = mix64(h.wrapping_add(GOLDEN_GAMMA) ^ mix64(k));
        }
        Rng::new(h)
    }

    /// Rebuilds a generator from a state saved with [`Rng::get_state`].
    pub fn from_state(state: [u64; 4]) -> Result<Self> {
        let mut rng = Rng::new(0);
        rng.set_state(state)?;
        Ok(rng)
    }

    /// The full state; saving it and calling [`Rng::set_state`] later resumes
    /// the exact same sequence.
    pub fn get_state(&self) -> [u64; 4] {
        self.s
    }

    /// Restores a saved state. The all-zero state is a fixed point of
    /// xoshiro (it would output zeros forever), so it is rejected.
    pub fn set_state(&mut self, state: [u64; 4]) -> Result<()> {
        if state == [0; 4] {
            bail!(
                Data,
                "rng state is all zeros, which xoshiro256** cannot use"
            );
        }
        self.s = state;
        Ok(())
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// The high half of [`Rng::next_u64`] (the better-mixed bits).
    pub fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    /// Uniform in `[0, 1)` on the 2^24 grid that `f32` represents exactly, so
    /// the result never rounds up to 1.0.
    pub fn uniform(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform in `0..n` without modulo bias (Lemire's multiply-and-reject).
    ///
    /// # Panics
    /// If `n == 0`: the range is empty, which is a bug in the caller.
    /// Uniform in `[lo, hi)`.
    pub fn uniform_range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.uniform()
    }

    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0): empty range");
        let mut m = u128::from(self.next_u64()) * u128::from(n);
        if (m as u64) < n {
            // Reject the `2^64 mod n` low values that would over-represent
            // some outputs; happens with probability < n / 2^64.
            let threshold = n.wrapping_neg() % n;
            while (m as u64) < threshold {
                m = u128::from(self.next_u64()) * u128::from(n);
            }
        }
        (m >> 64) as u64
    }

    /// Fisher-Yates: every permutation equally likely.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    /// A standard normal sample (Box-Muller, computed in f64). Only the cosine
    /// branch is used: caching the sine branch would add hidden state that
    /// [`Rng::get_state`] could not save.
    pub fn normal(&mut self) -> f32 {
        const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
        // u1 in (0, 1] so that ln(u1) is finite.
        let u1 = 1.0 - (self.next_u64() >> 11) as f64 * SCALE;
        let u2 = (self.next_u64() >> 11) as f64 * SCALE;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference output of xoshiro256** for the state [1, 2, 3, 4], from the
    /// test vectors of the `rand_xoshiro` crate (which follow the C reference
    /// `xoshiro256starstar.c`).
    #[test]
    fn matches_reference_vector() {
        let mut rng = Rng::from_state([1, 2, 3, 4]).unwrap();
        let expected: [u64; 10] = [
            11520,
            0,
            1509978240,
            1215971899390074240,
            1216172134540287360,
            607988272756665600,
            16172922978634559625,
            8476171486693032832,
            10595114339597558777,
            2904607092377533576,
        ];
        for e in expected {
            assert_eq!(rng.next_u64(), e);
        }
    }

    #[test]
    fn state_round_trip_resumes_exactly() {
        let mut a = Rng::new(42);
        for _ in 0..17 {
            a.next_u64();
        }
        let saved = a.get_state();
        let ahead: Vec<u64> = (0..100).map(|_| a.next_u64()).collect();
        let mut b = Rng::from_state(saved).unwrap();
        let again: Vec<u64> = (0..100).map(|_| b.next_u64()).collect();
        assert_eq!(ahead, again);
        assert!(Rng::from_state([0; 4]).is_err());
    }

    #[test]
    fn derive_separates_streams() {
        let a = Rng::derive(7, &[1, 2]).next_u64();
        let b = Rng::derive(7, &[2, 1]).next_u64();
        let c = Rng::derive(8, &[1, 2]).next_u64();
        let d = Rng::derive(7, &[1, 2]).next_u64();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, d);
        assert_ne!(
            Rng::derive(7, &[]).next_u64(),
            Rng::derive(7, &[0]).next_u64()
        );
    }

    #[test]
    fn uniform_and_below_stay_in_range() {
        let mut rng = Rng::new(1);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            let u = rng.uniform();
            assert!((0.0..1.0).contains(&u));
            counts[rng.below(3) as usize] += 1;
        }
        // Each bucket expects 10_000; 5 sigma is about 400.
        for c in counts {
            assert!((9_600..10_400).contains(&c), "{counts:?}");
        }
        assert_eq!(rng.below(1), 0);
        assert!(rng.below(u64::MAX) < u64::MAX);
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut rng = Rng::new(3);
        let mut v: Vec<u32> = (0..1000).collect();
        rng.shuffle(&mut v);
        assert_ne!(v, (0..1000).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..1000).collect::<Vec<_>>());
        rng.shuffle::<u8>(&mut []);
    }

    #[test]
    fn normal_has_unit_moments() {
        let mut rng = Rng::new(5);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| f64::from(rng.normal())).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
        assert!(xs.iter().all(|x| x.is_finite()));
    }
}
