//! One error type for the whole crate: every failure reachable from user input
//! (shapes, files, devices) is a value, never a panic.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shapes that do not fit an operation; the message names both shapes.
    #[error("shape error: {0}")]
    Shape(String),
    /// Tensors living on different devices were combined.
    #[error("device mismatch: {0}")]
    DeviceMismatch(String),
    /// A device could not be opened or a kernel failed.
    #[error("device error: {0}")]
    Device(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Input data (images, labels, checkpoints) is missing or malformed.
    #[error("data error: {0}")]
    Data(String),
    /// An ONNX model is malformed or uses something unsupported.
    #[error("onnx error: {0}")]
    Onnx(String),
    /// Training diverged or another numerical invariant broke.
    #[error("numerical error: {0}")]
    Numerical(String),
    /// A call that makes no sense in the current state (e.g. backward twice).
    #[error("{0}")]
    Usage(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// `bail!(Shape, "...")` returns early with the given error kind.
#[macro_export]
macro_rules! bail {
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::Error::$kind(format!($($arg)*)))
    };
}
