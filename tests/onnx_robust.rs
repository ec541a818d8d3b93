//! A malformed model never panics the executor: truncated files, wrong
//! element types, missing initializers, absurd dimensions and attributes,
//! unknown ops each give an error naming the node and the problem; and a
//! time-bounded random-mutation fuzz of the loader (bytes and structure)
//! runs whatever validates.

mod onnx_util;

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_proto::DataType;
use onnx_protobuf::tensor_shape_proto::dimension;
use onnx_protobuf::{type_proto, GraphProto, Message, ModelProto};
use onnx_util::{images, info, trained};
use qat::executor::Executor;
use qat::int8::Int8Net;
use qat::models::Arch;
use qat::onnx::export_int8;
use qat::rng::Rng;
use qat::Device;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A valid int8 graph of the small ResNet (trained a few steps, frozen).
fn valid() -> &'static ModelProto {
    static M: OnceLock<ModelProto> = OnceLock::new();
    M.get_or_init(|| {
        let m = trained(Arch::Small, true, 4, 31, &Device::cpu());
        export_int8(&Int8Net::build(&m).unwrap(), &info(Arch::Small)).unwrap()
    })
}

/// One of ONNX Runtime's quantized graphs of the fixture model
/// (`tests/data/ort_quantized/`).
fn ort_graph(name: &str) -> ModelProto {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/ort_quantized")
        .join(name);
    qat::executor::load::read_model(&path).unwrap()
}

/// The table and layout op graphs of `scripts/gen_executor_op_graphs.py`.
fn op_graphs() -> Vec<ModelProto> {
    ["qop_int8", "qop_uint8", "qdq_int8", "qdq_uint8"]
        .iter()
        .map(|g| {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/executor_ops")
                .join(format!("{g}.onnx"));
            qat::executor::load::read_model(&path).unwrap()
        })
        .collect()
}

fn ort_graphs() -> &'static [ModelProto; 3] {
    static M: OnceLock<[ModelProto; 3]> = OnceLock::new();
    M.get_or_init(|| {
        [
            "qop_u8u8_pre.onnx",
            "qop_s8s8_pre_asymw.onnx",
            "qdq_u8s8_pre.onnx",
        ]
        .map(ort_graph)
    })
}

fn err_of(m: &ModelProto) -> String {
    match Executor::from_model(m) {
        Ok(_) => panic!("the model was accepted"),
        Err(e) => e.to_string(),
    }
}

fn assert_err(m: &ModelProto, parts: &[&str]) {
    let e = err_of(m);
    for p in parts {
        assert!(e.contains(p), "error '{e}' does not mention '{p}'");
    }
}

fn with(f: impl FnOnce(&mut ModelProto)) -> ModelProto {
    let mut m = valid().clone();
    f(&mut m);
    m
}

fn init<'a>(m: &'a mut ModelProto, name: &str) -> &'a mut onnx_protobuf::TensorProto {
    let g = m.graph.as_mut().unwrap();
    g.initializer.iter_mut().find(|t| t.name == name).unwrap()
}

fn node<'a>(m: &'a mut ModelProto, name: &str) -> &'a mut onnx_protobuf::NodeProto {
    let g = m.graph.as_mut().unwrap();
    g.node.iter_mut().find(|n| n.name == name).unwrap()
}

#[test]
fn the_valid_model_runs() {
    let exec = Executor::from_model(valid()).unwrap();
    let (x, _) = images(1, 2);
    assert_eq!(exec.run(&x, 2).unwrap().len(), 20);
    assert!(exec.run(&x[..100], 2).is_err());
    assert_eq!(exec.run(&[], 0).unwrap().len(), 0);
}

#[test]
fn truncated_files_are_errors() {
    let bytes = valid().write_to_bytes().unwrap();
    let step = (bytes.len() / 300).max(1);
    for cut in (0..bytes.len()).step_by(step) {
        let r = catch_unwind(|| Executor::from_bytes(&bytes[..cut]));
        let r = r.unwrap_or_else(|_| panic!("panic on a file truncated to {cut} bytes"));
        assert!(
            r.is_err(),
            "a file truncated to {cut} of {} bytes was accepted",
            bytes.len()
        );
    }
    let dir = std::env::temp_dir().join(format!("qat-robust-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("cut.onnx");
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    let e = Executor::load(&p).unwrap_err().to_string();
    assert!(e.contains("cut.onnx"), "{e}");
    assert!(e.contains("the file ends inside graph"), "{e}");
    assert!(Executor::load(&dir.join("missing.onnx")).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every one-byte truncation of the last 600 bytes of an exported model is
/// an error that says the file is truncated. Most cut a field (the `onnx`
/// package refuses those too); 14 fall exactly between two top-level fields
/// (after opset_import or after a metadata entry), a valid protobuf prefix
/// that `onnx` and ONNX Runtime load, which the executor refuses because a
/// model written by qat lacks metadata entries.
#[test]
fn every_truncation_of_the_last_600_bytes_is_an_error() {
    let bytes = valid().write_to_bytes().unwrap();
    let whole = Executor::from_bytes(&bytes).unwrap();
    assert_eq!(whole.metadata().len(), 14);
    assert_eq!(whole.metadata()["std"], "[0.353]");
    let (mut inside, mut between) = (0, 0);
    for cut in bytes.len() - 600..bytes.len() {
        let r = catch_unwind(|| Executor::from_bytes(&bytes[..cut]))
            .unwrap_or_else(|_| panic!("panic on a file truncated to {cut} bytes"));
        let e = match r {
            Ok(exec) => panic!(
                "a file truncated to {cut} of {} bytes was accepted ({} metadata entries)",
                bytes.len(),
                exec.metadata().len()
            ),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
        if e.contains("the file ends inside") {
            inside += 1;
        } else {
            assert!(e.contains("metadata_props has no '"), "cut at {cut}: {e}");
            between += 1;
        }
    }
    assert_eq!((inside, between), (586, 14));
}

#[test]
fn an_empty_file_is_a_clear_error() {
    let e = Executor::from_bytes(&[]).unwrap_err().to_string();
    assert!(
        e.contains("empty file") && e.contains("not an ONNX model"),
        "{e}"
    );
    let dir = std::env::temp_dir().join(format!("qat-robust-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("empty.onnx");
    std::fs::write(&p, b"").unwrap();
    let e = Executor::load(&p).unwrap_err().to_string();
    assert!(e.contains("empty.onnx") && e.contains("empty file"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bytes` as field `number` (length-delimited) of the enclosing message.
fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut os = protobuf::CodedOutputStream::vec(&mut out);
    os.write_bytes(number, bytes).unwrap();
    os.flush().unwrap();
    drop(os);
    out
}

/// Runs both models on the same images: identical logits and int8 tensors.
fn assert_same_outputs(a: &Executor, b: &Executor) {
    let (x, _) = images(5, 3);
    assert_eq!(a.nodes(), b.nodes());
    assert_eq!(a.metadata(), b.metadata());
    let (ya, ta) = a.run_trace(&x, 3).unwrap();
    let (yb, tb) = b.run_trace(&x, 3).unwrap();
    assert_eq!(ya, yb);
    assert_eq!(ta, tb);
}

/// A `graph` field that appears twice merges (protobuf semantics, as in
/// `onnx` and ONNX Runtime): here the nodes are in the first occurrence and
/// the initializers, inputs and outputs in the second.
#[test]
fn a_split_graph_field_loads_and_runs_identically() {
    let whole = Executor::from_model(valid()).unwrap();
    let mut first = valid().clone();
    let g = first.graph.as_mut().unwrap();
    let mut rest = onnx_protobuf::GraphProto::new();
    rest.initializer = std::mem::take(&mut g.initializer);
    rest.input = std::mem::take(&mut g.input);
    rest.output = std::mem::take(&mut g.output);
    // A later scalar wins.
    rest.name = "renamed".into();
    let mut second = ModelProto::new();
    second.graph = Some(rest).into();
    let mut bytes = first.write_to_bytes().unwrap();
    bytes.extend(second.write_to_bytes().unwrap());
    let split = Executor::from_bytes(&bytes).unwrap();
    assert_same_outputs(&whole, &split);
    let parsed = qat::executor::load::parse_model(&bytes).unwrap();
    assert_eq!(parsed.graph.name, "renamed");
    assert_eq!(parsed.graph.node.len(), valid().graph.node.len());

    // The metadata between the two occurrences, and the graph in three.
    let mut head = valid().clone();
    let g = head.graph.take().unwrap();
    let (mut a, mut b, mut c) = (g.clone(), GraphProto::new(), GraphProto::new());
    b.node = a.node.split_off(a.node.len() / 2);
    c.initializer = a.initializer.split_off(a.initializer.len() / 3);
    let meta = std::mem::take(&mut head.metadata_props);
    let mut tail = ModelProto::new();
    tail.metadata_props = meta;
    let mut bytes = head.write_to_bytes().unwrap();
    bytes.extend(field(7, &a.write_to_bytes().unwrap()));
    bytes.extend(tail.write_to_bytes().unwrap());
    bytes.extend(field(7, &b.write_to_bytes().unwrap()));
    bytes.extend(field(7, &c.write_to_bytes().unwrap()));
    assert_same_outputs(&whole, &Executor::from_bytes(&bytes).unwrap());
}

/// A repeated singular field deeper down merges too: the graph input's
/// `type` given twice, the element type in one and the shape in the other.
#[test]
fn a_split_nested_field_merges() {
    let whole = Executor::from_model(valid()).unwrap();
    let mut head = valid().clone();
    let mut g = head.graph.take().unwrap();
    let input = g.input.remove(0);
    let mut elem_only = input.clone();
    let Some(type_proto::Value::TensorType(t)) = &mut elem_only.type_.as_mut().unwrap().value
    else {
        unreachable!()
    };
    let shape = t.shape.take().unwrap();
    let mut shape_only = onnx_protobuf::ValueInfoProto::new();
    let mut tt = type_proto::Tensor::new();
    tt.shape = Some(shape).into();
    let mut tp = onnx_protobuf::TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(tt));
    shape_only.type_ = Some(tp).into();
    let mut vi = elem_only.write_to_bytes().unwrap();
    vi.extend(shape_only.write_to_bytes().unwrap());
    let mut graph = g.write_to_bytes().unwrap();
    graph.extend(field(11, &vi));
    let mut bytes = head.write_to_bytes().unwrap();
    bytes.extend(field(7, &graph));
    let merged = Executor::from_bytes(&bytes).unwrap();
    assert_eq!(merged.input_dims(), whole.input_dims());
    assert_same_outputs(&whole, &merged);
    // Without the shape, the input is refused: the merge is what made it whole.
    let mut graph = g.write_to_bytes().unwrap();
    graph.extend(field(11, &elem_only.write_to_bytes().unwrap()));
    let mut bytes = head.write_to_bytes().unwrap();
    bytes.extend(field(7, &graph));
    let e = Executor::from_bytes(&bytes).unwrap_err().to_string();
    assert!(e.contains("has no shape"), "{e}");
}

#[test]
fn wrong_element_types_are_errors() {
    let m = with(|m| init(m, "layer1.0.conv1.weight_q").data_type = DataType::INT16 as i32);
    assert_err(&m, &["layer1.0.conv1.weight_q", "int16", "not supported"]);
    // float weights of the same byte length: wrong count, then wrong type.
    let m = with(|m| init(m, "layer1.0.conv1.weight_q").data_type = DataType::FLOAT as i32);
    assert_err(&m, &["layer1.0.conv1.weight_q"]);
    let m = with(|m| {
        let t = init(m, "layer1.0.conv1.bias_q");
        t.data_type = DataType::FLOAT as i32;
    });
    assert_err(&m, &["node 'layer1.0.conv1'", "bias"]);
    let m = with(|m| {
        let t = init(m, "stem.zero_point");
        t.data_type = DataType::INT32 as i32;
        t.raw_data = vec![0x80, 0xff, 0xff, 0xff];
    });
    assert_err(&m, &["node 'stem'", "stem.zero_point", "expected int8"]);
    let m = with(|m| {
        let g = m.graph.as_mut().unwrap();
        let Some(type_proto::Value::TensorType(t)) = &mut g.input[0].type_.as_mut().unwrap().value
        else {
            unreachable!()
        };
        t.elem_type = DataType::UINT8 as i32;
    });
    assert_err(&m, &["graph input", "uint8"]);
}

#[test]
fn missing_initializers_are_errors() {
    for (name, node_name) in [
        ("layer1.0.conv1.bias_q", "layer1.0.conv1"),
        ("layer2.0.add.scale", "layer2.0.add"),
        ("fc.weight_scale", "fc"),
        ("input.zero_point", "input.quantize"),
    ] {
        let m = with(|m| {
            m.graph
                .as_mut()
                .unwrap()
                .initializer
                .retain(|t| t.name != name)
        });
        assert_err(&m, &[&format!("node '{node_name}'"), name]);
    }
    let m = with(|m| node(m, "layer1.0.conv2").input[0] = "nowhere".into());
    assert_err(&m, &["node 'layer1.0.conv2'", "nowhere"]);
    // Nodes out of order: an input used before it is computed.
    let m = with(|m| m.graph.as_mut().unwrap().node.swap(1, 2));
    assert_err(&m, &["not produced by any earlier node"]);
    let m = with(|m| m.graph = None.into());
    assert_err(&m, &["no graph"]);
}

#[test]
fn absurd_dimensions_and_attributes_are_errors() {
    let m = with(|m| init(m, "stem.weight_q").dims = vec![1 << 40, 1 << 40, 3, 3]);
    assert_err(&m, &["stem.weight_q", "exceed"]);
    let m = with(|m| init(m, "stem.weight_q").dims = vec![-1, 1, 3, 3]);
    assert_err(&m, &["negative"]);
    let m = with(|m| init(m, "stem.weight_q").dims = vec![16, 1, 9, 1]);
    assert_err(&m, &["node 'stem'", "kernel_shape"]);
    let m = with(|m| {
        let g = m.graph.as_mut().unwrap();
        let Some(type_proto::Value::TensorType(t)) = &mut g.input[0].type_.as_mut().unwrap().value
        else {
            unreachable!()
        };
        t.shape.as_mut().unwrap().dim[2].value = Some(dimension::Value::DimValue(1 << 45));
    });
    assert_err(&m, &["graph input", "exceed"]);
    for (attr, v) in [
        ("strides", vec![0, 1]),
        ("pads", vec![-1, 0, 0, 0]),
        ("dilations", vec![1 << 40, 1]),
    ] {
        let m = with(|m| {
            let a = node(m, "layer1.0.conv1")
                .attribute
                .iter_mut()
                .find(|a| a.name == attr)
                .unwrap();
            a.ints = v.clone();
        });
        assert_err(&m, &["node 'layer1.0.conv1'", attr]);
    }
    let m = with(|m| {
        let a = node(m, "layer1.0.conv1")
            .attribute
            .iter_mut()
            .find(|a| a.name == "pads")
            .unwrap();
        a.ints = vec![1, 1, 1];
    });
    assert_err(&m, &["pads", "expected 4"]);
    // A kernel that needs more input than there is.
    let m = with(|m| {
        let a = node(m, "layer3.1.conv1")
            .attribute
            .iter_mut()
            .find(|a| a.name == "dilations")
            .unwrap();
        a.ints = vec![100, 100];
    });
    assert_err(&m, &["node 'layer3.1.conv1'", "does not fit"]);
    let m = with(|m| {
        let a = node(m, "gap")
            .attribute
            .iter_mut()
            .find(|a| a.name == "channels_last")
            .unwrap();
        a.i = 1;
    });
    assert_err(&m, &["node 'gap'", "channels_last"]);
    let m = with(|m| {
        let t = init(m, "layer1.0.add.scale");
        t.raw_data = f32::NAN.to_le_bytes().to_vec();
    });
    assert_err(&m, &["node 'layer1.0.add'", "positive finite"]);
    // Scales so far apart that S7's int64 form would overflow.
    let m = with(|m| init(m, "layer1.0.add.scale").raw_data = 1e-30f32.to_le_bytes().to_vec());
    assert_err(&m, &["node 'layer1.0.add'"]);
}

#[test]
fn unknown_ops_and_opsets_are_errors() {
    let m = with(|m| node(m, "layer1.0.add").op_type = "Softmax".into());
    assert_err(&m, &["Softmax", "not supported"]);
    let m = with(|m| node(m, "gap").domain = "com.example".into());
    assert_err(&m, &["QLinearGlobalAveragePool", "com.example"]);
    let m = with(|m| m.opset_import[0].version = 9);
    assert_err(&m, &["opset 9"]);
    let m = with(|m| m.opset_import[0].version = 24);
    assert_err(&m, &["opset 24"]);
    let m = with(|m| m.opset_import.retain(|o| o.domain != "com.microsoft"));
    assert_err(&m, &["com.microsoft"]);
    let m = with(|m| m.ir_version = 99);
    assert_err(&m, &["IR version 99"]);
    let m = with(|m| {
        let n = node(m, "layer1.0.conv1");
        let mut a = n.attribute[0].clone();
        a.name = "frobnicate".into();
        n.attribute.push(a);
    });
    assert_err(&m, &["node 'layer1.0.conv1'", "frobnicate"]);
    let m = with(|m| node(m, "layer1.0.conv2").output[0] = "layer1.0.conv1".into());
    assert_err(&m, &["defined more than once"]);
}

/// One structural mutation: a field of a random initializer, node,
/// attribute or the graph set to a troublesome value.
fn mutate(m: &mut ModelProto, rng: &mut Rng) {
    const INTS: [i64; 10] = [-1, 0, 1, 2, 3, 7, 255, 1 << 31, 1 << 62, i64::MAX];
    let pick = |rng: &mut Rng, n: usize| rng.below(n.max(1) as u64) as usize;
    let g = m.graph.as_mut().unwrap();
    match rng.below(10) {
        0 if !g.initializer.is_empty() => {
            let i = pick(rng, g.initializer.len());
            let t = &mut g.initializer[i];
            if t.dims.is_empty() {
                t.dims.push(INTS[pick(rng, 10)]);
            } else {
                let d = pick(rng, t.dims.len());
                t.dims[d] = INTS[pick(rng, 10)];
            }
        }
        1 if !g.initializer.is_empty() => {
            let i = pick(rng, g.initializer.len());
            g.initializer[i].data_type = rng.below(20) as i32;
        }
        2 if !g.initializer.is_empty() => {
            let i = pick(rng, g.initializer.len());
            let t = &mut g.initializer[i];
            match rng.below(3) {
                0 => t.raw_data.truncate(pick(rng, t.raw_data.len())),
                1 => {
                    for b in t.raw_data.iter_mut() {
                        if rng.below(8) == 0 {
                            *b = rng.below(256) as u8;
                        }
                    }
                }
                _ => {
                    let bad = [0.0f32, -1.0, f32::NAN, f32::INFINITY, 1e30, 1e-45, 1e-20];
                    t.raw_data = bad[pick(rng, bad.len())].to_le_bytes().to_vec();
                }
            }
        }
        3 if !g.node.is_empty() => {
            let i = pick(rng, g.node.len());
            let n = &mut g.node[i];
            if !n.attribute.is_empty() {
                let a = pick(rng, n.attribute.len());
                let a = &mut n.attribute[a];
                a.i = INTS[pick(rng, 10)];
                if !a.ints.is_empty() {
                    let k = pick(rng, a.ints.len());
                    a.ints[k] = INTS[pick(rng, 10)];
                }
                if rng.below(4) == 0 {
                    a.type_ = protobuf::EnumOrUnknown::from_i32(rng.below(12) as i32);
                }
            }
        }
        4 if !g.node.is_empty() => {
            let i = pick(rng, g.node.len());
            let n = &mut g.node[i];
            if !n.input.is_empty() {
                let k = pick(rng, n.input.len());
                match rng.below(3) {
                    0 => {
                        n.input.remove(k);
                    }
                    1 => n.input[k] = String::new(),
                    _ => {
                        let j = pick(rng, n.input.len());
                        n.input.swap(k, j);
                    }
                }
            }
        }
        5 if g.node.len() > 1 => {
            let (i, j) = (pick(rng, g.node.len()), pick(rng, g.node.len()));
            g.node.swap(i, j);
        }
        6 if !g.node.is_empty() => {
            let i = pick(rng, g.node.len());
            g.node.remove(i);
        }
        7 if !g.node.is_empty() => {
            let i = pick(rng, g.node.len());
            let ops = [
                "QLinearConv",
                "MaxPool",
                "Flatten",
                "QLinearAdd",
                "DequantizeLinear",
                "Relu",
                "Transpose",
                "Reshape",
                "QLinearLeakyRelu",
                "QLinearSigmoid",
            ];
            g.node[i].op_type = ops[pick(rng, ops.len())].into();
        }
        8 => {
            let Some(type_proto::Value::TensorType(t)) = g
                .input
                .first_mut()
                .and_then(|i| i.type_.as_mut())
                .and_then(|t| t.value.as_mut())
            else {
                return;
            };
            if let Some(s) = t.shape.as_mut() {
                if !s.dim.is_empty() {
                    let d = pick(rng, s.dim.len());
                    s.dim[d].value = Some(dimension::Value::DimValue(INTS[pick(rng, 10)]));
                }
            }
        }
        _ => {
            let i = pick(rng, g.initializer.len());
            if i < g.initializer.len() && rng.below(2) == 0 {
                g.initializer.remove(i);
            }
        }
    }
}

/// Loads (and when valid, runs) a candidate; a panic fails the test with
/// the seed that reproduces it.
fn try_model(bytes: &[u8], seed: u64, x: &[f32]) -> bool {
    let r = catch_unwind(AssertUnwindSafe(|| match Executor::from_bytes(bytes) {
        Ok(exec) => {
            let n = 2;
            let _ = exec.run(&x[..n * 784], n);
            true
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            false
        }
    }));
    r.unwrap_or_else(|_| panic!("the executor panicked on fuzz case {seed}"))
}

/// Random mutations of the serialized bytes and of the model's structure,
/// for a bounded time (QAT_FUZZ_SECS, default 8 s).
#[test]
fn fuzz_loader_random_mutations() {
    let secs: u64 = std::env::var("QAT_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let deadline = Instant::now() + Duration::from_secs(secs);
    // Our export and ONNX Runtime's QOperator (uint8, QGemm, weight zero
    // points) and QDQ graphs of the fixture model, and the graphs of the
    // table and layout ops (LeakyRelu, Sigmoid, broadcasting add,
    // Transpose, Reshape).
    let ops = op_graphs();
    let models: Vec<&ModelProto> = std::iter::once(valid())
        .chain(ort_graphs())
        .chain(&ops)
        .collect();
    let bases: Vec<Vec<u8>> = models.iter().map(|m| m.write_to_bytes().unwrap()).collect();
    let (x, _) = images(2, 2);
    let (mut cases, mut accepted) = (0u64, 0u64);
    while Instant::now() < deadline {
        let seed = cases;
        let mut rng = Rng::new(seed);
        let which = (seed / 2 % models.len() as u64) as usize;
        let bytes = if seed % 2 == 0 {
            // Byte-level: flips, overwrites, cuts, insertions, duplications.
            let mut b = bases[which].clone();
            for _ in 0..1 + rng.below(6) {
                let at = rng.below(b.len() as u64) as usize;
                match rng.below(5) {
                    0 => b[at] ^= 1 << rng.below(8),
                    1 => b[at] = [0x00, 0xff, 0x7f, 0x80][rng.below(4) as usize],
                    2 => b.truncate(at),
                    3 => {
                        let junk: Vec<u8> =
                            (0..rng.below(16)).map(|_| rng.below(256) as u8).collect();
                        b.splice(at..at, junk);
                    }
                    _ => {
                        let len = (rng.below(64) as usize).min(b.len() - at);
                        let chunk = b[at..at + len].to_vec();
                        b.splice(at..at, chunk);
                    }
                }
                if b.is_empty() {
                    break;
                }
            }
            b
        } else {
            let mut m = models[which].clone();
            for _ in 0..1 + rng.below(3) {
                mutate(&mut m, &mut rng);
            }
            m.write_to_bytes().unwrap()
        };
        accepted += u64::from(try_model(&bytes, seed, &x));
        cases += 1;
    }
    println!(
        "fuzz: {cases} mutated models in {secs} s, {accepted} accepted and run, none panicked"
    );
    assert!(cases > 20, "only {cases} cases ran");
}

/// A QAT checkpoint of `model` as `qat train` writes one (weights, and the
/// configuration, model description and quantizer states in its metadata),
/// with `states` as its quantizer states.
fn save_checkpoint(
    model: &qat::graph::Graph,
    states: &std::collections::BTreeMap<String, qat::nn::ActQuantState>,
    path: &std::path::Path,
) {
    let mut ck = qat::checkpoint::Checkpoint::from_module(model).unwrap();
    ck.extra = serde_json::json!({
        "config": {
            "arch": "small", "data_dir": "unused", "epochs": 1, "batch_size": 16,
            "lr": 0.02, "momentum": 0.9, "weight_decay": 0.0, "nesterov": false,
            "label_smoothing": 0.0, "warmup_epochs": 0.0, "seed": 31, "out": "unused",
            "qat": {"act_quant_start": 0.0, "freeze_bn": 0.5, "freeze_observers": 1.0,
                    "observer_momentum": 0.01},
            "train_limit": null, "val_limit": null, "progress": false
        },
        "model": info(Arch::Small),
        "quantizers": states,
    });
    ck.save(path).unwrap();
}

/// `qat export` refuses a checkpoint whose quantizer state no int8 graph can
/// be built from (a frozen scale of 0, negative or below 2^-23, a zero point
/// outside int8), naming the quantizer and what to do, and writes nothing;
/// the same checkpoint with sound states exports a file the executor loads.
/// (A NaN or infinite scale cannot be stored: the checkpoint's JSON metadata
/// writes it as null, which loading refuses. The model-level check that
/// export runs refuses those too, see `check_quantizers_refuses_nan_and_inf`.)
#[test]
fn export_refuses_invalid_quantizer_states() {
    let model = trained(Arch::Small, true, 4, 31, &Device::cpu());
    let good = model.save_quantizers().unwrap();
    let dir = std::env::temp_dir().join(format!("qat-robust-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ck, out) = (dir.join("checkpoint.safetensors"), dir.join("model.onnx"));
    save_checkpoint(&model, &good, &ck);
    qat::onnx::export_checkpoint(&ck, &out, false).unwrap();
    let exec = Executor::load(&out).unwrap();
    assert_eq!(exec.metadata()["class_names"], "[\"class0\",\"class1\",\"class2\",\"class3\",\"class4\",\"class5\",\"class6\",\"class7\",\"class8\",\"class9\"]");
    std::fs::remove_file(&out).unwrap();
    for (quantizer, scale, zero_point, what) in [
        (
            "layer1.0.add",
            Some(0.0),
            None,
            "scale 0 is not a positive finite number",
        ),
        (
            "fc",
            Some(-0.05),
            None,
            "scale -0.05 is not a positive finite number",
        ),
        (
            "input",
            Some(-1.0),
            None,
            "scale -1 is not a positive finite number",
        ),
        (
            "layer2.0.conv1",
            Some(1e-45),
            None,
            "below the smallest scale",
        ),
        (
            "stem",
            None,
            Some(200),
            "zero point 200 is outside the int8 range",
        ),
        ("layer3.1.add", None, Some(-129), "zero point -129"),
    ] {
        let mut states = good.clone();
        let st = states.get_mut(quantizer).unwrap();
        let (s, z) = st.frozen.unwrap();
        st.frozen = Some((scale.unwrap_or(s), zero_point.unwrap_or(z)));
        save_checkpoint(&model, &states, &ck);
        let e = qat::onnx::export_checkpoint(&ck, &out, false)
            .unwrap_err()
            .to_string();
        for part in [
            &format!("quantizer '{quantizer}': frozen "),
            what,
            "export an earlier checkpoint",
            "nothing was written",
        ] {
            assert!(
                e.contains(part),
                "{quantizer}: '{e}' does not mention '{part}'"
            );
        }
        assert!(!out.exists(), "{quantizer}: a file was written");
    }
    // The command line: a non-zero exit and the same message (the
    // checkpoint still holds the last bad state).
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_qat"))
        .args(["export", "--checkpoint"])
        .arg(&ck)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        log.contains("quantizer 'layer3.1.add': frozen zero point -129"),
        "{log}"
    );
    assert!(!out.exists());
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["checkpoint.safetensors"],
        "temporary files left behind"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The last gate: `export_int8` runs the executor's validation on what it
/// built, so an Int8Net that passes the early checks but yields a graph
/// the executor refuses (here a weight scale of 0) is an export error.
#[test]
fn export_int8_refuses_what_the_executor_refuses() {
    let model = trained(Arch::Small, true, 4, 31, &Device::cpu());
    let mut int8 = Int8Net::build(&model).unwrap();
    let unit = int8
        .steps
        .iter_mut()
        .find_map(|s| match &mut s.kind {
            qat::int8::StepKind::Conv(c) if c.name == "layer2.0.conv1" => Some(c),
            _ => None,
        })
        .unwrap();
    unit.s_w[3] = 0.0;
    let e = match export_int8(&int8, &info(Arch::Small)) {
        Ok(_) => panic!("the graph was exported"),
        Err(e) => e.to_string(),
    };
    for part in [
        "int8 executor's validation",
        "layer2.0.conv1",
        "weight_scale",
    ] {
        assert!(e.contains(part), "'{e}' does not mention '{part}'");
    }
}

#[test]
fn check_quantizers_refuses_nan_and_inf() {
    let model = trained(Arch::Small, true, 4, 31, &Device::cpu());
    let good = model.save_quantizers().unwrap();
    qat::onnx::check_quantizers(&model).unwrap();
    for (quantizer, scale) in [("gap", f32::NAN), ("input", f32::INFINITY), ("fc", 0.0)] {
        let mut states = good.clone();
        let st = states.get_mut(quantizer).unwrap();
        st.frozen = Some((scale, st.frozen.unwrap().1));
        model.load_quantizers(&states).unwrap();
        let e = qat::onnx::check_quantizers(&model).unwrap_err().to_string();
        let want =
            format!("quantizer '{quantizer}': frozen scale {scale} is not a positive finite");
        assert!(e.contains(&want), "'{e}' does not mention '{want}'");
        // The library path refuses it as well, naming the same quantizer.
        if let Ok(int8) = Int8Net::build(&model) {
            let e = match export_int8(&int8, &info(Arch::Small)) {
                Ok(_) => panic!("{quantizer}: exported"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(&format!("quantizer '{quantizer}'")), "{e}");
        }
    }
    model.load_quantizers(&good).unwrap();
}

/// The metadata entries the executor requires of a qat model are exactly
/// those export writes, in its order, for both graphs.
#[test]
fn exported_metadata_is_what_the_executor_requires() {
    use qat::executor::validate::{QAT_METADATA_KEYS, QAT_PRODUCER};
    let fp32 = trained(Arch::Small, false, 1, 5, &Device::cpu());
    let fp32 = qat::onnx::export_fp32(&fp32, &info(Arch::Small)).unwrap();
    for m in [valid(), &fp32] {
        assert_eq!(m.producer_name, QAT_PRODUCER);
        let keys: Vec<&str> = m.metadata_props.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, QAT_METADATA_KEYS);
    }
    // Dropping one is refused as a truncation.
    let m = with(|m| m.metadata_props.retain(|e| e.key != "mean"));
    assert_err(&m, &["metadata_props has no 'mean' entry", "truncated"]);
}

/// Malformed QLinearConcat and QLinearAveragePool nodes are errors naming
/// the node and the problem.
#[test]
fn malformed_concat_and_avg_pool_nodes_are_errors() {
    let m = onnx_util::train_steps(
        onnx_util::pool_concat_graph(&Device::cpu(), 3),
        true,
        4,
        3,
        &Device::cpu(),
    );
    let valid = export_int8(&Int8Net::build(&m).unwrap(), &info(Arch::Small)).unwrap();
    Executor::from_model(&valid).unwrap();
    let ops: Vec<(&str, &str)> = valid
        .graph
        .node
        .iter()
        .map(|n| (n.name.as_str(), n.op_type.as_str()))
        .collect();
    assert!(ops.contains(&("cat", "QLinearConcat")));
    assert!(ops.contains(&("pool1", "QLinearAveragePool")));
    let set = |name: &str, f: &dyn Fn(&mut onnx_protobuf::NodeProto)| {
        let mut m = valid.clone();
        f(node(&mut m, name));
        m
    };
    // A missing zero point leaves an incomplete triple.
    let short = set("cat", &|n| {
        n.input.pop();
    });
    assert_err(&short, &["cat", "triple"]);
    let axis = set("cat", &|n| {
        n.attribute.iter_mut().find(|a| a.name == "axis").unwrap().i = 2;
    });
    assert_err(&axis, &["cat", "axis 2", "channel axis"]);
    // An input computed only after the concat.
    let later = set("cat", &|n| {
        n.input[2] = "pool1".into();
        n.input[3] = "pool1.scale".into();
        n.input[4] = "pool1.zero_point".into();
    });
    assert_err(
        &later,
        &["cat", "pool1", "not produced by any earlier node"],
    );
    let asym = set("pool1", &|n| {
        let a = n.attribute.iter_mut().find(|a| a.name == "pads").unwrap();
        a.ints = vec![1, 1, 0, 0];
    });
    assert_err(&asym, &["pool1", "symmetric"]);
    let both = set("pool1", &|n| {
        for a in n.attribute.iter_mut() {
            if a.name == "ceil_mode" || a.name == "count_include_pad" {
                a.i = 1;
            }
        }
    });
    assert_err(&both, &["pool1", "ceil_mode with count_include_pad"]);
}

/// ONNX Runtime's quantized graphs load and run; malformed QGemm, uint8,
/// weight-zero-point and QDQ forms are errors naming the node and the
/// problem.
#[test]
fn ort_quantized_graphs_run_and_malformed_forms_are_errors() {
    let (x, _) = images(3, 2);
    for m in ort_graphs() {
        let exec = Executor::from_model(m).unwrap();
        assert_eq!(exec.run(&x, 2).unwrap().len(), 20);
    }
    let [u8u8, asymw, qdq] = ort_graphs();
    let edit = |m: &ModelProto, f: &dyn Fn(&mut ModelProto)| {
        let mut m = m.clone();
        f(&mut m);
        m
    };
    // QGemm: unsupported attributes and shapes.
    let m = edit(u8u8, &|m| {
        let n = node(m, "fc_quant");
        let mut a = n.attribute[0].clone();
        a.name = "transA".into();
        a.type_ = AttributeType::INT.into();
        a.i = 1;
        n.attribute.retain(|a| a.name != "transA");
        n.attribute.push(a);
    });
    assert_err(&m, &["node 'fc_quant' (QGemm)", "transA"]);
    let m = edit(u8u8, &|m| {
        node(m, "fc_quant").input.truncate(8);
    });
    assert_err(&m, &["node 'fc_quant' (QGemm)", "y_zero_point is required"]);
    let m = edit(u8u8, &|m| {
        node(m, "fc_quant").input.truncate(7);
    });
    assert_err(&m, &["node 'fc_quant' (QGemm)", "float output"]);
    let m = edit(u8u8, &|m| {
        init(m, "fc.weight_quantized").dims = vec![64, 10]
    });
    assert_err(
        &m,
        &[
            "node 'fc_quant' (QGemm)",
            "fc.weight_quantized",
            "does not fit",
        ],
    );
    // A zero point whose type is not its tensor's.
    let m = edit(u8u8, &|m| {
        let mut t = init(m, "stem.bn_zero_point").clone();
        t.name = "z_i8".into();
        t.data_type = DataType::INT8 as i32;
        m.graph.as_mut().unwrap().initializer.push(t);
        node(m, "layer1.0.conv1.conv_quant").input[2] = "z_i8".into();
    });
    assert_err(
        &m,
        &[
            "node 'layer1.0.conv1.conv_quant'",
            "z_i8",
            "int8 but the tensor it belongs to is uint8",
        ],
    );
    // Weight zero points of another type than the weight.
    let name = "ConvBnFusion_W_stem.conv.weight_zero_point";
    let m = edit(asymw, &|m| {
        let t = init(m, name);
        t.data_type = DataType::UINT8 as i32;
        t.int32_data.iter_mut().for_each(|v| *v &= 0xff);
        t.raw_data.clear();
        if t.int32_data.is_empty() {
            t.int32_data = vec![0; t.dims[0] as usize];
        }
    });
    assert_err(
        &m,
        &[
            "node 'stem.conv_quant'",
            name,
            "uint8 but the weight is int8",
        ],
    );
    // QDQ: a Conv whose output goes to no QuantizeLinear is not fused and
    // computes in float.
    let m = edit(qdq, &|m| {
        let g = m.graph.as_mut().unwrap();
        let q = g
            .node
            .iter()
            .position(|n| n.name == "stem.relu_QuantizeLinear")
            .unwrap();
        // The Conv's output read by a second, float consumer too.
        let mut extra = g.node[q].clone();
        extra.name = "extra_q".into();
        extra.output = vec!["extra_out".into()];
        g.node.insert(q + 1, extra);
    });
    assert_err(
        &m,
        &[
            "not integer-only",
            "node 'stem.conv' (Conv)",
            "computes in float",
        ],
    );
    // Different scales on the DequantizeLinear and QuantizeLinear around a
    // Flatten: not fused, so the Flatten computes in float.
    let m = edit(qdq, &|m| {
        node(m, "gap.flatten_QuantizeLinear").input[1] = "logits_scale".into();
    });
    assert_err(&m, &["not integer-only", "node 'gap.flatten' (Flatten)"]);
    // Without the com.microsoft import the QOperator graph's ops are refused,
    // the fused QDQ graph still loads (fusion needs no import).
    let m = edit(u8u8, &|m| {
        m.opset_import.retain(|o| o.domain != "com.microsoft")
    });
    assert_err(&m, &["com.microsoft"]);
    let m = edit(qdq, &|m| {
        m.opset_import.retain(|o| o.domain != "com.microsoft")
    });
    Executor::from_model(&m).unwrap();
    // Opsets and IR versions ORT accepts for these ops.
    for (opset, ir) in [(10, 5), (13, 7), (21, 10), (23, 14)] {
        let m = edit(asymw, &|m| {
            m.ir_version = ir;
            m.opset_import
                .iter_mut()
                .filter(|o| o.domain.is_empty())
                .for_each(|o| o.version = opset);
        });
        Executor::from_model(&m).unwrap_or_else(|e| panic!("opset {opset}, IR {ir}: {e}"));
    }
}
