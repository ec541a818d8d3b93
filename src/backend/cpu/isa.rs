//! The instruction sets the CPU kernels are compiled for, chosen at run time
//! (never by a compile-time `target-cpu`): every `#[target_feature]` build of
//! a loop is entered only after [`Isa::supported`] confirmed the processor
//! runs it.

use std::sync::OnceLock;

/// The instruction set the loops are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2Fma,
    /// No target features (FMA through `f32::mul_add`, a library call on
    /// x86-64 processors without FMA).
    Portable,
}

impl Isa {
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 | Isa::Avx2Fma => false,
            Isa::Portable => true,
        }
    }

    /// Every instruction set this processor runs, best first.
    pub fn available() -> Vec<Isa> {
        [Isa::Avx512, Isa::Avx2Fma, Isa::Portable]
            .into_iter()
            .filter(|i| i.supported())
            .collect()
    }

    /// The best supported one, or a lower one named by `QAT_CPU_ISA`
    /// (`avx2` or `portable`; for benchmarking the other machines' paths).
    pub fn detected() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Isa::available()[0];
            let wanted = match std::env::var("QAT_CPU_ISA").as_deref() {
                Ok("avx2") => Isa::Avx2Fma,
                Ok("portable") => Isa::Portable,
                _ => best,
            };
            if wanted.supported() {
                wanted
            } else {
                best
            }
        })
    }
}
