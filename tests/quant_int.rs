//! Integer arithmetic of `qat::quant` against float and exact references
//! (QUANT_SPEC S5, S6, S7): the integer-only R1 must equal the float32
//! formula bit for bit, on random inputs and on constructed near-ties, and
//! the residual add must equal the exactly rounded rational sum.
//!
//! Loop sizes keep every test well under 10 s in the dev profile.

use qat::quant::add::{rne_div, AddRequant};
use qat::quant::pool::{gap_multiplier, gap_requant, global_avg_pool};
use qat::quant::requant::{output_bounds, requant_f32, requant_multiplier, Requant};

/// splitmix64: a tiny, well-mixed PRNG, so the tests need no `rand` crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi] (inclusive).
    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
    /// Log-uniform in [lo, hi], rounded to float32.
    fn log_uniform(&mut self, lo: f64, hi: f64) -> f32 {
        (lo.ln() + self.unit() * (hi.ln() - lo.ln())).exp() as f32
    }
    fn sign(&mut self) -> i64 {
        if self.next() & 1 == 0 {
            1
        } else {
            -1
        }
    }
    /// An int32 accumulator with a log-uniform magnitude over the full range.
    fn acc(&mut self) -> i32 {
        let mag = (2f64.powf(self.unit() * 31.0)).floor().min(i32::MAX as f64) as i64;
        (self.sign() * mag) as i32
    }
    /// An accumulator that lands `acc * m` near a log-uniform output in
    /// [2^-3, 2^9], where outputs do not all saturate.
    fn acc_for(&mut self, m: f32) -> i32 {
        let y = 2f64.powf(self.unit() * 12.0 - 3.0);
        let acc = (y / m as f64).round().min(i32::MAX as f64);
        (self.sign() * acc as i64) as i32
    }
}

/// Checks the integer R1 against the float32 formula for one input.
fn check_r1(acc: i32, m: f32, z: i32, relu: bool) {
    let (lo, hi) = output_bounds(z, relu);
    let rq = Requant::new(m, z, lo, hi).unwrap();
    let want = requant_f32(acc, m, z, lo, hi);
    let got = rq.apply(acc);
    assert_eq!(
        got,
        want,
        "acc {acc}, M {m:e} (bits {:#010x}), z {z}, relu {relu}: fl32(acc)*M = {}",
        m.to_bits(),
        acc as f32 * m
    );
}

#[test]
fn r1_integer_equals_f32_on_random_inputs() {
    let mut rng = Rng(1);
    let mut unsaturated = 0u64;
    let n_mult = 2_000_000;
    for _ in 0..n_mult {
        // Scales across the realistic range (S2: >= 2^-23; up to 1e2).
        let s_x = rng.log_uniform(1e-6, 1e2);
        let s_w = rng.log_uniform(1e-6, 1e2);
        let s_y = rng.log_uniform(1e-6, 1e2);
        let m = requant_multiplier(s_x, s_w, s_y);
        let z = rng.int(-128, 127) as i32;
        let relu = rng.next() & 1 == 0;
        let (lo, hi) = output_bounds(z, relu);
        let rq = Requant::new(m, z, lo, hi).unwrap();
        for i in 0..16 {
            let acc = if i < 8 { rng.acc() } else { rng.acc_for(m) };
            let want = requant_f32(acc, m, z, lo, hi);
            assert_eq!(
                rq.apply(acc),
                want,
                "acc {acc}, M {m:e}, z {z}, relu {relu}"
            );
            unsaturated += u64::from(want as i32 != lo && want as i32 != hi);
        }
    }
    // The targeted half must mostly avoid the clamp, or the test is weak.
    assert!(
        unsaturated > n_mult as u64 * 4,
        "only {unsaturated} unsaturated outputs"
    );
}

#[test]
fn r1_integer_equals_f32_on_extreme_inputs() {
    let mut rng = Rng(2);
    let accs = [
        0,
        1,
        -1,
        2,
        3,
        (1 << 24) - 1,
        1 << 24,
        (1 << 24) + 1,
        (1 << 24) + 3,
        i32::MAX,
        -i32::MAX,
        i32::MIN,
    ];
    let mut mults = vec![
        f32::MIN_POSITIVE,
        f32::from_bits(1),         // smallest subnormal
        f32::from_bits(0x7f_ffff), // largest subnormal
        f32::MAX,
        1.0,
        0.5,
        1.0 - f32::EPSILON / 2.0,
        1.0e10,
        1.0e-14,
        2f32.powi(-31),
        2f32.powi(-32),
        2f32.powi(97), // acc * M overflows float32 for large acc
        2f32.powi(-126),
    ];
    for _ in 0..10_000 {
        mults.push(f32::from_bits(rng.next() as u32 & 0x7f7f_ffff).max(f32::from_bits(1)));
    }
    for &m in &mults {
        for &acc in &accs {
            for z in [-128, -1, 0, 77, 127] {
                check_r1(acc, m, z, false);
                check_r1(acc, m, z, true);
            }
        }
        for _ in 0..200 {
            check_r1(rng.acc(), m, rng.int(-128, 127) as i32, false);
        }
    }
}

/// A multiplier `m_sig * 2^exp` whose output for a 24-bit significand product
/// of about `2^(24 + j)` lands at a log-uniform magnitude in [2^-2, 2^8].
fn mult_for_product(rng: &mut Rng, m_sig: u32, product_bits: u32) -> f32 {
    let out_bits = rng.int(-2, 8) as i32;
    let exp = out_bits - product_bits as i32 - 24;
    let m = m_sig as f64 * 2f64.powi(exp);
    assert_eq!(m as f32 as f64, m);
    m as f32
}

/// Exact final ties: `acc * M = c * m / 2` with c, m odd and small.
#[test]
fn r1_integer_equals_f32_on_exact_half_ties() {
    let mut rng = Rng(3);
    let mut ties = 0;
    for _ in 0..1_000_000 {
        let m_odd = rng.int(0, 511) * 2 + 1;
        let c_odd = rng.int(0, (600 / m_odd).max(1)) * 2 + 1;
        let s = rng.int(1, 24) as i32; // M = m_odd * 2^-s, acc = c_odd * 2^(s-1)
        let m = (m_odd as f64 * 2f64.powi(-s)) as f32;
        let base = c_odd << (s - 1);
        if base > i32::MAX as i64 {
            continue;
        }
        let sign = rng.sign();
        let exact = (sign * base) as f32 * m;
        ties += i32::from(exact.fract().abs() == 0.5);
        for d in -2..=2 {
            let acc = (sign * base + d).clamp(-(i32::MAX as i64), i32::MAX as i64) as i32;
            check_r1(acc, m, rng.int(-128, 127) as i32, false);
        }
    }
    assert!(ties > 500_000, "only {ties} exact ties");
}

/// fl32(acc) rounding: |acc| > 2^24 exactly half-way between two float32s.
#[test]
fn r1_integer_equals_f32_on_acc_rounding_ties() {
    let mut rng = Rng(4);
    for _ in 0..1_000_000 {
        let k = rng.int(1, 7) as u32;
        let sig = rng.int(1 << 23, (1 << 24) - 1);
        let base = (sig << k) + (1 << (k - 1)); // exactly half an ulp above sig * 2^k
        let m_sig = rng.int(1 << 23, (1 << 24) - 1) as u32;
        let m = mult_for_product(&mut rng, m_sig, 24 + k);
        for d in -1..=1 {
            let acc = (base + d).min(i32::MAX as i64) as i32;
            let z = rng.int(-128, 127) as i32;
            check_r1(acc, m, z, false);
            check_r1(-acc, m, z, false);
        }
    }
}

/// fl32(fl32(acc) * M) rounding: the 48-bit product of significands exactly
/// half-way between two 24-bit values.
#[test]
fn r1_integer_equals_f32_on_product_rounding_ties() {
    let mut rng = Rng(5);
    let mut ties = 0;
    for _ in 0..2_000_000 {
        let m_sig = (rng.int(1 << 23, (1 << 24) - 1) | 1) as u64; // odd: invertible mod 2^j
        let mut inv = m_sig; // Newton iteration for m_sig^-1 mod 2^64
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(m_sig.wrapping_mul(inv)));
        }
        // A random a of 2..24 bits, then its low j bits replaced so that
        // a * m_sig = 2^(j-1) (mod 2^j), where j is where float32 rounds the
        // product: the low j bits are then exactly half a unit.
        let bits = rng.int(2, 24) as u32;
        let a = rng.int(1 << (bits - 1), (1 << bits) - 1) as u64;
        let j = (64 - (a * m_sig).leading_zeros()).saturating_sub(24);
        if j == 0 {
            continue;
        }
        let mask = (1u64 << j) - 1;
        let a = (a & !mask) | ((1u64 << (j - 1)).wrapping_mul(inv) & mask);
        if a == 0 || a >= 1 << 24 {
            continue;
        }
        let p = a * m_sig;
        let product_bits = 64 - p.leading_zeros();
        ties += i32::from(product_bits == 24 + j);
        let k = rng.int(0, 7) as u32; // fl32(a * 2^k) is exact
        let m = mult_for_product(&mut rng, m_sig as u32, product_bits - 24 + k);
        for d in -1i64..=1 {
            let acc = ((a as i64 + d) << k).min(i32::MAX as i64) as i32;
            let z = rng.int(-128, 127) as i32;
            check_r1(acc, m, z, false);
            check_r1(-acc, m, z, false);
        }
    }
    assert!(ties > 400_000, "only {ties} product ties");
}

/// Windows of consecutive accumulators around `(n + 1/2) / M`, where the
/// three roundings of the float formula interact.
#[test]
fn r1_integer_equals_f32_around_half_integers() {
    let mut rng = Rng(6);
    let mut float_ties = 0;
    for _ in 0..200_000 {
        let m = rng.log_uniform(1e-9, 1e1);
        let n = rng.int(-300, 300) as f64 + 0.5;
        let center = (n / m as f64).round();
        if center.abs() > 2e9 {
            continue;
        }
        let z = rng.int(-128, 127) as i32;
        for d in -32..=32 {
            let acc = (center as i64 + d) as i32;
            float_ties += i32::from((acc as f32 * m).fract().abs() == 0.5);
            check_r1(acc, m, z, false);
        }
    }
    assert!(float_ties > 10_000, "only {float_ties} float32 ties");
}

#[test]
fn gap_integer_equals_f32() {
    let mut rng = Rng(7);
    for _ in 0..2000 {
        let hw = [1, 4, 9, 49, 64, 196, 3136][rng.int(0, 6) as usize];
        let planes = rng.int(1, 8) as usize;
        let x: Vec<i8> = (0..planes * hw).map(|_| rng.next() as i8).collect();
        let (s_in, s_out) = (rng.log_uniform(1e-4, 1e1), rng.log_uniform(1e-4, 1e1));
        let (z_in, z_out) = (rng.int(-128, 127) as i32, rng.int(-128, 127) as i32);
        let rq = gap_requant(s_in, s_out, hw, z_out).unwrap();
        let mut out = vec![0i8; planes];
        global_avg_pool(&x, hw, z_in, &rq, &mut out).unwrap();
        let m = gap_multiplier(s_in, s_out, hw);
        assert_eq!(m, s_in / (s_out * hw as f32));
        for (c, &o) in out.iter().enumerate() {
            let acc: i32 = x[c * hw..(c + 1) * hw]
                .iter()
                .map(|&q| q as i32 - z_in)
                .sum();
            assert_eq!(
                o,
                requant_f32(acc, m, z_out, -128, 127),
                "hw {hw}, plane {c}"
            );
        }
    }
}

/// `(m, e)` with `s = m * 2^e`, straight from the float32 bits (normal s).
fn split(s: f32) -> (i128, i32) {
    let b = s.to_bits();
    (
        ((b & 0x7f_ffff) | 0x80_0000) as i128,
        ((b >> 23) & 0xff) as i32 - 150,
    )
}

/// The exactly rounded residual add, in i128 with a common power of two
/// taken out of numerator and denominator (a different normalization from
/// the library's).
#[allow(clippy::too_many_arguments)]
fn add_exact_i128(
    a: i8,
    z_a: i32,
    s_a: f32,
    b: i8,
    z_b: i32,
    s_b: f32,
    s_c: f32,
    z_c: i32,
    lo: i32,
) -> i8 {
    let ((ma, ea), (mb, eb), (mc, ec)) = (split(s_a), split(s_b), split(s_c));
    let e = ea.min(eb).min(ec);
    let num = ma * (a as i128 - z_a as i128) * (1i128 << (ea - e))
        + mb * (b as i128 - z_b as i128) * (1i128 << (eb - e));
    let den = mc << (ec - e);
    let (q, r) = (num.div_euclid(den), num.rem_euclid(den));
    let q = match (2 * r).cmp(&den) {
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
        std::cmp::Ordering::Less => q,
    };
    (q + z_c as i128).clamp(lo as i128, 127) as i8
}

/// ONNX Runtime's x86 AVX2 QLinearAdd (`qladd_avx2.cpp`), as a float32
/// reference: zero points folded into a fixed part, two fused multiply-adds,
/// RNE conversion, saturation. Test helper only: not the contract.
#[allow(clippy::too_many_arguments)]
fn add_ort_avx2(
    a: i8,
    z_a: i32,
    s_a: f32,
    b: i8,
    z_b: i32,
    s_b: f32,
    s_c: f32,
    z_c: i32,
    lo: i32,
) -> i8 {
    let (r_ac, r_bc) = (s_a / s_c, s_b / s_c);
    let fixed = z_c as f32 - (r_ac * z_a as f32 + r_bc * z_b as f32);
    let v = (a as f32).mul_add(r_ac, (b as f32).mul_add(r_bc, fixed));
    (v.round_ties_even().clamp(-128.0, 127.0) as i32).max(lo) as i8
}

struct AddCase {
    s: [f32; 3],
    z: [i32; 3],
    relu: bool,
}

fn random_add_case(rng: &mut Rng) -> AddCase {
    // Residual branches have comparable ranges: scales within ~2^10 of each
    // other, anywhere in [1e-4, 10].
    let base = rng.log_uniform(1e-3, 1.0) as f64;
    let s = [0, 1, 2].map(|_| rng.log_uniform(base / 32.0, base * 32.0));
    let relu = rng.next() & 1 == 0;
    let z_c = if relu && rng.next() & 1 == 0 {
        -128
    } else {
        rng.int(-128, 127) as i32
    };
    AddCase {
        s,
        z: [rng.int(-128, 127) as i32, rng.int(-128, 127) as i32, z_c],
        relu,
    }
}

fn check_add_all_pairs(c: &AddCase, mismatches_vs_ort: &mut u64) {
    let [s_a, s_b, s_c] = c.s;
    let [z_a, z_b, z_c] = c.z;
    let r = AddRequant::new(s_a, z_a, s_b, z_b, s_c, z_c, c.relu).unwrap();
    for a in -128..=127i8 {
        for b in -128..=127i8 {
            let got = r.apply(a, b);
            let want = add_exact_i128(a, z_a, s_a, b, z_b, s_b, s_c, z_c, r.lo);
            assert_eq!(
                got, want,
                "a {a} b {b} scales {:?} zero points {:?}",
                c.s, c.z
            );
            let ort = add_ort_avx2(a, z_a, s_a, b, z_b, s_b, s_c, z_c, r.lo);
            assert!(
                (got as i32 - ort as i32).abs() <= 1,
                "a {a} b {b}: exact {got}, ORT-style {ort}"
            );
            *mismatches_vs_ort += u64::from(got != ort);
        }
    }
}

#[test]
fn add_equals_exact_rational_on_random_scales() {
    let mut rng = Rng(8);
    let (mut diffs, cases) = (0u64, 200u64);
    for _ in 0..cases {
        check_add_all_pairs(&random_add_case(&mut rng), &mut diffs);
    }
    let rate = diffs as f64 / (cases * 65536) as f64;
    println!(
        "ORT-style float QLinearAdd differs by 1 LSB on {diffs} of {} outputs ({rate:.2e})",
        cases * 65536
    );
    assert!(rate < 1e-4, "1-LSB differences too frequent: {rate:e}");
}

#[test]
fn add_equals_exact_rational_on_f64_far_from_ties() {
    // An independent check of the rounding itself: where the real sum is far
    // from a half-integer, float64 rounds it the same way.
    let mut rng = Rng(9);
    for _ in 0..500_000 {
        let c = random_add_case(&mut rng);
        let r = AddRequant::new(c.s[0], c.z[0], c.s[1], c.z[1], c.s[2], c.z[2], c.relu).unwrap();
        let (a, b) = (rng.next() as i8, rng.next() as i8);
        let v = (c.s[0] as f64 * (a as i32 - c.z[0]) as f64
            + c.s[1] as f64 * (b as i32 - c.z[1]) as f64)
            / c.s[2] as f64;
        if (v - v.floor() - 0.5).abs() < 1e-9 {
            continue;
        }
        let want = (v.round() + c.z[2] as f64).clamp(r.lo as f64, 127.0) as i8;
        assert_eq!(r.apply(a, b), want, "a {a} b {b} v {v}");
    }
}

#[test]
fn add_equals_exact_rational_on_constructed_ties() {
    // Scales in simple ratios make exact half-integers frequent; RNE must
    // break them to even, before the zero point is added.
    let mut rng = Rng(10);
    let mut diffs = 0;
    let ratios = [
        (1.0, 1.0, 2.0),
        (1.0, 0.5, 2.0),
        (3.0, 1.0, 2.0),
        (1.0, 1.0, 4.0),
        (0.75, 0.25, 0.5),
        (1.0, 3.0, 8.0),
    ];
    for (ra, rb, rc) in ratios {
        let base = rng.log_uniform(1e-3, 1.0);
        let (s_a, s_b, s_c) = (base * ra, base * rb, base * rc);
        for _ in 0..4 {
            let c = AddCase {
                s: [s_a, s_b, s_c],
                z: [
                    rng.int(-128, 127) as i32,
                    rng.int(-128, 127) as i32,
                    rng.int(-128, 127) as i32,
                ],
                relu: false,
            };
            check_add_all_pairs(&c, &mut diffs);
        }
    }
    // ORT folds z_c in before rounding, so with an odd z_c its ties go the
    // other way (S7): expected, and why the exact form is the contract.
    println!("ORT-style float differs on {diffs} outputs with tie-heavy scales");
    assert_eq!(rne_div(-5, 2), -2);
}
