use super::*;
use crate::model::logps::completion_logps;
use crate::model::lora::all_targets;
use crate::model::tokenizer::{BOS, ByteTokenizer, EOS};
use crate::train::losses::{LossConfig, LossType, dpo_loss};
use crate::train::optim::AdamW;
use burn::optim::GradientsParams;
use burn::tensor::{Bool, TensorData};

/// Prompt + completion as one padded token row, with the completion mask.
fn row(prompt: &str, completion: &str, len: usize) -> (Vec<i64>, Vec<bool>) {
    let t = ByteTokenizer;
    let mut tokens: Vec<i64> = std::iter::once(BOS).chain(t.encode(prompt)).map(i64::from).collect();
    let start = tokens.len();
    tokens.extend(t.encode(completion).into_iter().chain([EOS]).map(i64::from));
    let mut mask = vec![false; start];
    mask.resize(tokens.len(), true);
    tokens.resize(len, i64::from(crate::model::tokenizer::PAD));
    mask.resize(len, false);
    (tokens, mask)
}

fn batch(rows: &[(Vec<i64>, Vec<bool>)], device: &Device) -> (Tensor<2, Int>, Tensor<2, Bool>) {
    let len = rows[0].0.len();
    let tokens: Vec<i64> = rows.iter().flat_map(|r| r.0.clone()).collect();
    let mask: Vec<bool> = rows.iter().flat_map(|r| r.1.clone()).collect();
    (
        Tensor::from_data(TensorData::new(tokens, [rows.len(), len]), device),
        Tensor::from_data(TensorData::new(mask, [rows.len(), len]), device),
    )
}

/// Two prompts, each with a chosen and a rejected answer, over a grey image.
struct Preference {
    images: Tensor<4>,
    chosen: (Tensor<2, Int>, Tensor<2, Bool>),
    rejected: (Tensor<2, Int>, Tensor<2, Bool>),
}

impl Preference {
    fn new(device: &Device) -> Preference {
        Preference {
            images: Tensor::<4>::ones([2, 3, 32, 32], device).mul_scalar(0.5),
            chosen: batch(&[row("Colour?", "Red.", 20), row("Count?", "Two.", 20)], device),
            rejected: batch(&[row("Colour?", "Blue.", 20), row("Count?", "Nine.", 20)], device),
        }
    }

    fn logps(&self, model: &TinyVlm, (tokens, mask): &(Tensor<2, Int>, Tensor<2, Bool>)) -> Tensor<1> {
        completion_logps(model.forward(self.images.clone(), tokens.clone()), tokens.clone(), mask.clone()).0
    }

    /// `steps` DPO steps at `lr` against the model as given; the loss at every step.
    fn train(&self, model: TinyVlm, lr: f64, steps: usize) -> (TinyVlm, Vec<f64>) {
        let ref_chosen = self.logps(&model, &self.chosen).detach();
        let ref_rejected = self.logps(&model, &self.rejected).detach();
        let cfg = LossConfig { loss: LossType::Sigmoid, beta: 0.1, label_smoothing: 0.0 };
        let mut optimizer = AdamW::default().config().init();
        let mut model = model;
        let mut losses = Vec::new();
        for _ in 0..steps {
            let policy = (self.logps(&model, &self.chosen), self.logps(&model, &self.rejected));
            let out = dpo_loss(policy.0, policy.1, ref_chosen.clone(), ref_rejected.clone(), &cfg);
            let loss = out.losses.mean();
            losses.push(loss.clone().into_scalar::<f32>() as f64);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optimizer.step(lr, model, grads);
        }
        (model, losses)
    }
}

#[test]
fn lora_trains_only_adapters_and_merges_into_the_same_model() {
    let device = Device::flex().autodiff();
    let model =
        TinyConfig::default().init(&device).with_lora(&LoraSpec { r: 4, alpha: 8.0, targets: all_targets() }).unwrap();
    let data = Preference::new(&device);
    let embeddings_before: Vec<f32> = model.tokens.weight.val().into_data().try_to_vec().unwrap();
    let (model, losses) = data.train(model, 1e-2, 8);
    assert!((losses[0] - std::f64::consts::LN_2).abs() < 1e-6, "at step 0 the adapters change nothing");
    assert!(losses[7] < losses[0] - 0.05, "the loss did not fall: {losses:?}");
    let embeddings_after: Vec<f32> = model.tokens.weight.val().into_data().try_to_vec().unwrap();
    assert_eq!(embeddings_before, embeddings_after, "a frozen weight moved");
    let (images, tokens) = (data.images.inner(), data.chosen.0.inner());
    let adapted: Vec<f32> = model.valid().forward(images.clone(), tokens.clone()).into_data().try_to_vec().unwrap();
    let merged: Vec<f32> = model.valid().materialize().forward(images, tokens).into_data().try_to_vec().unwrap();
    let worst = adapted.iter().zip(&merged).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "merging changed the outputs by {worst}");
}

#[test]
fn logits_cover_the_text_positions() {
    let device = Device::flex();
    let config = TinyConfig::default();
    let model = config.init(&device);
    let images = Tensor::<4>::zeros([2, 3, 32, 32], &device);
    let (tokens, _) = batch(&[row("Is it red?", "Yes.", 24), row("How many?", "Two.", 24)], &device);
    assert_eq!(model.forward(images, tokens).dims(), [2, 24, VOCAB]);
}

#[test]
fn dpo_through_the_model_starts_at_ln_2_and_learns_the_preference() {
    let device = Device::flex().autodiff();
    let (_, losses) = Preference::new(&device).train(TinyConfig::default().init(&device), 1e-3, 8);
    assert!((losses[0] - std::f64::consts::LN_2).abs() < 1e-6, "step 0: {}", losses[0]);
    assert!(losses[7] < losses[0] - 0.05, "the loss did not fall: {losses:?}");
}

#[test]
fn bf16_computes_near_f32_and_trains_the_f32_weights() {
    let device = Device::flex().autodiff();
    let data = Preference::new(&device);
    for lora in [None, Some(LoraSpec { r: 4, alpha: 8.0, targets: all_targets() })] {
        let mut model = TinyConfig::default().init(&device);
        if let Some(lora) = &lora {
            model = model.with_lora(lora).unwrap();
        }
        let exact: Vec<f32> = data.logps(&model, &data.chosen).into_data().try_to_vec().unwrap();
        let model = model.with_precision(Precision::Bf16);
        let mixed = data.logps(&model, &data.chosen);
        assert_eq!(mixed.dtype(), burn::tensor::DType::F32, "log-probs come back in f32");
        let mixed: Vec<f32> = mixed.into_data().try_to_vec().unwrap();
        for (e, m) in exact.iter().zip(&mixed) {
            assert!(((e - m) / e).abs() < 0.02, "bf16 log-prob {m} is far from f32's {e}");
        }
        let lr = if lora.is_some() { 1e-2 } else { 1e-3 };
        let (trained, losses) = data.train(model, lr, 8);
        assert!((losses[0] - std::f64::consts::LN_2).abs() < 1e-6, "step 0: {}", losses[0]);
        assert!(losses[7] < losses[0] - 0.05, "the loss did not fall in bf16: {losses:?}");
        assert_eq!(trained.float_dtype(), FloatDType::F32, "the weights stay f32");
        let image = data.images.clone().narrow(0, 0, 1).squeeze_dim(0);
        let answer = trained.valid().generate_from(image.inner(), "Colour?", &Sampling::default());
        assert!(answer.tokens_out > 0 || answer.stopped);
    }
}

/// Greedy generation without the cache: the whole sequence through the model per token.
fn generate_uncached(model: &TinyVlm, image: Tensor<4>, prompt: &str, steps: usize) -> String {
    let mut tokens: Vec<i64> = std::iter::once(BOS).chain(ByteTokenizer.encode(prompt)).map(i64::from).collect();
    let mut out = Vec::new();
    for _ in 0..steps {
        let ids = Tensor::<2, Int>::from_data(TensorData::new(tokens.clone(), [1, tokens.len()]), &image.device());
        let logits = model.forward(image.clone(), ids);
        let [_, n, v] = logits.dims();
        let mut last: Vec<f32> = logits.slice([0..1, n - 1..n, 0..v]).into_data().try_to_vec().unwrap();
        last[BOS as usize] = f32::NEG_INFINITY;
        last[PAD as usize] = f32::NEG_INFINITY;
        let next = pick_token(&last, &Sampling::default(), &mut sampler(&Sampling::default()));
        if next == EOS {
            break;
        }
        tokens.push(i64::from(next));
        out.push(next);
    }
    ByteTokenizer.decode(&out)
}

#[test]
fn cached_generation_matches_the_full_forward_and_seeds_fix_samples() {
    let device = Device::flex();
    device.seed(11);
    let model = TinyConfig { max_tokens: 40, ..TinyConfig::default() }.init(&device);
    let image = Tensor::<4>::ones([1, 3, 32, 32], &device).mul_scalar(0.3);
    let greedy = Sampling { max_new_tokens: 12, ..Sampling::default() };
    let cached = model.generate_from(image.clone().squeeze_dim(0), "What is red?", &greedy).text;
    assert_eq!(cached, generate_uncached(&model, image.clone(), "What is red?", 12));
    let sampled = Sampling { temperature: 1.0, top_p: 0.9, max_new_tokens: 12, seed: 5 };
    let a = model.generate_from(image.clone().squeeze_dim(0), "What is red?", &sampled);
    assert_eq!(a, model.generate_from(image.clone().squeeze_dim(0), "What is red?", &sampled));
    assert_eq!(a.tokens_in, "What is red?".len() + 1, "BOS and the prompt's bytes");
    let other = Sampling { seed: 6, ..sampled };
    let b = model.generate_from(image.squeeze_dim(0), "What is red?", &other);
    assert_ne!(a.text, b.text, "seeds 5 and 6 drew the same");
}
