//! Where the layer-major engine ([`crate::engine`]) runs a layer's arithmetic: the device
//! (`--device cpu|cuda[:N]`) and the [`Backend`] trait behind it.
//!
//! [`Cpu`] is the reference forward ([`crate::eval::run_layer_observed`], the LM head through
//! [`crate::model::Linear::forward`]): every figure qforge reports comes from it. A CUDA backend
//! (cuBLASLt GEMMs, NVRTC small ops, specs in DESIGN.md "Verification") is not implemented yet:
//! [`backend_for`] answers `cuda` with [`Error::Device`], saying in one line whether a device
//! exists at all (through `qforge_kernels::cuda::probe`, which never panics on a machine without
//! the driver).

use std::fmt;
use std::str::FromStr;

use qforge_convert::LayerTensor;

use crate::error::{Error, Result};
use crate::model::{LayerWeights, Linear, Model};
use crate::ops::RopeTable;

/// A device the forward can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Device {
    /// The CPU (rayon threads).
    #[default]
    Cpu,
    /// CUDA device with this ordinal.
    Cuda(usize),
}

impl FromStr for Device {
    type Err = String;

    /// `cpu`, `cuda` (device 0) or `cuda:N`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match t.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map(Device::Cuda).map_err(|_| {
                    format!("{s:?}: the device ordinal after cuda: must be a whole number")
                }),
                None => Err(format!("{s:?} is not a device (cpu, cuda or cuda:N)")),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// The per-layer arithmetic of the layer-major engine. Implementations must be deterministic:
/// the same inputs give the same bits whatever the thread count.
pub trait Backend: Sync {
    /// The device it runs on.
    fn device(&self) -> Device;

    /// One transformer layer over `h` (`[chunks·ctx, hidden]`, chunks of `ctx` tokens, in
    /// place), showing `observe` each linear's input with the linears that read it. A device
    /// error (out of memory, a failed launch) is returned, never a panic.
    fn layer(
        &self,
        model: &Model,
        lw: &LayerWeights,
        rope: &RopeTable,
        h: &mut [f32],
        ctx: usize,
        observe: &mut dyn FnMut(&[LayerTensor], &[f32]),
    ) -> Result<()>;

    /// Logits of `rows` positions of `h` (`[rows, hidden]`) through the final norm and the LM
    /// head: `[rows, head.out]`.
    fn logits(&self, model: &Model, norm: &[f32], head: &Linear, h: &[f32]) -> Result<Vec<f32>>;
}

/// The CPU reference forward.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu;

impl Backend for Cpu {
    fn device(&self) -> Device {
        Device::Cpu
    }

    fn layer(
        &self,
        model: &Model,
        lw: &LayerWeights,
        rope: &RopeTable,
        h: &mut [f32],
        ctx: usize,
        observe: &mut dyn FnMut(&[LayerTensor], &[f32]),
    ) -> Result<()> {
        crate::eval::run_layer_streamed(model, lw, rope, h, ctx, observe)
    }

    fn logits(&self, model: &Model, norm: &[f32], head: &Linear, h: &[f32]) -> Result<Vec<f32>> {
        let hid = model.config().hidden_size as usize;
        let rows = h.len() / hid.max(1);
        let mut x = h.to_vec();
        let eps = model.config().rms_norm_eps as f32;
        crate::ggml_cpu::rms_norm_as(model.opts.ggml_cpu_ops, &mut x, hid, norm, eps);
        let mut logits = vec![0f32; rows * head.out];
        head.forward(&x, rows, &mut logits);
        Ok(logits)
    }
}

/// Why `device` cannot run the forward here, or `None` when it can.
pub fn unavailable(device: Device) -> Option<String> {
    match device {
        Device::Cpu => None,
        Device::Cuda(n) => Some(match cuda_probe() {
            Err(reason) => format!("--device {device}: {reason}"),
            Ok(()) => format!(
                "--device cuda:{n}: a CUDA device is present, but this build's forward has no \
                 CUDA backend yet (only the GEMM kernels of `qforge bench gemm` run on CUDA); \
                 use --device cpu"
            ),
        }),
    }
}

/// The backend for `device`; [`Error::Device`] (one line, no panic) when it cannot run here.
pub fn backend_for(device: Device) -> Result<Box<dyn Backend>> {
    match unavailable(device) {
        None => Ok(Box::new(Cpu)),
        Some(reason) => Err(Error::Device(reason)),
    }
}

#[cfg(feature = "cuda")]
fn cuda_probe() -> std::result::Result<(), String> {
    qforge_kernels::cuda::probe().map_err(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
fn cuda_probe() -> std::result::Result<(), String> {
    Err("no CUDA device: qforge-verify was built without its `cuda` feature".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        assert_eq!("CUDA:3".parse::<Device>(), Ok(Device::Cuda(3)));
        assert!("cuda:x".parse::<Device>().is_err());
        assert!("gpu".parse::<Device>().is_err());
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_is_always_available() {
        assert!(unavailable(Device::Cpu).is_none());
        assert_eq!(backend_for(Device::Cpu).unwrap().device(), Device::Cpu);
    }

    #[test]
    fn cuda_is_refused_in_one_line() {
        // Without a CUDA backend every machine refuses cuda, with or without a device.
        let e = backend_for(Device::Cuda(0))
            .err()
            .expect("cuda must be refused");
        let msg = e.to_string();
        assert!(msg.contains("--device cuda:0"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg:?}");
    }
}
