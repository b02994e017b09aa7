//! Property-based fuzzing of the parsers that read what users and models write: the
//! pipeline loader with interpolation and planning, the judge-reply parser, the VLFeedback
//! reader, and the MME and MMHal-Bench readers. None may panic, whatever the input, and
//! what they read must mean what was written.
//!
//! `scripts/test` runs a few hundred cases per target. The long run (see the README):
//! `SILKIE_FUZZ_CASES=1000000 cargo test --release --test fuzz`.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use silkie::data::judge;
use silkie::data::vlfeedback::{self, OnBad, Options};
use silkie::dsl::Loader;
use silkie::eval::{mme, mmhal};

fn cases() -> u32 {
    std::env::var("SILKIE_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(256)
}

fn runner() -> TestRunner {
    TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() })
}

/// Runs `test` over `strategy`, panicking with the smallest failing input.
fn check<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    if let Err(e) = runner().run(&strategy, test) {
        panic!("{e}");
    }
}

/// Text made mostly of the pieces the parsers look for, so cases reach their deep paths.
fn text_of(pieces: &'static [&'static str]) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        3 => proptest::sample::select(pieces).prop_map(String::from),
        1 => "[ -~]{0,12}",
        1 => any::<char>().prop_map(String::from),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|parts| parts.concat())
}

const YAML_PIECES: &[&str] = &[
    "version: 1\n",
    "stages:\n",
    "  a:\n",
    "  b:\n",
    "    kind: command\n",
    "    kind: load\n",
    "    kind: export\n",
    "    needs: [a]\n",
    "    params: { cmd: \"echo ${vars.x}\", outs: [o.txt] }\n",
    "    params: { path: o.txt }\n",
    "    matrix: { s: [1, 2] }\n",
    "vars: { x: \"${vars.y}\", y: 2 }\n",
    "vars: { x: \"${vars.x}\" }\n",
    "${matrix.s}",
    "${models.m.model}",
    "$${",
    "extends: other.yaml\n",
    "runtime: { timeout: -1 }\n",
    "models:\n",
    "  m: { provider: openai, model: x, base_url: \"http://127.0.0.1:9\" }\n",
    "    use: parts\n",
    ": ",
    "- ",
    "{",
    "}",
    "[",
    "]",
    "\"",
    "'",
    "\t",
    "\u{feff}",
    "&a ",
    "*a ",
    "<<: *a\n",
    "!!str ",
    "1e999",
    "~",
];

#[test]
fn the_pipeline_loader_and_planner_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("other.yaml"),
        "version: 1\nstages:\n  z: { kind: command, params: { cmd: \"true\" } }\n",
    )
    .unwrap();
    let file = dir.path().join("pipeline.yaml");
    check(text_of(YAML_PIECES), |text| {
        std::fs::write(&file, &text).unwrap();
        if let Ok(pipeline) = (Loader { workspace: dir.path() }).load(&file, &[]) {
            let _ = silkie::plan::build(&pipeline, 1_000);
        }
        Ok(())
    });
}

#[test]
fn vars_resolve_to_their_final_values_whatever_the_chain() {
    // A chain v0 → v1 → … → vN, written in any order, resolves every var to vN's value.
    let chain = (1usize..8, any::<u32>(), Just(()))
        .prop_flat_map(|(n, value, _)| (Just(n), Just(value), Just((0..=n).collect::<Vec<_>>()).prop_shuffle()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.yaml");
    check(chain, |(n, value, order)| {
        let vars: Vec<String> = order
            .iter()
            .map(|&i| if i == n { format!("v{i}: {value}") } else { format!("v{i}: \"${{vars.v{}}}\"", i + 1) })
            .collect();
        let text = format!(
            "version: 1\nvars: {{ {} }}\nstages:\n  a: {{ kind: command, params: {{ cmd: \"echo ${{vars.v0}}\" }} }}\n",
            vars.join(", ")
        );
        std::fs::write(&file, &text).unwrap();
        let pipeline =
            (Loader { workspace: dir.path() }).load(&file, &[]).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(&pipeline.stages["a"].params["cmd"], &serde_json::json!(format!("echo {value}")));
        Ok(())
    });
}

const REPLY_PIECES: &[&str] = &[
    "#### Helpfulness Assessment\n",
    "#### Visual Faithfulness Assessment\n",
    "#### Ethical Considerations Assessment\n",
    "##### Output for Text 1\n",
    "##### Output for Text 2\n",
    "##### Output for Text 0\n",
    "Text 3:\n",
    "Rating: ",
    "Rationale: ",
    "4",
    "4/5",
    "10/10",
    "N/A",
    "[3]",
    "**",
    "\n",
    "\r\n",
    "```json\n",
    "```",
    "{\"helpfulness\": [",
    "{\"rating\": \"4/5\"}",
    "]}",
    "- ",
    "•",
    "Response 1\n",
];

#[test]
fn the_judge_reply_parser_never_panics_and_only_rates_on_the_scale() {
    check(text_of(REPLY_PIECES), |reply| {
        let read = judge::read_reply(&reply);
        for ((aspect, n), judged) in &read.judgement {
            prop_assert!(silkie::data::rating::ASPECTS.contains(&aspect.as_str()));
            prop_assert!(*n >= 1, "texts count from 1 once read");
            if let Some(v) = judge::rating_value(&judged.rating) {
                prop_assert!(judge::RATING_SCALE.contains(&v));
            }
        }
        let _ = judge::missing(&read.judgement, &["helpfulness".to_string()], 4);
        Ok(())
    });
}

#[test]
fn a_reply_in_the_template_format_reads_back_as_written() {
    let ratings = proptest::collection::vec(proptest::collection::vec(1u8..=5, 1..5), 1..=3);
    check((ratings, any::<bool>()), |(by_aspect, as_json)| {
        let aspects = silkie::data::rating::ASPECTS;
        let reply = if as_json {
            let body: serde_json::Map<String, serde_json::Value> = by_aspect
                .iter()
                .zip(aspects)
                .map(|(rs, a)| {
                    (a.to_string(), rs.iter().map(|r| serde_json::json!({"rating": format!("{r}/5")})).collect())
                })
                .collect();
            serde_json::Value::Object(body).to_string()
        } else {
            let mut text = String::new();
            for (rs, aspect) in by_aspect.iter().zip(aspects) {
                text.push_str(&format!("#### {aspect} Assessment\n"));
                for (i, r) in rs.iter().enumerate() {
                    text.push_str(&format!("##### Output for Text {}\nRating: {r}\nRationale: because {i}\n", i + 1));
                }
            }
            text
        };
        let read = judge::parse_reply(&reply);
        let expected: BTreeMap<(String, usize), String> = by_aspect
            .iter()
            .zip(aspects)
            .flat_map(|(rs, a)| rs.iter().enumerate().map(move |(i, r)| ((a.to_string(), i + 1), r.to_string())))
            .collect();
        let got: BTreeMap<(String, usize), String> = read.into_iter().map(|(k, j)| (k, j.rating)).collect();
        prop_assert_eq!(got, expected);
        Ok(())
    });
}

const ROW_PIECES: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"id\"",
    "\"prompt\"",
    "\"completions\"",
    "\"model\"",
    "\"response\"",
    "\"annotations\"",
    "\"Helpfulness\"",
    "\"Ethics\"",
    "\"Rating\"",
    "\"Rationale\"",
    "\"4\"",
    "4",
    "null",
    "\"a\"",
    "\"../x\"",
    "\n",
    "\u{0}",
    "1e400",
];

#[test]
fn the_vlfeedback_reader_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.jsonl");
    let valid = r#"{"id": "q1", "prompt": "p", "completions": [{"model": "m", "response": "r", "annotations": {"Helpfulness": {"Rating": "4", "Rationale": "ok"}}}]}"#;
    check(text_of(ROW_PIECES), |noise| {
        std::fs::write(&file, format!("{valid}\n{noise}\n")).unwrap();
        for on_bad_row in [OnBad::Error, OnBad::Skip] {
            let opts = Options {
                images: None,
                on_bad_image: OnBad::Error,
                max_image_pixels: 1_000_000,
                on_bad_row,
                judge: "j",
                source: "s",
            };
            let mut store = |blobs: &[&[u8]]| Ok(blobs.iter().map(|b| ("0".repeat(64), b.len() as u64)).collect());
            let _ = vlfeedback::import(&file, "data.jsonl", &opts, &mut store);
        }
        Ok(())
    });
}

const MME_PIECES: &[&str] =
    &["a.png", "\t", "Is there a dog?", "Yes", "No", "yes.", "NO", "\n", "Is there", "maybe", " ", "\r\n", "x\ty\tz"];

#[test]
fn the_mme_and_mmhal_readers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("existence.txt");
    check((text_of(MME_PIECES), text_of(REPLY_PIECES)), |(results, judge_reply)| {
        std::fs::write(&file, &results).unwrap();
        if let Ok(lines) = mme::read_subtask(&file, true) {
            let score = mme::score_subtask(&lines);
            prop_assert!(score.acc >= 0.0 && score.acc <= 100.0 + 1e-9, "{score:?}");
        }
        let _ = mme::parse_answer(&results);
        let _ = mmhal::parse_rating(&judge_reply);
        Ok(())
    });
}
