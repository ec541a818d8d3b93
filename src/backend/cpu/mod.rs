//! The CPU backend: the readable reference, parallel with rayon.
pub struct CpuBackend;
impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}
