//! Tiny random LLaVA checkpoints that transformers itself makes (tests/support/llava_fixture.py),
//! and silkie's logits against the ones transformers computed with them.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::{Int, Tensor, TensorData};
use serde_json::Value;
use silkie::model::device::{self, Precision};
use silkie::model::llava::Llava;

/// The Python that has transformers: the environment scripts/test prepares.
pub fn reference_python() -> PathBuf {
    let venv = std::env::var_os("SILKIE_TORCH_VENV").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/silkie/torch-2.9.0")
    });
    let python = venv.join("bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import transformers, tokenizers, PIL"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} cannot import transformers: run the tests through scripts/test, which installs the pinned \
         Python packages (scripts/libtorch-env)",
        python.display()
    );
    python
}

/// A checkpoint made by transformers with `args`, and what transformers computed with it.
pub fn fixture(args: &[&str]) -> (tempfile::TempDir, Value) {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/llava_fixture.py");
    let out = Command::new(reference_python()).arg(script).arg(dir.path()).args(args).output().unwrap();
    assert!(out.status.success(), "the fixture failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let reference = serde_json::from_slice(&std::fs::read(dir.path().join("reference.json")).unwrap()).unwrap();
    (dir, reference)
}

pub fn numbers(value: &Value) -> Vec<f32> {
    value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

pub fn shape_of(value: &Value) -> Vec<usize> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect()
}

/// The largest absolute difference between silkie's logits and transformers', on `device`
/// (flex when none).
pub fn logits_gap(args: &[&str], device: Option<&str>) -> f32 {
    let (dir, reference) = fixture(args);
    let device = device::open(device, Precision::F32, false).unwrap();
    let model = Llava::load(dir.path(), &device).unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<i64> = reference["input_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let n = ids.len();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
    let [c, h, w] = shape_of(&reference["pixel_shape"])[..] else { panic!("pixel_shape") };
    let pixels = Tensor::<4>::from_data(TensorData::new(numbers(&reference["pixel_values"]), [1, c, h, w]), &device);
    let logits = model.forward(tokens.clone(), Some(pixels.clone())).unwrap();
    // The comparison must be able to see the image: grey pixels give other logits.
    let grey = model.forward(tokens, Some(pixels.zeros_like())).unwrap();
    let image_effect = (grey - logits.clone()).abs().max().into_scalar::<f32>();
    assert!(image_effect > 1e-2, "the image moves the logits by only {image_effect}");
    let expected = numbers(&reference["logits"]);
    assert_eq!(logits.dims()[1..], shape_of(&reference["logits_shape"])[..]);
    let ours = logits.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let spread = expected.iter().map(|v| v.abs()).fold(0.0, f32::max);
    assert!(spread > 0.1, "the reference logits are all near 0 ({spread}): the comparison would prove nothing");
    let gap = ours.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    eprintln!(
        "{args:?}: max |logit| {spread:.3}, image effect {image_effect:.3}, max |silkie − transformers| {gap:.2e}"
    );
    gap
}
