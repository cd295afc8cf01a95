//! The format writers: sharded safetensors, GGUF and Meta `.pth` archives, each streaming its
//! tensors into a file staged by `qforge-stage` (temp sibling, fsync, rename; resumable).

pub mod gguf;
pub mod pth;
pub mod safetensors;
