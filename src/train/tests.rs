//! The losses and log-probs against values produced by running TRL 0.28's own code
//! (`tests/vectors/dpo-loss-trl.json`), on the flex device in f64.

use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorCreationOptions, TensorData};
use serde_json::Value;

use super::losses::{LossConfig, LossType, dpo_loss};
use crate::model::logps::completion_logps;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/dpo-loss-trl.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("the vectors are JSON")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().expect("a list").iter().map(|x| x.as_f64().expect("a number")).collect()
}

/// Tensors in f64, as TRL computed the vectors.
fn f64s() -> TensorCreationOptions {
    TensorCreationOptions::new(Device::flex()).with_dtype(DType::F64)
}

fn t1(values: &[f64]) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), f64s())
}

fn read(t: Tensor<1>) -> Vec<f64> {
    t.into_data().try_to_vec::<f64>().expect("f64 data")
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tolerance = 1e-9 * w.abs().max(1e-3);
        assert!((g - w).abs() <= tolerance, "{what}[{i}]: got {g}, TRL gives {w}");
    }
}

fn loss_type(name: &str) -> Option<LossType> {
    serde_json::from_value(Value::String(name.to_string())).ok()
}

#[test]
fn every_supported_loss_matches_trl() {
    let v = vectors();
    let inputs = &v["inputs"];
    let (pc, pr, rc, rr) = (
        floats(&inputs["chosen_logps"]),
        floats(&inputs["rejected_logps"]),
        floats(&inputs["ref_chosen_logps"]),
        floats(&inputs["ref_rejected_logps"]),
    );
    let mut checked = std::collections::BTreeSet::new();
    for case in v["cases"].as_array().unwrap() {
        let Some(loss) = loss_type(case["loss_type"].as_str().unwrap()) else { continue };
        let cfg = LossConfig {
            loss,
            beta: case["beta"].as_f64().unwrap(),
            label_smoothing: case["label_smoothing"].as_f64().unwrap(),
        };
        let out = dpo_loss(t1(&pc), t1(&pr), t1(&rc), t1(&rr), &cfg);
        let id = case["id"].as_str().unwrap();
        assert_close(&read(out.losses), &floats(&case["losses"]), &format!("{id} losses"));
        assert_close(&read(out.chosen_rewards), &floats(&case["chosen_rewards"]), &format!("{id} chosen_rewards"));
        assert_close(
            &read(out.rejected_rewards),
            &floats(&case["rejected_rewards"]),
            &format!("{id} rejected_rewards"),
        );
        checked.insert(case["loss_type"].as_str().unwrap().to_string());
    }
    let expected = ["apo_down", "apo_zero", "hinge", "ipo", "nca_pair", "robust", "sigmoid", "sppo_hard"];
    assert_eq!(checked.into_iter().collect::<Vec<_>>(), expected);
}

#[test]
fn at_step_zero_the_loss_is_ln_2_and_rewards_are_zero() {
    let logps = [-12.5, -3.0, -40.25];
    let out = dpo_loss(
        t1(&logps),
        t1(&logps),
        t1(&logps),
        t1(&logps),
        &LossConfig { loss: LossType::Sigmoid, beta: 0.1, label_smoothing: 0.0 },
    );
    for l in read(out.losses) {
        assert!((l - std::f64::consts::LN_2).abs() < 1e-12);
    }
    assert!(read(out.chosen_rewards).iter().chain(&read(out.rejected_rewards)).all(|r| *r == 0.0));
}

#[test]
fn swapping_chosen_and_rejected_at_half_smoothing_changes_nothing() {
    let cfg = LossConfig { loss: LossType::Sigmoid, beta: 0.3, label_smoothing: 0.5 };
    let (a, b, ra, rb) = ([-5.0, -7.5], [-9.0, -1.0], [-6.0, -7.0], [-8.0, -2.0]);
    let forward = read(dpo_loss(t1(&a), t1(&b), t1(&ra), t1(&rb), &cfg).losses);
    let swapped = read(dpo_loss(t1(&b), t1(&a), t1(&rb), t1(&ra), &cfg).losses);
    assert_close(&forward, &swapped, "swapped");
}

#[test]
fn completion_logps_match_trl() {
    let v = vectors();
    let l = &v["logps_from_logits"];
    let logits: Vec<f64> =
        l["logits"].as_array().unwrap().iter().flat_map(|b| b.as_array().unwrap().iter().flat_map(floats)).collect();
    let [b, s, vocab] = [2usize, 5, 7];
    let device = Device::flex();
    for case in ["case_a", "case_b_ragged_prompt"] {
        let labels: Vec<i64> = l[case]["labels"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()))
            .collect();
        let mask: Vec<bool> = labels.iter().map(|x| *x != -100).collect();
        let ids: Vec<i64> = labels.iter().map(|x| if *x == -100 { 0 } else { *x }).collect();
        let logits = Tensor::<3>::from_data(TensorData::new(logits.clone(), [b, s, vocab]), f64s());
        let labels = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, s]), &device);
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(mask, [b, s]), &device);
        let (summed, mean) = completion_logps(logits, labels, mask);
        assert_close(&read(summed), &floats(&l[case]["summed_logps"]), &format!("{case} summed"));
        assert_close(&read(mean), &floats(&l[case]["mean_logps"]), &format!("{case} mean"));
    }
}
