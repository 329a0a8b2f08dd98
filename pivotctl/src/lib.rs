//! `pivotctl`'s library half: the command-line definitions (`cli`), so that the
//! configuration reference can be generated from them, and the HTTP health probe
//! (`probe`), so that it can be tested on its own. The gRPC commands live in `main.rs`.

pub mod cli;
pub mod probe;
