//! Fake quantization against PyTorch (QUANT_SPEC S3): forward values and
//! straight-through gradients of `torch.fake_quantize_per_tensor_affine` and
//! `torch.fake_quantize_per_channel_affine`, produced by
//! `scripts/gen_quant_golden.py` (PyTorch version recorded in the JSON).
//! Inputs where PyTorch's `x * (1 / s)` and our `x / s` could round apart are
//! excluded by the script; exact ties with power-of-two scales are included.

use qat::quant::fake::{
    fake_quant_per_channel, fake_quant_per_channel_backward, fake_quant_per_tensor,
    fake_quant_per_tensor_backward, quantize_per_channel, quantize_per_tensor,
};
use qat::quant::QParams;
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    let list = v.as_array().expect("array of numbers");
    // Every number is the exact decimal of a float32, so f64 -> f32 is exact.
    list.iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn assert_bits_eq(name: &str, what: &str, got: &[f32], want: &[f32], x: &[f32]) {
    assert_eq!(got.len(), want.len(), "{name}: {what} length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "{name}: {what}[{i}] = {g}, torch {w} (x = {})",
            x[i]
        );
    }
}

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/quant/fake_quant_golden.json"
    );
    let text =
        std::fs::read_to_string(path).expect("golden file (run scripts/gen_quant_golden.py)");
    serde_json::from_str(&text).unwrap()
}

#[test]
fn fake_quant_matches_pytorch_forward_and_backward() {
    let golden = golden();
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 8);
    let mut checked = 0;
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (x, dy) = (floats(&case["x"]), floats(&case["dy"]));
        let (y_want, dx_want) = (floats(&case["y"]), floats(&case["dx"]));
        let (mut y, mut dx, mut q) = (vec![0.0; x.len()], vec![0.0; x.len()], vec![0i8; x.len()]);
        match case["kind"].as_str().unwrap() {
            "per_tensor" => {
                assert_eq!(
                    (case["quant_min"].as_i64(), case["quant_max"].as_i64()),
                    (Some(-128), Some(127))
                );
                let qp = QParams {
                    scale: case["scale"].as_f64().unwrap() as f32,
                    zero_point: case["zero_point"].as_i64().unwrap() as i32,
                };
                fake_quant_per_tensor(&x, qp, &mut y).unwrap();
                fake_quant_per_tensor_backward(&x, &dy, qp, &mut dx).unwrap();
                quantize_per_tensor(&x, qp, &mut q).unwrap();
                for (i, &q) in q.iter().enumerate() {
                    assert_eq!(
                        (q as i32 - qp.zero_point) as f32 * qp.scale,
                        y_want[i],
                        "{name}: q[{i}]"
                    );
                }
            }
            "per_channel" => {
                assert_eq!(
                    (case["quant_min"].as_i64(), case["quant_max"].as_i64()),
                    (Some(-127), Some(127))
                );
                let scales = floats(&case["scale"]);
                fake_quant_per_channel(&x, &scales, &mut y).unwrap();
                fake_quant_per_channel_backward(&x, &dy, &scales, &mut dx).unwrap();
                quantize_per_channel(&x, &scales, &mut q).unwrap();
                let inner = x.len() / scales.len();
                for (i, &q) in q.iter().enumerate() {
                    assert_eq!(q as f32 * scales[i / inner], y_want[i], "{name}: q[{i}]");
                }
            }
            kind => panic!("unknown case kind {kind}"),
        }
        assert_bits_eq(name, "y", &y, &y_want, &x);
        assert_bits_eq(name, "dx", &dx, &dx_want, &x);
        checked += x.len();
    }
    println!(
        "checked {checked} values against torch {}",
        golden["torch_version"]
    );
}

/// Where PyTorch's `x * (1 / s)` and the spec's `x / s` round apart, qat
/// follows the spec (ONNX QuantizeLinear), deliberately unlike PyTorch.
#[test]
fn fake_quant_divides_where_pytorch_multiplies() {
    let d = &golden()["div_vs_mul_deviation"];
    let qp = QParams {
        scale: d["scale"].as_f64().unwrap() as f32,
        zero_point: d["zero_point"].as_i64().unwrap() as i32,
    };
    let x = floats(&d["x"]);
    assert!(!x.is_empty());
    let mut y = vec![0.0; x.len()];
    fake_quant_per_tensor(&x, qp, &mut y).unwrap();
    assert_bits_eq("deviation", "y", &y, &floats(&d["spec_y"]), &x);
    for (got, torch) in y.iter().zip(floats(&d["torch_y"])) {
        assert_ne!(*got, torch);
    }
}
