//! Checkpoints: bit-exact round trips, atomic saves, and a clear error (never
//! a panic) for every kind of damaged file.

use qat::checkpoint::{Array, Checkpoint, Position, FORMAT_VERSION};
use qat::graph::Graph;
use qat::models::{self, Arch};
use qat::nn::{Mode, Module, Named, Role};
use qat::optim::{Sgd, SgdConfig};
use qat::rng::Rng;
use qat::{Device, Result, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A fresh, empty directory under cargo's per-test-target temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("checkpoint-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Arbitrary non-NaN f32 bit patterns: subnormals, infinities, -0.0 included.
fn random_values(rng: &mut Rng, n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let x = f32::from_bits(rng.next_u64() as u32);
        if !x.is_nan() {
            v.push(x);
        }
    }
    v
}

fn array(rng: &mut Rng, shape: &[usize]) -> Array {
    Array {
        shape: shape.to_vec(),
        values: random_values(rng, shape.iter().product()),
    }
}

/// A checkpoint using every field, with awkward shapes (scalar, empty).
fn sample() -> Checkpoint {
    let mut rng = Rng::new(1);
    let mut c = Checkpoint::default();
    for (name, shape) in [
        ("conv1.weight", &[4, 1, 3, 3][..]),
        ("bn1.running_mean", &[4]),
        ("fc.bias", &[]),
        ("empty", &[0, 3]),
    ] {
        c.model.insert(name.into(), array(&mut rng, shape));
    }
    c.momentum
        .insert("conv1.weight".into(), array(&mut rng, &[4, 1, 3, 3]));
    c.position = Position {
        epoch: 3,
        step_in_epoch: 17,
        global_step: 1234,
    };
    c.rng.insert("data".into(), [1, 2, 3, u64::MAX]);
    c.set_rng("augment", &Rng::new(99));
    c.extra = serde_json::json!({
        "config": {"arch": "small", "lr": 0.1, "seed": u64::MAX},
        "observers": [{"name": "act0", "min": -1.5, "max": 2.25}],
    });
    c
}

fn assert_bit_exact(a: &Checkpoint, b: &Checkpoint) {
    let bits = |m: &BTreeMap<String, Array>| -> Vec<(String, Vec<usize>, Vec<u32>)> {
        m.iter()
            .map(|(n, a)| {
                let bits = a.values.iter().map(|v| v.to_bits()).collect();
                (n.clone(), a.shape.clone(), bits)
            })
            .collect()
    };
    assert_eq!(bits(&a.model), bits(&b.model));
    assert_eq!(bits(&a.momentum), bits(&b.momentum));
    assert_eq!(a.position, b.position);
    assert_eq!(a.rng, b.rng);
    assert_eq!(a.extra, b.extra);
    assert_eq!(a.format_version, b.format_version);
}

/// The error of loading `path`, which must name the file.
fn load_err(path: &Path) -> String {
    let msg = match Checkpoint::load(path) {
        Ok(_) => panic!("{} loaded but should not have", path.display()),
        Err(e) => e.to_string(),
    };
    assert!(
        msg.contains(&path.display().to_string()),
        "error does not name the file: {msg}"
    );
    msg
}

#[test]
fn round_trip_is_bit_exact() {
    let dir = temp_dir("round-trip");
    let path = dir.join("a.ckpt");
    let c = sample();
    c.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    assert_bit_exact(&c, &back);
    assert_eq!(back.format_version, FORMAT_VERSION);
    assert_eq!(back.rng("augment").unwrap(), Rng::new(99));
    assert!(back.rng("missing").is_err());
}

#[test]
fn empty_checkpoint_round_trips() {
    let dir = temp_dir("empty");
    let path = dir.join("a.ckpt");
    let c = Checkpoint::default();
    c.save(&path).unwrap();
    assert_eq!(Checkpoint::load(&path).unwrap(), c);
}

#[test]
fn large_tensor_round_trips() {
    let dir = temp_dir("large");
    let path = dir.join("a.ckpt");
    let mut rng = Rng::new(2);
    let mut c = Checkpoint::default();
    c.model
        .insert("big".into(), array(&mut rng, &[1024, 1024, 5]));
    c.save(&path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len() as usize,
        std::fs::read(&path).unwrap().len()
    );
    assert_bit_exact(&c, &Checkpoint::load(&path).unwrap());
}

#[test]
fn saves_are_atomic_and_replace() {
    let dir = temp_dir("atomic");
    let path = dir.join("a.ckpt");
    let first = sample();
    first.save(&path).unwrap();

    // A "crashed" save left a partial temp file behind: load ignores it.
    let tmp = dir.join("a.ckpt.tmp-4242");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&tmp, &bytes[..bytes.len() / 2]).unwrap();
    assert_bit_exact(&first, &Checkpoint::load(&path).unwrap());

    // Saving over the file replaces it and leaves no temp file of its own.
    let mut second = sample();
    second.position.global_step += 1;
    second.extra = serde_json::Value::Null;
    second.save(&path).unwrap();
    assert_bit_exact(&second, &Checkpoint::load(&path).unwrap());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a.ckpt", "a.ckpt.tmp-4242"]);

    // A save that cannot happen leaves the old file alone.
    let missing_dir = dir.join("no-such-dir").join("a.ckpt");
    assert!(second.save(&missing_dir).is_err());
    assert_bit_exact(&second, &Checkpoint::load(&path).unwrap());
}

#[test]
fn save_rejects_inconsistent_arrays() {
    let dir = temp_dir("inconsistent");
    let path = dir.join("a.ckpt");
    let mut c = Checkpoint::default();
    c.model.insert(
        "w".into(),
        Array {
            shape: vec![2, 3],
            values: vec![0.0; 5],
        },
    );
    let msg = c.save(&path).unwrap_err().to_string();
    assert!(msg.contains("`w`"), "{msg}");
    assert!(!path.exists());
    // A shape whose element count overflows is an error, not a panic.
    c.model.get_mut("w").unwrap().shape = vec![1 << 40, 1 << 40];
    assert!(c.save(&path).is_err());
}

#[test]
fn truncated_files_are_errors() {
    let dir = temp_dir("truncated");
    let good = dir.join("good.ckpt");
    sample().save(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let cuts = [
        0,
        1,
        7,
        8,
        9,
        header_end / 2,
        header_end - 1,
        header_end,
        header_end + 1,
        (header_end + bytes.len()) / 2,
        bytes.len() - 1,
    ];
    for cut in cuts {
        let path = dir.join(format!("cut-{cut}.ckpt"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let msg = load_err(&path);
        if cut == 0 {
            assert!(msg.contains("empty"), "{msg}");
        }
    }
    // Extra bytes at the end are just as wrong.
    let path = dir.join("appended.ckpt");
    std::fs::write(&path, [&bytes[..], b"xx"].concat()).unwrap();
    load_err(&path);
}

/// A flipped bit in any byte of the file, header or data, is caught: by
/// the checksum, or by the structure checks before it.
#[test]
fn every_flipped_byte_is_an_error() {
    let dir = temp_dir("flipped");
    let good = dir.join("good.ckpt");
    sample().save(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let path = dir.join("bad.ckpt");
    let mut checksum_errors = 0;
    for i in 0..bytes.len() {
        // Each byte gets one flip; the bit position cycles through all eight.
        let mut b = bytes.clone();
        b[i] ^= 1 << (i % 8);
        std::fs::write(&path, &b).unwrap();
        let msg = load_err(&path);
        checksum_errors += msg.contains("checksum mismatch") as usize;
    }
    // The data section's flips all land on the checksum.
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert!(checksum_errors >= bytes.len() - header_end);
}

/// Writes a safetensors-shaped file with the given raw header and data.
fn write_raw(path: &Path, header_len: u64, header: &str, data: &[u8]) {
    let mut b = header_len.to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    std::fs::write(path, b).unwrap();
}

#[test]
fn huge_claimed_sizes_are_errors() {
    let dir = temp_dir("huge");
    let path = dir.join("a.ckpt");
    let small = r#"{"__metadata__":{"format":"qat.checkpoint"}}"#;
    for n in [u64::MAX, 1 << 40, 100_000_001, small.len() as u64 + 1] {
        write_raw(&path, n, small, b"");
        let msg = load_err(&path);
        assert!(msg.contains("header length"), "{msg}");
    }
    let cases = [
        // Offsets far past the file.
        r#"{"w":{"dtype":"F32","shape":[268435456],"data_offsets":[0,1073741824]}}"#,
        r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,18446744073709551615]}}"#,
        // A shape whose element count overflows.
        r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#,
        // Offsets within the file but not matching the shape.
        r#"{"w":{"dtype":"F32","shape":[1000000],"data_offsets":[0,16]}}"#,
        r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[8,4]}}"#,
        r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[-1,16]}}"#,
        r#"{"w":{"dtype":"F32","shape":[4]}}"#,
    ];
    for header in cases {
        write_raw(&path, header.len() as u64, header, &[0; 16]);
        load_err(&path);
    }
}

#[test]
fn foreign_and_empty_files_are_errors() {
    let dir = temp_dir("foreign");
    let path = dir.join("a.ckpt");
    std::fs::write(&path, b"").unwrap();
    assert!(load_err(&path).contains("empty"));
    std::fs::write(&path, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap();
    load_err(&path);
    std::fs::write(&path, b"{\"not\": \"a checkpoint\"}").unwrap();
    load_err(&path);

    // A valid safetensors file that is not ours.
    let header = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    write_raw(&path, header.len() as u64, header, &[0; 8]);
    assert!(load_err(&path).contains("format"));

    // One from a newer version of this crate.
    let header = r#"{"__metadata__":{"format":"qat.checkpoint","format_version":"2"}}"#;
    write_raw(&path, header.len() as u64, header, b"");
    assert!(load_err(&path).contains("version 2"));

    assert!(matches!(
        Checkpoint::load(&dir.join("missing.ckpt")),
        Err(qat::Error::Io { .. })
    ));
}

/// Names and shapes of a [`Toy`]'s tensors.
type Layout<'a> = &'a [(&'a str, &'a [usize])];

/// A module made of exactly the named tensors given.
struct Toy(Vec<(String, Tensor)>);

impl Toy {
    fn new(tensors: Layout) -> Toy {
        let mut rng = Rng::new(5);
        Toy(tensors
            .iter()
            .map(|(n, s)| {
                let v = random_values(&mut rng, s.iter().product());
                let t = Tensor::from_vec(v, s.to_vec(), &Device::cpu()).unwrap();
                (n.to_string(), t)
            })
            .collect())
    }
    fn values(&self) -> Vec<Vec<f32>> {
        self.0.iter().map(|(_, t)| t.to_vec().unwrap()).collect()
    }
}

impl Module for Toy {
    fn forward(&self, x: &Tensor, _mode: Mode) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn collect(&self, prefix: &str, out: &mut Vec<Named>) {
        for (n, t) in &self.0 {
            out.push(Named {
                name: qat::nn::join(prefix, n),
                tensor: t.clone(),
                role: Role::Weight,
            });
        }
    }
}

#[test]
fn restore_module_reports_every_mismatch() {
    let saved = Toy::new(&[("a.weight", &[2, 3]), ("b.bias", &[4]), ("c", &[1])]);
    let ckpt = Checkpoint::from_module(&saved).unwrap();

    // (the model's tensors, what the error must mention)
    let cases: [(Layout, &[&str]); 3] = [
        // `c` missing from the model, so extra in the checkpoint.
        (
            &[("a.weight", &[2, 3]), ("b.bias", &[4])],
            &["`c`", "not in the model"],
        ),
        // `d` not in the checkpoint.
        (
            &[
                ("a.weight", &[2, 3]),
                ("b.bias", &[4]),
                ("c", &[1]),
                ("d", &[1]),
            ],
            &["`d`", "missing"],
        ),
        // `a.weight` transposed.
        (
            &[("a.weight", &[3, 2]), ("b.bias", &[4]), ("c", &[1])],
            &["`a.weight`", "[2, 3]", "[3, 2]"],
        ),
    ];
    for (layout, expected) in cases {
        let target = Toy::new(layout);
        let before = target.values();
        let msg = ckpt.restore_module(&target).unwrap_err().to_string();
        for e in expected {
            assert!(msg.contains(e), "{msg} lacks {e}");
        }
        assert_eq!(
            target.values(),
            before,
            "a failed restore changed the model"
        );
    }

    let target = Toy::new(&[("c", &[1]), ("a.weight", &[2, 3]), ("b.bias", &[4])]);
    ckpt.restore_module(&target).unwrap();
    let by_name = |t: &Toy| -> BTreeMap<String, Vec<f32>> {
        t.0.iter()
            .map(|(n, t)| (n.clone(), t.to_vec().unwrap()))
            .collect()
    };
    assert_eq!(by_name(&target), by_name(&saved));
}

/// A real model and optimizer through a file: restored into fresh ones with
/// different initial weights, they match the originals exactly.
#[test]
fn resnet_and_sgd_round_trip_through_a_file() {
    let dev = Device::cpu();
    let dir = temp_dir("resnet");
    let path = dir.join("model.ckpt");

    let model = models::build(Arch::Small, 1, 10, &dev, 7).unwrap();
    let cfg = SgdConfig::default();
    let mut sgd = Sgd::new(&model.parameters(), cfg).unwrap();
    // One step so that the momentum is not all zeros.
    let mut rng = Rng::new(3);
    let x = Tensor::from_vec(random_small(&mut rng, 4 * 12 * 12), [4, 1, 12, 12], &dev).unwrap();
    let loss =
        qat::ops::cross_entropy(&model.forward(&x, Mode::Train).unwrap(), &[0, 1, 2, 3], 0.0)
            .unwrap();
    sgd.step(&loss.backward().unwrap(), cfg.lr).unwrap();

    let mut ckpt = Checkpoint::from_module(&model).unwrap();
    ckpt.capture_optimizer(&sgd).unwrap();
    ckpt.save(&path).unwrap();

    let fresh = models::build(Arch::Small, 1, 10, &dev, 8).unwrap();
    let mut fresh_sgd = Sgd::new(&fresh.parameters(), cfg).unwrap();
    let loaded = Checkpoint::load(&path).unwrap();
    loaded.restore_module(&fresh).unwrap();
    loaded.restore_optimizer(&mut fresh_sgd).unwrap();

    let values = |m: &Graph| -> Vec<(String, Vec<u32>)> {
        m.state()
            .iter()
            .map(|n| {
                let bits = n
                    .tensor
                    .to_vec()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                (n.name.clone(), bits)
            })
            .collect()
    };
    assert_eq!(values(&fresh), values(&model));
    let momenta = |s: &Sgd| -> Vec<(String, Vec<f32>)> {
        s.momentum_buffers()
            .into_iter()
            .map(|(n, t)| (n, t.to_vec().unwrap()))
            .collect()
    };
    assert_eq!(momenta(&fresh_sgd), momenta(&sgd));
    assert!(momenta(&sgd)
        .iter()
        .any(|(_, v)| v.iter().any(|&x| x != 0.0)));

    // Momentum for a parameter the optimizer does not have is an error.
    let mut bad = loaded.clone();
    let (name, _) = bad.momentum.pop_first().unwrap();
    let msg = bad
        .restore_optimizer(&mut fresh_sgd)
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&name), "{msg}");
}

fn random_small(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal()).collect()
}

/// Floats in the JSON metadata (observer ranges, EMA statistics) come back
/// bit for bit, f64 and f32 alike.
#[test]
fn json_floats_round_trip_exactly() {
    let dir = temp_dir("json-floats");
    let path = dir.join("a.ckpt");
    let mut rng = Rng::new(4);
    let f64s: Vec<f64> = (0..2000)
        .map(|_| f64::from_bits(rng.next_u64()))
        .filter(|x| x.is_finite())
        .collect();
    let f32s: Vec<f32> = random_values(&mut rng, 2000)
        .into_iter()
        .filter(|x| x.is_finite())
        .collect();
    let c = Checkpoint {
        extra: serde_json::json!({ "f64": f64s, "f32": f32s }),
        ..Default::default()
    };
    c.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    let got64: Vec<f64> = serde_json::from_value(back.extra["f64"].clone()).unwrap();
    let got32: Vec<f32> = serde_json::from_value(back.extra["f32"].clone()).unwrap();
    let bits64 = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let bits32 = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits64(&got64), bits64(&f64s));
    assert_eq!(bits32(&got32), bits32(&f32s));
}
