//! End-to-end: the small ResNet memorizes 64 fixed images (random pixels,
//! random labels) to 100% training accuracy within a bounded number of SGD
//! steps, judged in eval mode (running statistics).

use qat::autograd::no_grad;
use qat::models::{self, Arch};
use qat::nn::{Mode, Module};
use qat::optim::{Sgd, SgdConfig};
use qat::rng::Rng;
use qat::train::metrics::Accuracy;
use qat::{ops, Device, Tensor};

#[test]
fn small_resnet_memorizes_64_images() {
    let dev = Device::cpu();
    let (n, hw, classes) = (64, 12, 10);
    let mut rng = Rng::new(42);
    let images: Vec<f32> = (0..n * hw * hw).map(|_| rng.normal()).collect();
    let labels: Vec<u32> = (0..n).map(|_| rng.below(classes as u64) as u32).collect();
    let x = Tensor::from_vec(images, [n, 1, hw, hw], &dev).unwrap();

    let model = models::build(Arch::Small, 1, classes, &dev, 7).unwrap();
    let cfg = SgdConfig {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut sgd = Sgd::new(&model.parameters(), cfg).unwrap();
    let max_steps = 300;
    let mut first_loss = None;
    for step in 0..max_steps {
        let logits = model.forward(&x, Mode::Train).unwrap();
        let loss = ops::cross_entropy(&logits, &labels, 0.0).unwrap();
        let l = loss.item().unwrap();
        first_loss.get_or_insert(l);
        assert!(l.is_finite(), "loss diverged at step {step}");
        let grads = loss.backward().unwrap();
        sgd.step(&grads, cfg.lr).unwrap();
        if step % 10 == 9 {
            let mut acc = Accuracy::default();
            let eval_logits = no_grad(|| model.forward(&x, Mode::Eval)).unwrap();
            acc.add(&eval_logits.to_vec().unwrap(), &labels);
            if acc.top1 == n {
                eprintln!(
                    "memorized after {} steps (loss {:.4} from {:.4})",
                    step + 1,
                    l,
                    first_loss.unwrap()
                );
                return;
            }
        }
    }
    panic!("did not reach 100% training accuracy in {max_steps} steps");
}
