//! silkie's `llava` against transformers itself: tiny random checkpoints that transformers
//! builds and saves (tests/support/llava_fixture.py), loaded by silkie, must give the logits
//! transformers gives for the same tokens and pixels, and silkie's processor the prompt,
//! tokens and pixels transformers' processor gives.

mod common;

use std::path::Path;
use std::process::Command;

use burn::tensor::{Tensor, TensorData};
use common::llava::{fixture, numbers, reference_python, shape_of};
use serde_json::Value;
use silkie::model::device::{self, Precision};
use silkie::model::llava::Llava;
use silkie::model::llava::processor::Processor;
use silkie::model::policy::{Chat, Message, Part, Policy, Role, Sampling, Scored};

/// silkie's logits on flex within 1e-4 (max abs) of transformers' for the fixture `args` makes.
fn assert_logits_match(args: &[&str]) {
    let gap = common::llava::logits_gap(args, None);
    assert!(gap < 1e-4, "{args:?}: max |silkie − transformers| = {gap}");
}

#[test]
fn clip_and_llama_logits_match_transformers() {
    assert_logits_match(&["--vision", "clip", "--text", "llama"]);
}

#[test]
fn siglip_and_qwen2_logits_match_transformers() {
    assert_logits_match(&["--vision", "siglip", "--text", "qwen2"]);
}

#[test]
fn a_transformers_4_config_sharded_in_bf16_loads_to_the_same_logits() {
    assert_logits_match(&[
        "--vision",
        "clip",
        "--text",
        "llama",
        "--config-shape",
        "4",
        "--shards",
        "3",
        "--dtype",
        "bfloat16",
    ]);
}

#[test]
fn llama3_rope_scaling_matches_transformers() {
    assert_logits_match(&["--vision", "clip", "--text", "llama", "--rope", "llama3"]);
}

fn processor_of(dir: &Path) -> Processor {
    let config: Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let config = silkie::model::llava::config::parse(&config).unwrap();
    Processor::load(dir, config.image_tokens()).unwrap_or_else(|e| panic!("{e}"))
}

/// The largest difference of two pixel arrays, in 0–255 steps of the original image
/// (undoing the processor's normalisation by its standard deviation).
fn pixel_gap(ours: &[f32], theirs: &[f32], std: [f32; 3]) -> f32 {
    assert_eq!(ours.len(), theirs.len());
    let plane = ours.len() / 3;
    ours.iter().zip(theirs).enumerate().map(|(i, (a, b))| (a - b).abs() * std[i / plane] * 255.0).fold(0.0, f32::max)
}

#[test]
fn prompts_tokens_and_pixels_are_the_processors() {
    for (args, std) in [
        (&["--vision", "clip", "--text", "llama"][..], [0.268_629_54, 0.261_302_6, 0.275_777_1]),
        (&["--vision", "siglip", "--text", "qwen2"][..], [0.5; 3]),
    ] {
        let (dir, reference) = fixture(args);
        let processor = processor_of(dir.path());
        let messages =
            [Message { role: Role::User, content: vec![Part::Image, Part::Text("What is in the picture?".into())] }];
        let prompt = processor.render(&messages, true).unwrap();
        assert_eq!(prompt, reference["prompt"].as_str().unwrap(), "{args:?}");
        let ids: Vec<i64> = processor.encode(&prompt, true).unwrap().into_iter().map(i64::from).collect();
        let expected: Vec<i64> =
            reference["input_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(ids, expected, "{args:?}");
        // Where nothing is resized the pixels are the same numbers; where PIL resizes
        // bicubically, within 2 steps of 255.
        let square = image::open(dir.path().join("square.png")).unwrap();
        let (pixels, _) = processor.pixels(&square);
        let exact = pixel_gap(&pixels, &numbers(&reference["square_pixel_values"]), std);
        assert!(exact < 1e-3, "{args:?}: {exact} steps off without a resize");
        let photo = image::open(dir.path().join("image.png")).unwrap();
        let (pixels, shape) = processor.pixels(&photo);
        assert_eq!(shape.to_vec(), shape_of(&reference["pixel_shape"]));
        let resized = pixel_gap(&pixels, &numbers(&reference["pixel_values"]), std);
        eprintln!("{args:?}: pixels {exact:.4} steps off unresized, {resized:.2} resized");
        assert!(resized <= 2.0, "{args:?}: {resized} steps off after a resize");
    }
}

#[test]
fn greedy_generation_gives_the_tokens_transformers_generates() {
    let (dir, reference) = fixture(&["--vision", "clip", "--text", "llama"]);
    let device = device::open(None, Precision::F32, false).unwrap();
    let model = Llava::load(dir.path(), &device).unwrap();
    let config: Value = serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    let stop = silkie::model::llava::stop_tokens(dir.path(), &config).unwrap();
    let prompt: Vec<u32> =
        reference["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let [c, h, w] = shape_of(&reference["pixel_shape"])[..] else { panic!("pixel_shape") };
    let square = numbers(&reference["square_pixel_values"]);
    let pixels = Tensor::<4>::from_data(TensorData::new(square, [1, c, h, w]), &device);
    let greedy = Sampling { temperature: 0.0, top_p: 1.0, max_new_tokens: 16, seed: 0 };
    assert_eq!(stop, [2], "generation_config.json's eos_token_id");
    // The reference ran without an end-of-sequence token: 16 argmax steps each.
    let generated = model.generate(&[prompt], Some(pixels), &[greedy], &[]).unwrap();
    assert_eq!(generated, [(token_ids(&reference["greedy"]), false)]);
}

/// A reference's token list.
fn token_ids(value: &Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

#[test]
fn a_batch_of_requests_generates_what_transformers_generates_for_each_alone() {
    // Mistral's sliding window (16) is shorter than the padded prompts.
    for text in ["llama", "qwen2", "mistral"] {
        let vision = if text == "qwen2" { "siglip" } else { "clip" };
        let (dir, reference) = fixture(&["--vision", vision, "--text", text]);
        let device = device::open(None, Precision::F32, false).unwrap();
        let model = silkie::model::load(dir.path(), &device).unwrap();
        let processor = processor_of(dir.path());
        let square = std::fs::read(dir.path().join("square.png")).unwrap();
        let greedy = |max_new_tokens| Sampling { temperature: 0.0, top_p: 1.0, max_new_tokens, seed: 0 };
        let questions = reference["batch_greedy"].as_array().unwrap();
        let ask = |q: &Value| {
            let image = q["image"].as_bool().unwrap().then_some(square.as_slice());
            Chat::user(None, image, q["question"].as_str().unwrap())
        };
        // Each question with room for 16 tokens, and the first again with room for 5: it
        // leaves the batch early.
        let mut wanted: Vec<(&Value, usize)> = questions.iter().map(|q| (q, 16)).collect();
        wanted.push((&questions[0], 5));
        let asks: Vec<(Chat, Sampling)> = wanted.iter().map(|&(q, room)| (ask(q), greedy(room))).collect();
        let answers = model.generate_batch(&asks);
        assert_eq!(answers.len(), asks.len());
        for (i, (answer, (q, room))) in answers.into_iter().zip(wanted).enumerate() {
            let theirs: Vec<u32> = token_ids(&q["greedy"]).into_iter().take(room).take_while(|&t| t != 2).collect();
            let answer = answer.unwrap_or_else(|e| panic!("{text}, request {i}: {e}"));
            assert_eq!(answer.text, processor.decode(&theirs).unwrap(), "{text}, request {i}: {q}");
            assert_eq!(answer.stopped, theirs.len() < room, "{text}, request {i}");
            assert_eq!(answer.tokens_out, theirs.len(), "{text}, request {i}");
        }
    }
}

#[test]
fn a_llava_folder_answers_in_a_sample_stage_as_transformers_generates() {
    let (dir, reference) = fixture(&["--vision", "clip", "--text", "llama"]);
    let ws = common::Workspace::new();
    let checkpoint = dir.path().display().to_string();
    std::fs::create_dir_all(ws.path().join("img")).unwrap();
    std::fs::copy(dir.path().join("square.png"), ws.path().join("img/photo.png")).unwrap();
    // The fixture's questions, each answered by transformers alone; here they reach the
    // model together, and it answers them as one batch.
    let questions = reference["batch_greedy"].as_array().unwrap();
    let mut csv = "id,prompt,image\n".to_string();
    for (i, q) in questions.iter().enumerate() {
        let image = if q["image"].as_bool().unwrap() { "photo.png" } else { "" };
        csv += &format!("q{i},\"{}\",{image}\n", q["question"].as_str().unwrap());
    }
    ws.write("instructions.csv", &csv);
    ws.write(
        "pipeline.yaml",
        &format!(
            "version: 1\nstages:\n  instructions: {{ kind: load, params: {{ path: instructions.csv, images: img }} }}\n  answers:\n    kind: sample\n    needs: [instructions]\n    params: {{ pool: [{{ path: \"{checkpoint}\", temperature: 0 }}], per_instruction: 1, max_tokens: 16 }}\n"
        ),
    );
    ws.run(&[]);
    let rows = ws.silkie(&["show", "answers.responses", "--format", "json"]).json();
    let processor = processor_of(dir.path());
    for (i, q) in questions.iter().enumerate() {
        let row = rows.as_array().unwrap().iter().find(|r| r["instruction_id"] == format!("q{i}")).unwrap();
        // transformers' 16 greedy tokens, up to the first end of sequence, as text.
        let until_eos: Vec<u32> = token_ids(&q["greedy"]).into_iter().take_while(|&t| t != 2).collect();
        assert_eq!(row["response"].as_str().unwrap(), processor.decode(&until_eos).unwrap(), "{q}");
        assert_eq!(row["finish_reason"], if until_eos.len() < 16 { "stop" } else { "length" });
    }
    // In bf16 it is another model (its own calls) that still answers.
    let pipeline = ws.read("pipeline.yaml");
    ws.write("pipeline.yaml", &format!("{pipeline}    runtime: {{ dtype: bf16 }}\n"));
    ws.run(&[]);
    let rows = ws.silkie(&["show", "answers.responses", "--format", "json"]).json();
    assert_eq!(rows[0]["status"], "ok", "{rows}");
}

#[test]
fn completion_log_probs_follow_trls_rule_as_transformers_computes_them() {
    let (dir, reference) = fixture(&["--vision", "siglip", "--text", "qwen2"]);
    let device = device::open(None, Precision::F32, false).unwrap();
    let model = silkie::model::load(dir.path(), &device).unwrap();
    let square = std::fs::read(dir.path().join("square.png")).unwrap();
    let names = ["chosen", "rejected"];
    let rows: Vec<Scored> = names
        .iter()
        .map(|name| Scored {
            chat: Chat::user(None, Some(&square), "What is in the picture?"),
            completion: reference["completions"][name].as_str().unwrap(),
        })
        .collect();
    // Both rows in one padded batch, as training sends them.
    let batch = model.encode(&rows, None, &device).unwrap();
    let (sums, _) = model.completion_logps(&batch);
    let sums = sums.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    for (name, ours) in names.iter().zip(sums) {
        let theirs = reference["completion_logps"][name].as_f64().unwrap() as f32;
        assert!((ours - theirs).abs() < 1e-3, "{name}: silkie {ours}, transformers {theirs}");
    }
}

/// transformers' summed completion log-probs of `rows` (prompt, image file, chosen, rejected)
/// under the checkpoint in `dir`.
fn transformers_logps(dir: &Path, rows: &Value) -> Vec<(f64, f64)> {
    transformers_logps_with(dir, rows, None)
}

/// [`transformers_logps`], with `adapter` (a PEFT adapter folder) applied to `dir`'s model.
fn transformers_logps_with(dir: &Path, rows: &Value, adapter: Option<&Path>) -> Vec<(f64, f64)> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), rows.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/llava_logps.py");
    let out = Command::new(reference_python()).arg(script).arg(dir).arg(file.path()).args(adapter).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sums: Value = serde_json::from_slice(&out.stdout).unwrap();
    sums.as_array().unwrap().iter().map(|s| (s["chosen"].as_f64().unwrap(), s["rejected"].as_f64().unwrap())).collect()
}

fn reference_table(ws: &common::Workspace, stage: &str) -> Vec<(f64, f64)> {
    let rows = ws.silkie(&["show", &format!("{stage}.reference"), "--rows", "100", "--format", "json"]).json();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| (r["ref_logps/chosen"].as_f64().unwrap(), r["ref_logps/rejected"].as_f64().unwrap()))
        .collect()
}

fn assert_close(ours: &[(f64, f64)], theirs: &[(f64, f64)], what: &str) {
    assert_eq!(ours.len(), theirs.len());
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let gap = (a.0 - b.0).abs().max((a.1 - b.1).abs());
        assert!(gap < 1e-3, "{what}, pair {i}: silkie {a:?}, transformers {b:?}");
    }
}

/// Four preference pairs over two pictures, both already the processor's size (their pixels
/// are transformers' exactly, so log-probs compare to rounding: a resized image adds up to a
/// step of 255 per pixel).
const PAIRS: [(&str, &str, &str, &str); 4] = [
    ("What is in the picture?", "A red square on a blue field.", "There are three circles.", "a.png"),
    ("How many circles are there?", "There are three circles.", "A small house.", "b.png"),
    ("Describe the image in detail.", "The image shows a tree.", "A red square.", "a.png"),
    ("What is in the picture?", "A small house beside a tree.", "The lazy dog.", "b.png"),
];

/// A workspace with [`PAIRS`] and a LoRA DPO stage `policy` on the LLaVA in `checkpoint`,
/// trained for `epochs` (and `extra` stages after it).
fn llava_dpo(checkpoint: &Path, epochs: usize, extra: &str) -> common::Workspace {
    let ws = common::Workspace::new();
    std::fs::create_dir_all(ws.path().join("img")).unwrap();
    std::fs::copy(checkpoint.join("square.png"), ws.path().join("img/a.png")).unwrap();
    let other =
        image::RgbImage::from_fn(30, 30, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, ((x + y) * 4) as u8]));
    other.save(ws.path().join("img/b.png")).unwrap();
    let mut csv = String::from("prompt,chosen,rejected,image\n");
    for (p, c, r, i) in PAIRS {
        csv.push_str(&format!("{p},{c},{r},{i}\n"));
    }
    ws.write("pairs.csv", &csv);
    ws.write(
        "pipeline.yaml",
        &format!(
            "version: 1
stages:
  pairs: {{ kind: load, params: {{ path: pairs.csv, images: img }} }}
  policy:
    kind: dpo
    needs: [pairs]
    params: {{ base: {{ path: \"{}\" }}, lora: {{ r: 4, alpha: 8, targets: [attention, gate_proj, up_proj, down_proj] }}, lr: 0.01, epochs: {epochs}, batch_size: 2, seed: 3, checkpoint_every: 2 }}
{extra}",
            checkpoint.display()
        ),
    );
    ws
}

/// Stages after `policy`: `again` trains further from its checkpoint (so its reference table
/// is silkie's log-probs of the trained model), `export` writes the checkpoint to `tuned`.
const TRAIN_FURTHER_AND_EXPORT: &str = "  again:
    kind: dpo
    needs: [pairs]
    params: { base: { stage: policy }, lr: 0.001, epochs: 1, batch_size: 2 }
  export: { kind: export, needs: [policy], params: { path: tuned, format: checkpoint } }
";

/// [`PAIRS`] as the log-prob script reads them, images by their workspace paths.
fn pair_rows(ws: &common::Workspace) -> Value {
    PAIRS
        .iter()
        .map(|(p, c, r, i)| serde_json::json!({"prompt": p, "chosen": c, "rejected": r, "image": ws.path().join("img").join(i)}))
        .collect()
}

#[test]
fn lora_dpo_on_a_llava_folder_trains_and_its_merged_export_loads_in_transformers() {
    let (dir, _) = fixture(&["--vision", "clip", "--text", "llama"]);
    let ws = llava_dpo(dir.path(), 4, TRAIN_FURTHER_AND_EXPORT);
    ws.run(&[]);
    let training = ws.silkie(&["show", "policy.training", "--rows", "100", "--format", "json"]).json();
    let losses: Vec<f64> = training.as_array().unwrap().iter().map(|r| r["loss"].as_f64().unwrap()).collect();
    assert!((losses[0] - std::f64::consts::LN_2).abs() < 1e-5, "step 0 is ln 2: {losses:?}");
    assert!(losses.last().unwrap() < &(losses[0] - 0.05), "the loss did not fall: {losses:?}");
    let rows = pair_rows(&ws);
    // The base's log-probs (policy's reference) are transformers'; so are the tuned model's
    // (again's reference), read by transformers from the exported folder.
    assert_close(&reference_table(&ws, "policy"), &transformers_logps(dir.path(), &rows), "the base");
    assert_close(
        &reference_table(&ws, "again"),
        &transformers_logps(&ws.path().join("tuned"), &rows),
        "the tuned model",
    );
}

#[test]
fn mistral_with_a_sliding_window_shorter_than_the_prompt_matches_transformers() {
    assert_logits_match(&["--vision", "clip", "--text", "mistral"]);
}

#[test]
fn in_memory_tensor_names_and_a_template_in_tokenizer_config_load_too() {
    assert_logits_match(&["--key-layout", "nested", "--template-in", "tokenizer"]);
    let (dir, reference) = fixture(&["--template-in", "json", "--pad-to-square"]);
    let messages =
        [Message { role: Role::User, content: vec![Part::Image, Part::Text("What is in the picture?".into())] }];
    let processor = processor_of(dir.path());
    assert_eq!(processor.render(&messages, true).unwrap(), reference["prompt"].as_str().unwrap());
    // LLaVA's processor pads the 37×29 picture to a square of the mean colour, then resizes.
    let (pixels, _) = processor.pixels(&image::open(dir.path().join("image.png")).unwrap());
    let gap = pixel_gap(&pixels, &numbers(&reference["pixel_values"]), [0.268_629_54, 0.261_302_6, 0.275_777_1]);
    assert!(gap <= 2.0, "{gap} steps off after padding and resizing");
}

/// What loading `dir` says, as text.
fn load_error(dir: &Path) -> String {
    let device = device::open(None, Precision::F32, false).unwrap();
    match silkie::model::load(dir, &device) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_checkpoints_are_named_with_the_file_and_the_key() {
    let (dir, _) = fixture(&["--vision", "clip", "--text", "llama"]);
    let copy = |name: &str| {
        let to =
            dir.path().parent().unwrap().join(format!("{}-{name}", dir.path().file_name().unwrap().to_string_lossy()));
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
        to
    };
    let config =
        |dir: &Path| -> Value { serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap() };
    let empty = tempfile::tempdir().unwrap();
    assert!(load_error(empty.path()).contains("not a checkpoint silkie can run"), "{}", load_error(empty.path()));

    let other = copy("other");
    let mut c = config(&other);
    c["model_type"] = "idefics3".into();
    std::fs::write(other.join("config.json"), c.to_string()).unwrap();
    assert!(load_error(&other).contains("model_type `idefics3`"), "{}", load_error(&other));

    let wider = copy("wider");
    let mut c = config(&wider);
    c["text_config"]["intermediate_size"] = 64.into();
    std::fs::write(wider.join("config.json"), c.to_string()).unwrap();
    let message = load_error(&wider);
    assert!(message.contains("mlp") && message.contains("in the checkpoint, but its config makes it"), "{message}");

    let rope = copy("rope");
    let mut c = config(&rope);
    c["text_config"]["rope_parameters"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    std::fs::write(rope.join("config.json"), c.to_string()).unwrap();
    let message = load_error(&rope);
    assert!(message.contains("text_config.rope_parameters: RoPE type `yarn` is not supported"), "{message}");

    let deeper = copy("deeper");
    let mut c = config(&deeper);
    c["text_config"]["num_hidden_layers"] = 3.into();
    std::fs::write(deeper.join("config.json"), c.to_string()).unwrap();
    let message = load_error(&deeper);
    assert!(
        message.contains("weights the model needs are not in the checkpoint, e.g. language_model.layers.2."),
        "{message}"
    );

    let untemplated = copy("untemplated");
    std::fs::remove_file(untemplated.join("chat_template.jinja")).unwrap();
    let message = load_error(&untemplated);
    assert!(message.contains("chat_template.jinja: the checkpoint has no chat template"), "{message}");
}

#[test]
fn a_killed_llava_run_resumes_to_the_same_weights() {
    let (dir, _) = fixture(&["--vision", "siglip", "--text", "qwen2"]);
    // In f32, and in bf16 with the projector trained in full (f32 factors and masters saved
    // and read back).
    for bf16 in [false, true] {
        let workspace = || {
            let ws = llava_dpo(dir.path(), 12, "");
            if bf16 {
                let pipeline = ws.read("pipeline.yaml").replace("seed: 3,", "seed: 3, train_projector: true,");
                ws.write("pipeline.yaml", &format!("{pipeline}    runtime: {{ dtype: bf16 }}\n"));
            }
            ws
        };
        let uninterrupted = workspace().run(&[]);
        let ws = workspace();
        common::kill_after_first_save(&ws);
        let resumed = ws.command(&["run", "--format", "json"]).env("SILKIE_LOG", "silkie=info").output().unwrap();
        let resumed: common::Ran = resumed.into();
        assert!(resumed.stderr.contains("resuming after step"), "bf16 {bf16}: it started over:\n{}", resumed.stderr);
        let digest = |record: &Value| {
            let policy = record["instances"].as_array().unwrap().iter().find(|i| i["name"] == "policy").unwrap();
            policy["outputs"]["checkpoint"]["digest"].as_str().unwrap().to_string()
        };
        assert_eq!(digest(&resumed.json()), digest(&uninterrupted), "bf16 {bf16}: the resumed run ended elsewhere");
    }
}

#[test]
fn adapters_kept_apart_load_with_peft_and_give_silkies_log_probs() {
    let (dir, _) = fixture(&["--vision", "clip", "--text", "llama"]);
    let extra = format!(
        "{TRAIN_FURTHER_AND_EXPORT}  adapter_out: {{ kind: export, needs: [policy], params: {{ path: lora, format: peft }} }}
  hf_out: {{ kind: export, needs: [policy], params: {{ path: hf, format: hf }} }}
"
    );
    let ws = llava_dpo(dir.path(), 4, &extra);
    ws.write("pipeline.yaml", &ws.read("pipeline.yaml").replace("seed: 3,", "seed: 3, merge_lora: false,"));
    ws.run(&[]);
    let tuned = ws.path().join("tuned");
    assert!(
        tuned.join("adapter/adapter_config.json").is_file()
            && tuned.join("adapter/adapter_model.safetensors").is_file()
    );
    let rows = pair_rows(&ws);
    // peft applies the adapters to the base weights beside them as silkie does (again's
    // reference is silkie reading the same folder back).
    assert_close(&reference_table(&ws, "again"), &transformers_logps(&tuned, &rows), "base + PEFT adapters");
    // …and they changed the model: the base alone answers otherwise.
    let base = transformers_logps(dir.path(), &rows);
    let moved = reference_table(&ws, "again").iter().zip(&base).any(|(a, b)| (a.0 - b.0).abs() > 1e-2);
    assert!(moved, "the adapters changed nothing");
    // `format: peft` writes the adapter alone, which peft applies to the base it came from;
    // `format: hf` the whole folder.
    let lora = ws.path().join("lora");
    assert!(lora.join("adapter_config.json").is_file() && !lora.join("config.json").exists());
    let peft = transformers_logps_with(dir.path(), &rows, Some(&lora));
    assert_close(&reference_table(&ws, "again"), &peft, "the base + the exported PEFT adapter");
    assert!(ws.path().join("hf/config.json").is_file() && ws.path().join("hf/adapter").is_dir());
    // A merged checkpoint has no adapter to export: said, with what to do instead.
    let pipeline = ws.read("pipeline.yaml");
    ws.write(
        "pipeline.yaml",
        &format!("{pipeline}  merged_out: {{ kind: export, needs: [again], params: {{ path: m, format: peft }} }}\n"),
    );
    let refused = ws.silkie(&["run"]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("holds no PEFT adapter") && refused.stderr.contains("merge_lora: false"),
        "{}",
        refused.stderr
    );
}

#[test]
fn bf16_weights_answer_as_transformers_computes_in_bf16() {
    let (dir, reference) = fixture(&["--vision", "siglip", "--text", "qwen2"]);
    let device = device::open(None, Precision::F32, false).unwrap();
    let model = Llava::load(dir.path(), &device).unwrap().in_dtype(burn::tensor::FloatDType::BF16);
    let ids: Vec<i64> = reference["input_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    let n = ids.len();
    let tokens = Tensor::<2, burn::tensor::Int>::from_data(TensorData::new(ids, [1, n]), &device);
    let [c, h, w] = shape_of(&reference["pixel_shape"])[..] else { panic!("pixel_shape") };
    let pixels = Tensor::<4>::from_data(TensorData::new(numbers(&reference["pixel_values"]), [1, c, h, w]), &device);
    let logits = model.forward(tokens, Some(pixels)).unwrap();
    assert_eq!(logits.dtype(), burn::tensor::DType::F32, "logits come back in f32");
    let ours = logits.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let gap = |theirs: &[f32]| ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    let (theirs_bf16, theirs_f32) = (numbers(&reference["logits_bf16"]), numbers(&reference["logits"]));
    let (bf16, f32) = (gap(&theirs_bf16), gap(&theirs_f32));
    // bf16's own error, as transformers makes it: the yardstick for how far two bf16 runs may part.
    let rounding = theirs_bf16.iter().zip(&theirs_f32).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    eprintln!(
        "bf16 logits: max gap {bf16:.3} to transformers' bf16, {f32:.3} to its f32; its own bf16 error {rounding:.3}"
    );
    assert!(bf16 < 2.0 * rounding && f32 < 2.0 * rounding, "silkie's bf16 is off by more than bf16 rounding explains");
}

/// Which of the checkpoint parts `prefixes` name differ between two folders' weights, as
/// safetensors reads them (names as the base lays them out), the base's rounded to the
/// tuned one's type (a bf16 run keeps its frozen parts as the base in bf16).
fn changed_parts(base: &Path, tuned: &Path, prefixes: &[&str]) -> Vec<String> {
    let script = "import json, sys, torch
from safetensors.torch import load_file
def load(d):
    import glob
    out = {}
    for f in glob.glob(d + '/*.safetensors'):
        out.update(load_file(f))
    return out
base, tuned = load(sys.argv[1]), load(sys.argv[2])
changed = set()
for prefix in sys.argv[3:]:
    for name, t in base.items():
        if name.startswith(prefix) and not torch.equal(t.to(tuned[name].dtype), tuned[name]):
            changed.add(prefix)
print(json.dumps(sorted(changed)))";
    let out =
        Command::new(reference_python()).arg("-c").arg(script).arg(base).arg(tuned).args(prefixes).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A stage `projector`: one epoch of LoRA DPO on `checkpoint` that trains the projector in
/// full beside the adapters, with `runtime` (a YAML line, or nothing).
fn projector_stage(checkpoint: &Path, runtime: &str) -> String {
    format!(
        "  projector:
    kind: dpo
    needs: [pairs]
{runtime}    params: {{ base: {{ path: \"{}\" }}, lora: {{ r: 4, alpha: 8, targets: [attention] }}, train_projector: true, lr: 0.01, epochs: 1, batch_size: 2 }}
",
        checkpoint.display()
    )
}

#[test]
fn the_projector_trains_on_request_and_the_vision_tower_stays_frozen() {
    let (dir, _) = fixture(&["--vision", "clip", "--text", "llama"]);
    let extra = format!(
        "{}  plain_out: {{ kind: export, needs: [policy], params: {{ path: plain, format: checkpoint }} }}
  projector_out: {{ kind: export, needs: [projector], params: {{ path: projector, format: checkpoint }} }}
",
        projector_stage(dir.path(), "")
    );
    let ws = llava_dpo(dir.path(), 1, &extra);
    ws.run(&[]);
    let parts = ["multi_modal_projector.", "vision_tower.", "language_model."];
    // LoRA alone trains the language model; asked, the projector trains with it; the tower
    // stays as it was either way.
    assert_eq!(changed_parts(dir.path(), &ws.path().join("plain"), &parts), ["language_model."]);
    assert_eq!(
        changed_parts(dir.path(), &ws.path().join("projector"), &parts),
        ["language_model.", "multi_modal_projector."]
    );
    // A PEFT adapter kept apart could not carry the projector: refused, naming the key.
    let pipeline =
        ws.read("pipeline.yaml").replace("train_projector: true,", "train_projector: true, merge_lora: false,");
    ws.write("pipeline.yaml", &pipeline);
    let refused = ws.silkie(&["validate"]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("train_projector") && refused.stderr.contains("merge_lora: true"),
        "{}",
        refused.stderr
    );
}

/// A safetensors file's tensors: name → header entry (dtype, shape, offsets).
fn safetensors_header(file: &Path) -> serde_json::Map<String, Value> {
    let bytes = std::fs::read(file).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    header.remove("__metadata__");
    header
}

/// Each tensor's dtype in a safetensors file's header.
fn safetensors_dtypes(file: &Path) -> Vec<String> {
    safetensors_header(file).values().map(|t| t["dtype"].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_saved_siglip_llava_has_every_tensor_its_base_had() {
    // SigLIP's pooling head, which LLaVA never runs, is carried over as the base held it.
    let (dir, _) = fixture(&["--vision", "siglip", "--text", "qwen2"]);
    let export = "  export: { kind: export, needs: [policy], params: { path: tuned, format: checkpoint } }\n";
    let ws = llava_dpo(dir.path(), 1, export);
    ws.run(&[]);
    let tuned = ws.path().join("tuned");
    let names = |d: &Path| safetensors_header(&d.join("model.safetensors")).keys().cloned().collect::<Vec<_>>();
    let base = names(dir.path());
    assert!(base.iter().any(|n| n.contains("vision_tower.head.")), "the fixture has a pooling head: {base:?}");
    assert_eq!(names(&tuned), base);
    assert!(changed_parts(dir.path(), &tuned, &["vision_tower.", "model.vision_tower."]).is_empty());
}

#[test]
fn in_bf16_a_llava_trains_f32_adapters_and_masters_over_its_bf16_weights() {
    let (dir, _) = fixture(&["--vision", "clip", "--text", "llama"]);
    // `projector` trains the projector in full beside LoRA: its weights get f32 masters.
    let extra = format!(
        "{}  projector_out: {{ kind: export, needs: [projector], params: {{ path: projector, format: checkpoint }} }}
{TRAIN_FURTHER_AND_EXPORT}",
        projector_stage(dir.path(), "    runtime: { dtype: bf16 }\n")
    );
    let ws = llava_dpo(dir.path(), 4, &extra);
    let policy_params = "    needs: [pairs]\n    params: { base: { path:";
    let bf16_policy = ws.read("pipeline.yaml").replacen(
        policy_params,
        "    needs: [pairs]\n    runtime: { dtype: bf16 }\n    params: { base: { path:",
        1,
    );
    ws.write("pipeline.yaml", &bf16_policy);
    ws.run(&[]);
    let training = ws.silkie(&["show", "policy.training", "--rows", "100", "--format", "json"]).json();
    let losses: Vec<f64> = training.as_array().unwrap().iter().map(|r| r["loss"].as_f64().unwrap()).collect();
    // The policy and its reference are one bf16 computation until the first update.
    assert!((losses[0] - std::f64::consts::LN_2).abs() < 1e-5, "step 0 is ln 2: {losses:?}");
    assert!(losses.last().unwrap() < &(losses[0] - 0.05), "the loss did not fall: {losses:?}");
    // The export is a bf16 checkpoint, as transformers saves a model loaded in bf16 …
    let tuned = ws.path().join("tuned");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(tuned.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    let dtypes = safetensors_dtypes(&tuned.join("model.safetensors"));
    assert!(!dtypes.is_empty() && dtypes.iter().all(|d| d == "BF16"), "{dtypes:?}");
    // … whose numbers transformers reads as silkie does (again reads it in f32).
    assert_close(&reference_table(&ws, "again"), &transformers_logps(&tuned, &pair_rows(&ws)), "the bf16 export");
    // A part trained in full moves in bf16 too: its f32 master took the small updates.
    let parts = ["multi_modal_projector.", "vision_tower.", "language_model."];
    assert_eq!(
        changed_parts(dir.path(), &ws.path().join("projector"), &parts),
        ["language_model.", "multi_modal_projector."]
    );
}

#[test]
fn a_config_alone_times_a_dpo_step_of_its_shape_with_random_weights() {
    let (dir, _) = fixture(&["--vision", "clip", "--text", "llama"]);
    let ws = common::Workspace::new();
    let config = dir.path().join("config.json");
    let bench = |source: &[&str], extra: &[&str]| -> Value {
        let mut args = vec!["bench", "dpo", "--steps", "1", "--lora", "4", "--format", "json"];
        args.extend(source);
        args.extend(extra);
        let out = ws.silkie(&args);
        assert_eq!(out.code, 0, "{}", out.stderr);
        out.json()
    };
    let checkpoint = bench(&["--model", dir.path().to_str().unwrap()], &[]);
    for extra in [&[][..], &["--dtype", "bf16", "--gradient-checkpointing"]] {
        let random = bench(&["--config", config.to_str().unwrap()], extra);
        // The checkpoint's shape: as many weights, as many trained.
        assert_eq!(random["params"], checkpoint["params"], "{extra:?}");
        assert_eq!(random["trainable"], checkpoint["trainable"], "{extra:?}");
        assert!(random["tokens"].as_u64().unwrap() > 8 * 16, "every row holds the image's tokens: {random}");
        assert!(random["tokens_per_second"].as_f64().unwrap() > 0.0);
    }
    let missing = ws.silkie(&["bench", "dpo", "--config", "nowhere.json"]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("--config nowhere.json"), "{}", missing.stderr);
}

#[test]
fn the_gpu_checks_7b_config_is_llava_1_5_7b_to_the_parameter() {
    // Burn initialises weights on first use, so counting them allocates nothing.
    let dir = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/configs/llava-1.5-7b.json");
    std::fs::copy(config, dir.path().join("config.json")).unwrap();
    let model = silkie::model::random(dir.path(), &burn::tensor::Device::flex()).unwrap();
    // llava-hf/llava-1.5-7b-hf as transformers counts it.
    assert_eq!(burn::module::Module::num_params(&model), 7_063_427_072);
}
