//! The executor's table and data-movement ops against ONNX Runtime:
//! QLinearLeakyRelu, QLinearSigmoid, broadcasting QLinearAdd (a computed
//! [N,C,1,1] input, constant inputs on either side), Transpose and Reshape on
//! int8 and uint8, in QOperator form and as QDQ groups, in the graphs of
//! `scripts/gen_executor_op_graphs.py` (committed in
//! `tests/data/executor_ops/`; the script must reproduce their graphs). Each goes through `qat run
//! --against ort`, which compares every int8 tensor; these must agree
//! exactly (0 differing elements, QLinearAdd included with the script's
//! irregular scales). Malformed forms of the new ops are clear errors naming
//! the node.

mod common;

use common::{qat_bin, synthetic_fmnist, temp_dir};
use qat::executor::load::parse_model;
use qat::executor::Executor;
use std::path::{Path, PathBuf};
use std::process::Command;

const CHECK: &str =
    "executor_ops_ort (LeakyRelu, Sigmoid, broadcast add, Transpose, Reshape vs ORT)";
const GRAPHS: [&str; 4] = ["qop_int8", "qop_uint8", "qdq_int8", "qdq_uint8"];

/// The committed graphs.
fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/executor_ops")
}

/// Writes the graphs into `dir` with `$QAT_PYTHON`; false (recorded as
/// skipped) when ONNX Runtime cannot referee ([`common::ort_available`]).
fn generate(dir: &Path) -> bool {
    if !common::ort_available(CHECK) {
        return false;
    }
    let python = common::python();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/gen_executor_op_graphs.py"
    );
    let out = Command::new(&python)
        .args([script, dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[test]
fn table_and_layout_ops_match_onnx_runtime_exactly() {
    let fresh = temp_dir("executor_ops_ort");
    if !generate(&fresh) {
        return;
    }
    let dir = fixtures();
    for g in GRAPHS {
        let f = format!("{g}.onnx");
        let read = |d: &Path| parse_model(&std::fs::read(d.join(&f)).unwrap()).unwrap();
        let (a, b) = (read(&fresh), read(&dir));
        assert!(
            a.graph == b.graph && a.opset_import == b.opset_import,
            "scripts/gen_executor_op_graphs.py no longer writes the graph of \
             tests/data/executor_ops/{f}: run it with tests/data/executor_ops as OUTDIR and \
             commit the result"
        );
    }
    let data = synthetic_fmnist("executor_ops_ort_data", 0, 48);
    let d = data.to_str().unwrap();
    for g in GRAPHS {
        let path = dir.join(format!("{g}.onnx"));
        let p = path.to_str().unwrap();
        // The executor reads the graph and runs the ops the file holds.
        let exec = Executor::load(&path).unwrap_or_else(|e| panic!("{g}: {e}"));
        let ops: Vec<&str> = exec.nodes().iter().map(|(_, op)| *op).collect::<Vec<_>>();
        let ops: Vec<String> = ops.iter().map(|s| s.to_string()).collect();
        for want in [
            "QLinearLeakyRelu",
            "QLinearSigmoid",
            "QLinearAdd",
            "Transpose",
            "Reshape",
        ] {
            assert!(
                ops.iter().any(|o| o == want),
                "{g}: no {want} step in {ops:?}"
            );
        }
        let mut args = vec![
            "run",
            p,
            "--data",
            d,
            "--mean",
            "0.5",
            "--std",
            "0.5",
            "--batch-size",
            "16",
            "--against",
            "ort",
        ];
        // ORT on x86 fuses int8 (S8S8) QDQ groups only with this option;
        // by default it runs their Conv in float (docs/INT8.md).
        if g == "qdq_int8" {
            args.extend(["--ort-config", "session.qdqisint8allowed=1"]);
        }
        let (ok, log) = qat_bin(&args);
        println!("{g}:\n{log}");
        assert!(
            ok && log.contains("PASS: every int8 tensor agrees"),
            "{g}:\n{log}"
        );
        // Every compared tensor, by name, with 0 mismatches.
        for t in [
            "conv", "leaky", "sigmoid", "gap", "add1", "add2", "add3", "add4", "nhwc", "nwhc",
            "rows", "planes", "pooled", "flat",
        ] {
            let row = log
                .lines()
                .find(|l| l.split_whitespace().next() == Some(t))
                .unwrap_or_else(|| panic!("{g}: no row for {t} in\n{log}"));
            let cols: Vec<&str> = row.split_whitespace().collect();
            // tensor, op, elements, mismatches, max|diff|, own (judged)
            assert!(cols.len() >= 5, "{row}");
            assert_eq!(cols[3], "0", "{g}: {t} differs from ORT: {row}");
        }
        assert!(log.contains("arg-max differs on 0 image(s)"), "{log}");
    }
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&fresh);
}

/// The error of loading `g` after `edit`.
fn load_err(dir: &Path, g: &str, edit: impl FnOnce(&mut onnx_protobuf::ModelProto)) -> String {
    let bytes = std::fs::read(dir.join(format!("{g}.onnx"))).unwrap();
    let mut m = parse_model(&bytes).unwrap();
    edit(&mut m);
    match Executor::from_model(&m) {
        Ok(_) => panic!("{g}: the edited graph loaded"),
        Err(e) => e.to_string(),
    }
}

fn node<'a>(m: &'a mut onnx_protobuf::ModelProto, name: &str) -> &'a mut onnx_protobuf::NodeProto {
    m.graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.name == name)
        .unwrap()
}

fn init<'a>(
    m: &'a mut onnx_protobuf::ModelProto,
    name: &str,
) -> &'a mut onnx_protobuf::TensorProto {
    m.graph
        .as_mut()
        .unwrap()
        .initializer
        .iter_mut()
        .find(|t| t.name == name)
        .unwrap()
}

#[test]
fn malformed_table_and_layout_nodes_are_errors_naming_the_node() {
    let dir = fixtures();
    let check = |err: String, parts: &[&str]| {
        for p in parts {
            assert!(err.contains(p), "'{p}' not in: {err}");
        }
    };
    // Transpose moving the batch axis; not a permutation.
    check(
        load_err(&dir, "qop_int8", |m| {
            node(m, "to_nhwc").attribute[0].ints = vec![1, 0, 2, 3]
        }),
        &["to_nhwc", "batch axis"],
    );
    check(
        load_err(&dir, "qop_int8", |m| {
            node(m, "to_nhwc").attribute[0].ints = vec![0, 2, 2, 1]
        }),
        &["to_nhwc", "not a permutation"],
    );
    // Reshape: a fixed batch, a size that does not fit, a float shape.
    let set_shape = |v: Vec<i64>| {
        move |m: &mut onnx_protobuf::ModelProto| {
            let t = init(m, "shape1");
            t.dims = vec![v.len() as i64];
            t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        }
    };
    check(
        load_err(&dir, "qop_int8", set_shape(vec![4, 10, -1])),
        &["rows", "keep the batch axis"],
    );
    check(
        load_err(&dir, "qop_int8", set_shape(vec![0, 11, -1])),
        &["rows", "does not fit"],
    );
    check(
        load_err(&dir, "qop_uint8", |m| {
            let t = init(m, "shape1");
            t.data_type = onnx_protobuf::tensor_proto::DataType::FLOAT as i32;
            t.raw_data = vec![0; 12];
        }),
        &["rows", "int64"],
    );
    // Shapes that do not broadcast: a [10, 1, 2] constant against [10, 28, 28].
    check(
        load_err(&dir, "qop_int8", |m| {
            let t = init(m, "k1");
            t.dims = vec![5, 1, 2];
        }),
        &["add2", "do not broadcast"],
    );
    // LeakyRelu with a zero point of the wrong type, Sigmoid with too few inputs.
    check(
        load_err(&dir, "qop_int8", |m| {
            let n = node(m, "leaky");
            n.input[4] = "x_s".into();
        }),
        &["leaky", "zero point"],
    );
    check(
        load_err(&dir, "qop_int8", |m| node(m, "sigmoid").input.truncate(3)),
        &["sigmoid", "inputs"],
    );
    // ONNX Runtime's dynamic quantization ops: named, with what to do.
    check(
        load_err(&dir, "qop_int8", |m| {
            node(m, "conv").op_type = "ConvInteger".into()
        }),
        &[
            "conv",
            "ConvInteger",
            "dynamic quantization",
            "quantize_static",
        ],
    );
}
