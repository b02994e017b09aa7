//! Where models run: `runtime.device` parsed and opened. `flex` (pure Rust, the default) is
//! always there; `libtorch` and `libtorch-cuda:N` need the `tch` build. And `runtime.dtype`:
//! the precision they compute in.

use std::fmt;
use std::str::FromStr;

use burn::tensor::{Device, FloatDType};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Flex,
    LibTorch,
    LibTorchCuda(usize),
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeviceError {
    #[error("unknown device `{0}`; use flex, libtorch or libtorch-cuda:N")]
    Unknown(String),
    #[error("device `{0}` needs silkie built with the `tch` feature (LibTorch); this build has flex only")]
    NotBuilt(DeviceSpec),
    #[error("device `{spec}`: {found}")]
    NoGpu { spec: DeviceSpec, found: String },
    #[error("unknown dtype `{0}`; use f32 or bf16")]
    DType(String),
    #[error("device `{0}` cannot compute in bf16; use dtype f32 there")]
    NoBf16(DeviceSpec),
}

impl DeviceError {
    /// The setting at fault: `device` or `dtype`.
    pub fn setting(&self) -> &'static str {
        match self {
            DeviceError::DType(_) | DeviceError::NoBf16(_) => "dtype",
            _ => "device",
        }
    }
}

pub use crate::dsl::Precision;

impl Precision {
    /// Its name in a key: none for f32, so the keys of f32 runs read as before bf16 existed.
    pub fn key_name(self) -> Option<&'static str> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some("bf16"),
        }
    }

    /// Adds `dtype` to a key's map when not f32: unlike the device, bf16 changes the numbers.
    pub fn add_to_key<M: Extend<(String, serde_json::Value)>>(self, map: &mut M) {
        map.extend(self.key_name().map(|name| ("dtype".to_string(), name.into())));
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key_name().unwrap_or("f32"))
    }
}

/// For `--dtype` on the command line; pipelines read it through serde.
impl FromStr for Precision {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            other => Err(DeviceError::DType(other.to_string())),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Flex => write!(f, "flex"),
            DeviceSpec::LibTorch => write!(f, "libtorch"),
            DeviceSpec::LibTorchCuda(i) => write!(f, "libtorch-cuda:{i}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "flex" | "cpu" => Ok(DeviceSpec::Flex),
            "libtorch" | "libtorch-cpu" => Ok(DeviceSpec::LibTorch),
            "libtorch-cuda" => Ok(DeviceSpec::LibTorchCuda(0)),
            other => other
                .strip_prefix("libtorch-cuda:")
                .and_then(|i| i.parse().ok())
                .map(DeviceSpec::LibTorchCuda)
                .ok_or_else(|| DeviceError::Unknown(other.to_string())),
        }
    }
}

/// How many threads a training step spreads a batch's rows over: on flex, which computes
/// most ops on one core, as many as its thread pool has (`RAYON_NUM_THREADS`, else the
/// cores); LibTorch threads its own ops, so 1 there.
pub fn train_threads(device: &Device) -> usize {
    let flex = *device == Device::flex() || *device == Device::flex().autodiff();
    if flex { rayon::current_num_threads().max(1) } else { 1 }
}

/// The device `runtime.device` names (flex when unset), checked to exist and to compute in
/// `precision`, with gradients recorded when `autodiff`.
pub fn open(device: Option<&str>, precision: Precision, autodiff: bool) -> Result<Device, DeviceError> {
    let spec: DeviceSpec = device.unwrap_or("flex").parse()?;
    let device = backend(spec)?;
    if precision == Precision::Bf16 && !device.supports_dtype(FloatDType::BF16) {
        return Err(DeviceError::NoBf16(spec));
    }
    Ok(if autodiff { device.autodiff() } else { device })
}

#[cfg(not(feature = "tch"))]
fn backend(spec: DeviceSpec) -> Result<Device, DeviceError> {
    match spec {
        DeviceSpec::Flex => Ok(Device::flex()),
        other => Err(DeviceError::NotBuilt(other)),
    }
}

// Burn marks its LibTorch backend deprecated; our users train on LibTorch CUDA, so it stays
// behind the `tch` feature until a CubeCL backend covers them.
#[cfg(feature = "tch")]
#[allow(deprecated)]
fn backend(spec: DeviceSpec) -> Result<Device, DeviceError> {
    match spec {
        DeviceSpec::Flex => Ok(Device::flex()),
        DeviceSpec::LibTorch => Ok(Device::libtorch()),
        DeviceSpec::LibTorchCuda(index) => {
            // Checked here: LibTorch itself aborts the process on a missing CUDA device.
            // SAFETY: plain queries of LibTorch's CUDA state, no arguments or pointers.
            let (available, count) =
                unsafe { (torch_sys::cuda::atc_cuda_is_available() != 0, torch_sys::cuda::atc_cuda_device_count()) };
            if !available {
                return Err(DeviceError::NoGpu {
                    spec,
                    found: "no CUDA GPU is visible to LibTorch (check the driver, CUDA_VISIBLE_DEVICES, and that \
                            LibTorch was built with CUDA)"
                        .into(),
                });
            }
            if index >= count.max(0) as usize {
                return Err(DeviceError::NoGpu { spec, found: format!("LibTorch sees {count} CUDA device(s)") });
            }
            Ok(Device::libtorch_cuda(index))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!("flex".parse(), Ok(DeviceSpec::Flex));
        assert_eq!("libtorch".parse(), Ok(DeviceSpec::LibTorch));
        assert_eq!("libtorch-cuda:1".parse(), Ok(DeviceSpec::LibTorchCuda(1)));
        let bad = "cuda:0".parse::<DeviceSpec>().unwrap_err();
        assert!(bad.to_string().contains("libtorch-cuda:N"), "{bad}");
    }

    #[test]
    fn dtypes_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!("bf16".parse(), Ok(Precision::Bf16));
        assert_eq!("bfloat16".parse(), Ok(Precision::Bf16));
        assert_eq!("f32".parse(), Ok(Precision::F32));
        let bad = "fp16".parse::<Precision>().unwrap_err();
        assert_eq!(bad.to_string(), "unknown dtype `fp16`; use f32 or bf16");
        assert_eq!(bad.setting(), "dtype");
        assert!(open(None, Precision::Bf16, true).is_ok(), "flex computes in bf16");
        let mut key = serde_json::Map::new();
        Precision::F32.add_to_key(&mut key);
        assert!(key.is_empty(), "f32 keys read as before bf16 existed");
        Precision::Bf16.add_to_key(&mut key);
        assert_eq!(key["dtype"], "bf16");
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn libtorch_without_the_tch_build_is_a_clear_error() {
        let err = open(Some("libtorch-cuda:0"), Precision::F32, true).unwrap_err();
        assert!(err.to_string().contains("`tch` feature"), "{err}");
    }

    #[cfg(feature = "tch")]
    #[test]
    fn a_missing_gpu_is_an_error_not_a_crash() {
        // On a machine without a GPU this must come back as an error; with one, index 99 is
        // still past the end.
        let err = open(Some("libtorch-cuda:99"), Precision::F32, true).unwrap_err();
        assert!(matches!(err, DeviceError::NoGpu { .. }), "{err}");
    }
}
