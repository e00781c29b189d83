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

// Kernels walk several buffers in lockstep by index, and their launchers take
// the shape as separate arguments: clearer here than iterator chains or
// parameter structs. `let ptr = ptr;` inside a closure is deliberate: it makes
// the closure capture the whole `Send` wrapper rather than its raw pointer
// field (edition 2021 captures fields disjointly).
#![allow(
    clippy::needless_range_loop,
    clippy::too_many_arguments,
    clippy::redundant_locals
)]

pub mod cpu;
pub mod cuda;

/// Where each sequence of a packed batch lies: `(first row, length)`.
pub type Seqs = [(usize, usize)];
