//! Compute kernels, grouped by op family. Every op has a CPU implementation
//! here, checked in tests against a plain float64 reference on random inputs.
//!
//! Layout conventions: activations are row-major `[rows × cols]` f32; a linear
//! layer's weight is `[out × in]` as stored in the checkpoints, so `y = x·Wᵀ + b`.
//! Sequences of a batch are packed without padding: `Seqs` gives each one's
//! first row and length.
//!
//! Concurrency: ops use the global rayon pool (sized to the cores); callers
//! run them on a dedicated thread, never on an async runtime.

pub mod cpu;
pub mod cuda;

/// Where each sequence of a packed batch lies: `(first row, length)`.
pub type Seqs = [(usize, usize)];
