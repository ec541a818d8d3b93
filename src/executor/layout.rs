//! Data movement on quantized tensors: `Transpose` (any permutation that
//! keeps the batch axis first), the shape arithmetic of `Reshape`, and the
//! numpy broadcasting of `QLinearAdd`. Everything here moves or pairs int8
//! values without changing them, so it is exact by construction; per image
//! dimensions exclude the batch, which is always axis 0.

use super::ops::AddTable;
use crate::quant::AddRequant;
use crate::{bail, Result};
use rayon::prelude::*;

/// Row-major strides of `dims`.
fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for k in (0..dims.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * dims[k + 1];
    }
    s
}

/// Visits every index of `dims` in row-major order with the offset
/// `sum idx[k] * strides[k]` of each operand (one stride vector per
/// operand).
fn for_each_offset<const M: usize>(
    dims: &[usize],
    strides: [&[usize]; M],
    mut f: impl FnMut(usize, [usize; M]),
) {
    let total: usize = dims.iter().product();
    let mut idx = vec![0usize; dims.len()];
    let mut off = [0usize; M];
    for i in 0..total {
        f(i, off);
        // Advance the odometer.
        for k in (0..dims.len()).rev() {
            idx[k] += 1;
            for (o, s) in off.iter_mut().zip(&strides) {
                *o += s[k];
            }
            if idx[k] < dims[k] {
                break;
            }
            for (o, s) in off.iter_mut().zip(&strides) {
                *o -= s[k] * dims[k];
            }
            idx[k] = 0;
        }
    }
}

/// A Transpose of one image: `out[idx] = in[idx permuted]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Transpose {
    /// Per-image output dimensions.
    pub out_dims: Vec<usize>,
    /// For each output axis, the stride of the input axis it reads.
    in_strides: Vec<usize>,
}

impl Transpose {
    /// From the ONNX `perm` (over all axes, batch included; `None` reverses
    /// them, the ONNX default) and the per-image input dimensions.
    pub fn new(perm: Option<&[i64]>, in_dims: &[usize]) -> Result<Self> {
        let rank = in_dims.len() + 1;
        let perm: Vec<i64> = match perm {
            Some(p) => p.to_vec(),
            None => (0..rank as i64).rev().collect(),
        };
        if perm.len() != rank {
            bail!(
                Onnx,
                "perm has {} values for a tensor of rank {rank}",
                perm.len()
            );
        }
        let mut seen = vec![false; rank];
        for &p in &perm {
            if p < 0 || p as usize >= rank || std::mem::replace(&mut seen[p as usize], true) {
                bail!(Onnx, "perm {perm:?} is not a permutation of 0..{rank}");
            }
        }
        if perm[0] != 0 {
            bail!(
                Onnx,
                "perm {perm:?} moves the batch axis 0, which is not supported (it must stay first)"
            );
        }
        let s = strides(in_dims);
        let axes: Vec<usize> = perm[1..].iter().map(|&p| p as usize - 1).collect();
        Ok(Transpose {
            out_dims: axes.iter().map(|&a| in_dims[a]).collect(),
            in_strides: axes.iter().map(|&a| s[a]).collect(),
        })
    }

    /// Runs `n` images (each `x.len() / n` values).
    pub fn run(&self, x: &[i8], n: usize, y: &mut [i8]) {
        let per = x.len() / n.max(1);
        if per == 0 {
            return;
        }
        y.par_chunks_mut(per)
            .zip(x.par_chunks(per))
            .for_each(|(y, x)| {
                for_each_offset(&self.out_dims, [&self.in_strides], |i, [o]| y[i] = x[o]);
            });
    }
}

/// The per-image output dimensions of `Reshape` with the ONNX `shape`
/// (batch axis included) on per-image input dimensions `in_dims`: the
/// first value must keep the batch (0 copies it, -1 infers it from the
/// rest); among the others, 0 copies the input's dimension at that position
/// (unless `allowzero`) and one -1 is inferred.
pub fn reshape_dims(shape: &[i64], in_dims: &[usize], allowzero: bool) -> Result<Vec<usize>> {
    let numel: usize = in_dims.iter().product();
    let Some((&first, rest)) = shape.split_first() else {
        bail!(
            Onnx,
            "shape [] would make a scalar of the batch, which is not supported"
        );
    };
    match first {
        0 if !allowzero => {}
        -1 => {
            if rest.contains(&-1) {
                bail!(
                    Onnx,
                    "shape {shape:?} infers the batch and another dimension (-1 twice)"
                );
            }
        }
        _ => bail!(
            Onnx,
            "shape {shape:?}: its first value {first} must keep the batch axis (0 to copy it, \
or -1 to infer it); a fixed batch in a Reshape is not supported"
        ),
    }
    let mut out = Vec::with_capacity(rest.len());
    let mut infer = None;
    for (k, &d) in rest.iter().enumerate() {
        match d {
            -1 if infer.is_none() => {
                infer = Some(k);
                out.push(1);
            }
            -1 => bail!(Onnx, "shape {shape:?} has more than one -1"),
            0 if !allowzero => match in_dims.get(k) {
                Some(&v) => out.push(v),
                None => bail!(
                    Onnx,
                    "shape {shape:?}: value 0 at position {} copies a dimension the input \
(rank {}) does not have",
                    k + 1,
                    in_dims.len() + 1
                ),
            },
            d if d > 0 => out.push(usize::try_from(d).unwrap_or(usize::MAX)),
            _ => bail!(
                Onnx,
                "shape {shape:?}: dimension {d} is not supported (positive, 0 or one -1)"
            ),
        }
    }
    let known = out
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .unwrap_or(usize::MAX);
    match infer {
        Some(k) if known > 0 && numel.is_multiple_of(known) => out[k] = numel / known,
        // Without a -1 after the batch, the rest holds one image exactly.
        None if known == numel => {}
        _ => bail!(
            Onnx,
            "shape {shape:?} does not fit {numel} values per image (input {in_dims:?} per image)"
        ),
    }
    Ok(out)
}

/// One operand of a broadcasting add: per-output-axis strides (0 where it
/// is broadcast), and either the computed input's stride between images or
/// a constant's values (one copy for every image).
#[derive(Clone, Debug, PartialEq)]
pub struct Operand {
    strides: Vec<usize>,
    /// `None`: a computed input (`numel` values per image).
    pub konst: Option<Vec<i8>>,
    numel: usize,
}

impl Operand {
    /// An input of per-image dimensions `dims` (at most `out`'s rank),
    /// broadcast to the per-image `out` dimensions: computed, or (with
    /// `konst`) a constant, one copy for every image.
    fn new(dims: &[usize], konst: Option<Vec<i8>>, out: &[usize]) -> Self {
        let s = strides(dims);
        let pad = out.len() - dims.len();
        let strides = (0..out.len())
            .map(|k| match k.checked_sub(pad) {
                Some(j) if dims[j] != 1 => s[j],
                _ => 0,
            })
            .collect();
        Operand {
            strides,
            konst,
            numel: dims.iter().product(),
        }
    }
}

/// `QLinearAdd` of two operands of different shapes (numpy broadcasting).
#[derive(Clone, Debug, PartialEq)]
pub struct BroadcastAdd {
    pub rq: AddTable,
    pub out_dims: Vec<usize>,
    pub a: Operand,
    pub b: Operand,
}

/// The shape of one input of a broadcasting op.
pub enum Shape<'a> {
    /// A computed tensor: per-image dimensions (the batch is axis 0).
    Computed(&'a [usize]),
    /// A constant with all its dimensions, and its values.
    Constant(&'a [usize], Vec<i8>),
}

impl BroadcastAdd {
    /// The per-image output dimensions of `a + b`, or why they do not
    /// broadcast here. A computed input must have the output's full rank
    /// (its batch axis cannot line up with another axis); a constant's axis
    /// lined up with the batch must be 1.
    pub fn new(rq: AddRequant, a: Shape, b: Shape) -> Result<Self> {
        let rank = |s: &Shape| match s {
            Shape::Computed(d) => d.len() + 1,
            Shape::Constant(d, _) => d.len(),
        };
        let r = rank(&a).max(rank(&b));
        for s in [&a, &b] {
            match s {
                Shape::Computed(d) if d.len() + 1 != r => bail!(
                    Onnx,
                    "a computed input of rank {} broadcast to rank {r} would line its batch up \
with another axis, which is not supported",
                    d.len() + 1
                ),
                Shape::Constant(d, _) if d.len() == r && d[0] != 1 => bail!(
                    Onnx,
                    "a constant input of shape {d:?} spans the batch axis, which is not supported \
(its first dimension must be 1)"
                ),
                _ => {}
            }
        }
        // Per-image dimensions: a full-rank constant without its batch axis
        // (1, checked above).
        let per_image = |s: &Shape| -> Vec<usize> {
            match s {
                Shape::Constant(d, _) if d.len() == r => d[1..].to_vec(),
                Shape::Computed(d) | Shape::Constant(d, _) => d.to_vec(),
            }
        };
        // Right-aligned at rank r - 1.
        let view = |s: &Shape| -> Vec<usize> {
            let d = per_image(s);
            let mut v = vec![1; r - 1 - d.len()];
            v.extend(d);
            v
        };
        let (va, vb) = (view(&a), view(&b));
        let out_dims = va
            .iter()
            .zip(&vb)
            .map(|(&x, &y)| match (x, y) {
                _ if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                _ => bail!(
                    Onnx,
                    "inputs of shapes {va:?} and {vb:?} per image do not broadcast"
                ),
            })
            .collect::<Result<Vec<_>>>()?;
        let operand = |s: Shape| {
            let d = per_image(&s);
            match s {
                Shape::Computed(_) => Operand::new(&d, None, &out_dims),
                Shape::Constant(_, v) => Operand::new(&d, Some(v), &out_dims),
            }
        };
        let (a, b) = (operand(a), operand(b));
        Ok(BroadcastAdd {
            rq: AddTable::new(rq),
            out_dims,
            a,
            b,
        })
    }

    /// Runs `n` images; `inputs` are the computed operands' values in
    /// order (`a` first).
    pub fn run<'a>(&'a self, inputs: &[&'a [i8]], n: usize, y: &mut [i8]) -> Result<()> {
        let mut next = inputs.iter();
        let mut data = |o: &'a Operand| -> Result<&'a [i8]> {
            match &o.konst {
                Some(v) => Ok(v.as_slice()),
                None => match next.next() {
                    Some(x) if x.len() == n * o.numel => Ok(*x),
                    _ => bail!(Onnx, "a broadcasting add input has the wrong size"),
                },
            }
        };
        let (xa, xb) = (data(&self.a)?, data(&self.b)?);
        let per: usize = self.out_dims.iter().product();
        let step = |o: &Operand| if o.konst.is_some() { 0 } else { o.numel };
        let (ia, ib) = (step(&self.a), step(&self.b));
        y.par_chunks_mut(per).enumerate().for_each(|(img, y)| {
            let (xa, xb) = (&xa[img * ia..], &xb[img * ib..]);
            for_each_offset(
                &self.out_dims,
                [&self.a.strides, &self.b.strides],
                |i, [oa, ob]| y[i] = self.rq.get(xa[oa], xb[ob]),
            );
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_matches_index_arithmetic() {
        // Per image [2, 3, 4], perm (0, 3, 1, 2): out [4, 2, 3].
        let t = Transpose::new(Some(&[0, 3, 1, 2]), &[2, 3, 4]).unwrap();
        assert_eq!(t.out_dims, vec![4, 2, 3]);
        let n = 2;
        let x: Vec<i8> = (0..n * 24).map(|v| v as i8).collect();
        let mut y = vec![0i8; x.len()];
        t.run(&x, n, &mut y);
        for img in 0..n {
            for (c, h, w) in
                (0..4).flat_map(|c| (0..2).flat_map(move |h| (0..3).map(move |w| (c, h, w))))
            {
                let got = y[img * 24 + (c * 2 + h) * 3 + w];
                let want = x[img * 24 + (h * 3 + w) * 4 + c];
                assert_eq!(got, want);
            }
        }
        // The default reverses every axis, which moves the batch.
        assert!(Transpose::new(None, &[2, 3]).is_err());
        assert!(Transpose::new(Some(&[0, 1, 1]), &[2, 3]).is_err());
        assert!(Transpose::new(Some(&[0, 1]), &[2, 3]).is_err());
    }

    #[test]
    fn reshape_dims_follow_onnx_rules() {
        assert_eq!(reshape_dims(&[0, -1], &[8, 2, 2], false).unwrap(), vec![32]);
        assert_eq!(
            reshape_dims(&[-1, 32], &[8, 2, 2], false).unwrap(),
            vec![32]
        );
        assert_eq!(
            reshape_dims(&[0, 0, 4], &[8, 2, 2], false).unwrap(),
            vec![8, 4]
        );
        assert_eq!(
            reshape_dims(&[0, 4, -1, 2], &[8, 2, 2], false).unwrap(),
            vec![4, 4, 2]
        );
        assert!(reshape_dims(&[0, 5, -1], &[8, 2, 2], false).is_err());
        assert!(reshape_dims(&[1, 32], &[8, 2, 2], false).is_err());
        assert!(reshape_dims(&[0, 33], &[8, 2, 2], false).is_err());
        assert!(reshape_dims(&[-1, -1], &[8, 2, 2], false).is_err());
        assert!(reshape_dims(&[0, 32], &[8, 2, 2], true).is_err());
        assert!(reshape_dims(&[], &[8], false).is_err());
    }

    #[test]
    fn broadcast_add_pairs_the_right_elements() {
        let rq = AddRequant::new(0.1, 0, 0.1, 0, 0.1, 0, false).unwrap();
        // a: computed [N, 2, 3]; b: constant [3] and computed [N, 2, 1].
        let n = 2;
        let a: Vec<i8> = (0..12).map(|v| v as i8).collect();
        let k = vec![10i8, 20, 30];
        let op = BroadcastAdd::new(
            rq,
            Shape::Computed(&[2, 3]),
            Shape::Constant(&[3], k.clone()),
        )
        .unwrap();
        assert_eq!(op.out_dims, vec![2, 3]);
        let mut y = vec![0i8; 12];
        op.run(&[&a], n, &mut y).unwrap();
        for i in 0..12 {
            assert_eq!(y[i], rq.apply(a[i], k[i % 3]));
        }
        let b: Vec<i8> = vec![1, 2, 3, 4];
        let op = BroadcastAdd::new(rq, Shape::Computed(&[2, 3]), Shape::Computed(&[2, 1])).unwrap();
        op.run(&[&a, &b], n, &mut y).unwrap();
        for i in 0..12 {
            assert_eq!(y[i], rq.apply(a[i], b[i / 3]));
        }
        // A constant [1, 2, 1] of full rank, and the refusals.
        let op = BroadcastAdd::new(
            rq,
            Shape::Constant(&[1, 2, 1], vec![5, 6]),
            Shape::Computed(&[2, 3]),
        )
        .unwrap();
        op.run(&[&a], n, &mut y).unwrap();
        for i in 0..12 {
            assert_eq!(y[i], rq.apply([5, 6][(i / 3) % 2], a[i]));
        }
        assert!(BroadcastAdd::new(rq, Shape::Computed(&[2, 3]), Shape::Computed(&[3])).is_err());
        assert!(BroadcastAdd::new(
            rq,
            Shape::Computed(&[2, 3]),
            Shape::Constant(&[2, 2, 3], vec![0; 12])
        )
        .is_err());
        assert!(BroadcastAdd::new(rq, Shape::Computed(&[2, 3]), Shape::Computed(&[2, 2])).is_err());
    }
}
