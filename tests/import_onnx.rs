//! `qat import`: FP32 ONNX graphs written by `torch.onnx.export` (PyTorch
//! 2.15.0, torchvision 0.29.2; `scripts/gen_import_fixtures.py`, files in
//! `tests/data/import/`) read into the network graph. The imported graph's
//! FP32 forward must give ONNX Runtime's logits on the same file (recorded
//! by the script) within 1e-4 relative; broken files and unsupported graphs
//! are errors that name the node, never panics.

mod common;

use common::{qat_bin, temp_dir};
use onnx_protobuf::{Message, ModelProto};
use qat::executor::load::parse_model;
use qat::import::import;
use qat::nn::{Mode, Module};
use qat::{Device, Tensor};
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/import")
}

/// A little-endian float32 `.npy` file: (shape, values).
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..6], b"\x93NUMPY", "{}", path.display());
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen]).unwrap();
    assert!(header.contains("'<f4'") && header.contains("'fortran_order': False"));
    let inner = header.split("'shape': (").nth(1).unwrap();
    let shape: Vec<usize> = inner
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let values = b[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, values)
}

/// The graph's FP32 eval logits on `x`, and their largest absolute
/// difference from `want` with the largest |want| (the scale of the
/// relative tolerance).
fn logits_and_error(g: &qat::graph::Graph, x: &Tensor, want: &[f32]) -> (Vec<f32>, f32, f32) {
    let got = qat::autograd::no_grad(|| g.forward(x, Mode::Eval))
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
    (got, err, scale)
}

fn cases() -> Vec<String> {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap())
            .unwrap();
    manifest["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

fn load(name: &str) -> ModelProto {
    parse_model(&std::fs::read(dir().join(format!("{name}.onnx"))).unwrap()).unwrap()
}

#[test]
fn imported_graphs_match_onnx_runtime() {
    let dev = Device::cpu();
    let names = cases();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        let m = load(&name);
        let imp = import(&m, &dev).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (shape, x) = read_npy(&dir().join(format!("{name}.input.npy")));
        let (_, want) = read_npy(&dir().join(format!("{name}.ort_logits.npy")));
        assert_eq!(
            shape[1..],
            [imp.input.channels, imp.input.hw[0], imp.input.hw[1]]
        );
        let x = Tensor::from_vec(x, shape.clone(), &dev).unwrap();
        let (_, err, scale) = logits_and_error(&imp.graph, &x, &want);
        println!(
            "{name}: {} ONNX nodes -> {} graph nodes, max |qat - ORT| = {err:.2e} (max |logit| {scale:.3})",
            imp.onnx_nodes,
            imp.graph.nodes().len()
        );
        assert!(err <= 1e-4 * scale, "{name}: {err} vs {scale}");
        assert_eq!(imp.num_classes, 10);
    }
}

/// BN folded by the exporter becomes a Conv with bias; kept, a Conv+BN
/// unit; torchvision's module names become node names either way.
#[test]
fn patterns_and_names() {
    let dev = Device::cpu();
    let kinds = |name: &str| -> Vec<(String, &'static str)> {
        import(&load(name), &dev)
            .unwrap()
            .graph
            .nodes()
            .iter()
            .map(|n| (n.name.clone(), n.op.kind()))
            .collect()
    };
    let eval = kinds("resnet_tiny_eval_op13");
    let keep = kinds("resnet_tiny_preserve_op13");
    assert_eq!(eval.len(), keep.len());
    assert!(eval.iter().all(|(_, k)| *k != "conv+bn"));
    assert!(keep.iter().all(|(_, k)| *k != "conv"));
    for want in [
        "conv1",
        "maxpool",
        "layer1.0.conv1",
        "layer2.0.downsample.0",
        "layer4.0.add",
        "avgpool",
        "fc",
    ] {
        assert!(keep.iter().any(|(n, _)| n == want), "{want} in {keep:?}");
        assert!(eval.iter().any(|(n, _)| n == want), "{want} in {eval:?}");
    }
    let mnv2 = kinds("mnv2_w025_preserve_op13");
    assert!(
        mnv2.iter()
            .any(|(n, k)| n == "features.2.conv.1.0" && *k == "conv+bn"),
        "{mnv2:?}"
    );
    assert!(mnv2.iter().any(|(n, _)| n == "classifier.1"), "{mnv2:?}");
}

fn err_of(m: &ModelProto) -> String {
    match import(m, &Device::cpu()) {
        Ok(_) => panic!("the model was accepted"),
        Err(e) => e.to_string(),
    }
}

fn node<'a>(m: &'a mut ModelProto, op: &str) -> &'a mut onnx_protobuf::NodeProto {
    let g = m.graph.as_mut().unwrap();
    g.node.iter_mut().find(|n| n.op_type == op).unwrap()
}

#[test]
fn unsupported_and_broken_graphs_are_clear_errors() {
    let base = load("resnet_tiny_preserve_op13");
    let edit = |f: &dyn Fn(&mut ModelProto)| {
        let mut m = base.clone();
        f(&mut m);
        err_of(&m)
    };
    // An unknown op is named with the node and the list of what is supported.
    let e = edit(&|m| node(m, "MaxPool").op_type = "LpPool".into());
    assert!(
        e.contains("LpPool") && e.contains("/maxpool/") && e.contains("supported"),
        "{e}"
    );
    let e = edit(&|m| node(m, "Relu").op_type = "Sigmoid".into());
    assert!(e.contains("Sigmoid") && e.contains("not supported"), "{e}");
    // A Clip that is not ReLU6.
    let mnv2 = load("mnv2_w025_eval_op13");
    let mut m = mnv2.clone();
    let g = m.graph.as_mut().unwrap();
    let clip = g.node.iter().find(|n| n.op_type == "Clip").unwrap().clone();
    let hi = clip.input[2].clone();
    let c = g.node.iter_mut().find(|n| n.output[0] == hi).unwrap();
    let t = c.attribute[0].t.as_mut().unwrap();
    t.raw_data = 4.0f32.to_le_bytes().to_vec();
    let e = err_of(&m);
    assert!(e.contains("Clip to [0, 4]") && e.contains("ReLU6"), "{e}");
    // A missing weight.
    let e = edit(&|m| {
        let g = m.graph.as_mut().unwrap();
        g.initializer.retain(|t| t.name != "layer1.0.conv1.weight");
    });
    assert!(e.contains("layer1.0.conv1.weight"), "{e}");
    // A mis-shaped BN parameter.
    let e = edit(&|m| {
        let g = m.graph.as_mut().unwrap();
        let t = g
            .initializer
            .iter_mut()
            .find(|t| t.name == "bn1.running_var")
            .unwrap();
        t.dims = vec![4];
        t.raw_data.truncate(16);
    });
    assert!(
        e.contains("bn1.running_var") && e.contains("expected [8]"),
        "{e}"
    );
    // Asymmetric pads, a dynamic image size, two outputs.
    let e = edit(&|m| {
        let a = node(m, "Conv")
            .attribute
            .iter_mut()
            .find(|a| a.name == "pads")
            .unwrap();
        a.ints = vec![3, 3, 2, 2];
    });
    assert!(e.contains("not symmetric"), "{e}");
    let e = edit(&|m| {
        let g = m.graph.as_mut().unwrap();
        let t = g.input[0].type_.as_mut().unwrap();
        if let Some(onnx_protobuf::type_proto::Value::TensorType(tt)) = t.value.as_mut() {
            let d = &mut tt.shape.as_mut().unwrap().dim[2];
            d.value =
                Some(onnx_protobuf::tensor_shape_proto::dimension::Value::DimParam("h".into()));
        }
    });
    assert!(e.contains("fixed image size"), "{e}");
    let e = edit(&|m| {
        let g = m.graph.as_mut().unwrap();
        let o = g.output[0].clone();
        g.output.push(o);
    });
    assert!(e.contains("2 outputs"), "{e}");
    // Every truncation of the file is an error, never a panic.
    let bytes = base.write_to_bytes().unwrap();
    for cut in (0..bytes.len()).step_by(bytes.len() / 97) {
        let r = std::panic::catch_unwind(|| {
            parse_model(&bytes[..cut]).and_then(|m| import(&m, &Device::cpu()).map(|_| ()))
        });
        assert!(matches!(r, Ok(Err(_))), "cut at {cut}");
    }
}

/// `qat import` -> `qat eval` / `qat export --fp32` through the binary.
#[test]
fn cli_import_then_eval_and_export() {
    let out = temp_dir("import-cli");
    let onnx = dir().join("resnet_tiny_preserve_op13.onnx");
    let o = out.to_str().unwrap();
    let (ok, log) = qat_bin(&["import", onnx.to_str().unwrap(), "--out", o]);
    assert!(!ok && log.contains("--mean"), "{log}");
    let (ok, log) = qat_bin(&[
        "import",
        onnx.to_str().unwrap(),
        "--out",
        o,
        "--mean",
        "0.286",
        "--std",
        "0.353",
    ]);
    assert!(ok, "{log}");
    assert!(
        log.contains("[N, 1, 28, 28]") && log.contains("10 classes"),
        "{log}"
    );
    let ck = out.join("checkpoint.safetensors");
    let fp32 = out.join("model.fp32.onnx");
    let (ok, log) = qat_bin(&[
        "export",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--out",
        fp32.to_str().unwrap(),
        "--fp32",
    ]);
    assert!(ok, "{log}");
    // The re-exported graph imports again to the same logits.
    let dev = Device::cpu();
    let a = import(&load("resnet_tiny_preserve_op13"), &dev).unwrap();
    let b = import(&parse_model(&std::fs::read(&fp32).unwrap()).unwrap(), &dev).unwrap();
    let (shape, x) = read_npy(&dir().join("resnet_tiny_preserve_op13.input.npy"));
    let x = Tensor::from_vec(x, shape, &dev).unwrap();
    let run = |g: &qat::graph::Graph| {
        qat::autograd::no_grad(|| g.forward(&x, Mode::Eval))
            .unwrap()
            .to_vec()
            .unwrap()
    };
    assert_eq!(run(&a.graph), run(&b.graph));
    let _ = std::fs::remove_dir_all(&out);
}

/// Optional, by hand (the files are 1 GB): with `QAT_IMPORT_FULL=DIR` set
/// to the folder `scripts/gen_import_fixtures.py --full DIR` writes, every
/// full-size torchvision export there (resnet18/34/50, mobilenet_v2; eval
/// and preserve modes, opsets 13 and 18) imports and matches ORT's logits.
#[test]
fn full_size_torchvision_exports_on_request() {
    let Ok(full) = std::env::var("QAT_IMPORT_FULL") else {
        println!("QAT_IMPORT_FULL not set: the full-size torchvision check was not requested");
        return;
    };
    let dev = Device::cpu();
    let mut n = 0;
    for e in std::fs::read_dir(&full).unwrap() {
        let p = e.unwrap().path();
        let file = p.file_name().unwrap().to_str().unwrap().to_string();
        if let Some(arch) = file.strip_suffix(".safetensors") {
            // A full-size torchvision state dict against PyTorch's logits.
            let bytes = std::fs::read(&p).unwrap();
            let tv = qat::import::torchvision::load(arch.parse().unwrap(), &bytes, &dev);
            let (g, _) = tv.unwrap_or_else(|e| panic!("{arch}: {e}"));
            let (shape, x) = read_npy(&Path::new(&full).join(format!("{arch}.input.npy")));
            let (_, want) = read_npy(&Path::new(&full).join(format!("{arch}.torch_logits.npy")));
            let x = Tensor::from_vec(x, shape, &dev).unwrap();
            let (_, err, scale) = logits_and_error(&g, &x, &want);
            println!("{arch} (torchvision weights): max |qat - torch| = {err:.2e} (max |logit| {scale:.3})");
            assert!(err <= 1e-4 * scale, "{arch}");
            n += 1;
            continue;
        }
        let Some(stem) = file.strip_suffix(".onnx") else {
            continue;
        };
        let model = stem
            .split('_')
            .take_while(|s| !["eval", "preserve"].contains(s));
        let model: Vec<&str> = model.collect();
        let input = Path::new(&full).join(format!("{}.input.npy", model.join("_")));
        let imp = import(&parse_model(&std::fs::read(&p).unwrap()).unwrap(), &dev).unwrap();
        let (shape, x) = read_npy(&input);
        let (_, want) = read_npy(&Path::new(&full).join(format!("{stem}.ort_logits.npy")));
        let x = Tensor::from_vec(x, shape, &dev).unwrap();
        let (_, err, scale) = logits_and_error(&imp.graph, &x, &want);
        println!("{stem}: max |qat - ORT| = {err:.2e} (max |logit| {scale:.3})");
        assert!(err <= 1e-4 * scale, "{stem}");
        n += 1;
    }
    assert!(n > 0, "no .onnx files in {full}");
}

/// `--torchvision`: a torchvision mobilenet_v2 (width 0.35, 10 classes)
/// state dict maps onto the built-in MobileNetV2 (width found from the
/// weights), and its FP32 forward gives PyTorch's logits (recorded by the
/// fixture script) within 1e-4 relative.
#[test]
fn torchvision_state_dict_matches_pytorch() {
    use qat::import::torchvision;
    use qat::models::Arch;
    let bytes = std::fs::read(dir().join("mobilenet_v2_x035.safetensors")).unwrap();
    let dev = Device::cpu();
    let (g, arch) = torchvision::load("mobilenet_v2".parse().unwrap(), &bytes, &dev).unwrap();
    assert_eq!(arch.name(), "mobilenet_v2_x0.35");
    let (shape, x) = read_npy(&dir().join("mobilenet_v2_x035.input.npy"));
    let (_, want) = read_npy(&dir().join("mobilenet_v2_x035.torch_logits.npy"));
    let x = Tensor::from_vec(x, shape, &dev).unwrap();
    let (got, err, scale) = logits_and_error(&g, &x, &want);
    println!("mobilenet_v2_x035: max |qat - torch| = {err:.2e} (max |logit| {scale:.3})");
    assert!(err <= 1e-4 * scale, "{err} vs {scale}");
    // The wrong architecture, a missing and a mis-shaped tensor: errors
    // that list the names.
    let err = |b: &[u8], a: Arch| match torchvision::load(a, b, &dev) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    let e = err(&bytes, Arch::ResNet18);
    assert!(e.contains("conv1.weight"), "{e}");
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let rewrite = |skip: &str, reshape: &str| -> Vec<u8> {
        let views: Vec<(String, safetensors::tensor::TensorView)> = st
            .tensors()
            .into_iter()
            .filter(|(n, _)| n != skip)
            .map(|(n, t)| {
                if n == reshape {
                    let d = t.data();
                    let half = &d[..d.len() / 2];
                    let v =
                        safetensors::tensor::TensorView::new(t.dtype(), vec![half.len() / 4], half)
                            .unwrap();
                    (n, v)
                } else {
                    (n, t)
                }
            })
            .collect();
        safetensors::serialize(views, None).unwrap()
    };
    let e = err(&rewrite("features.3.conv.1.1.running_var", ""), arch);
    assert!(
        e.contains("1 missing [features.3.conv.1.1.running_var]"),
        "{e}"
    );
    let e = err(&rewrite("", "classifier.1.bias"), arch);
    assert!(e.contains("classifier.1.bias is [5]"), "{e}");
    // The command line writes a checkpoint of the built-in architecture.
    let out = temp_dir("import-tv");
    let (ok, log) = qat_bin(&[
        "import",
        "--torchvision",
        "mobilenet_v2",
        dir()
            .join("mobilenet_v2_x035.safetensors")
            .to_str()
            .unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--input-size",
        "64",
    ]);
    assert!(
        ok && log.contains("mobilenet_v2_x0.35") && log.contains("0.485"),
        "{log}"
    );
    let ck = qat::checkpoint::Checkpoint::load(&out.join("checkpoint.safetensors")).unwrap();
    let (g2, info) = qat::saved_model::load(&ck, &dev).unwrap();
    assert_eq!(info.arch, "mobilenet_v2_x0.35");
    assert_eq!(info.input_hw, [64, 64]);
    let got2 = qat::autograd::no_grad(|| g2.forward(&x, Mode::Eval))
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(got, got2);
    let _ = std::fs::remove_dir_all(&out);
}
