use super::*;

#[test]
fn answers_parse_as_the_official_tool_parses_them() {
    let cases = [
        ("Yes", Answer::Yes),
        ("yes", Answer::Yes),
        ("YES.", Answer::Yes),
        ("Yes,", Answer::Yes),
        ("Yes, there is a dog.", Answer::Yes),
        ("No.", Answer::No),
        ("no", Answer::No),
        (" yes", Answer::Yes),
        ("  no", Answer::No),
        ("   yes", Answer::Other), // "yes" starts past the 4-character window
        ("   no", Answer::Other),  // the window "   n" holds no "no"
        ("know", Answer::No),
        ("not sure", Answer::No),
        ("nope", Answer::No),
        ("The answer is yes", Answer::Other),
        ("", Answer::Other),
        ("n o", Answer::Other),
        ("noyes", Answer::No),
        ("eyes", Answer::Yes),
        ("İyes", Answer::Other), // lowercasing İ gives two characters: "i̇ye"
    ];
    for (text, want) in cases {
        assert_eq!(parse_answer(text), want, "{text:?}");
    }
}

/// A small deterministic generator of awkward predictions.
fn predictions(n: usize) -> Vec<String> {
    let alphabet: Vec<char> = "yesnoYESNO .,!t\u{130}\u{df}ab".chars().collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 9) as usize;
            (0..len).map(|k| alphabet[((state >> (k * 5)) % alphabet.len() as u64) as usize]).collect()
        })
        .collect()
}

#[test]
fn only_the_lowercased_first_four_characters_count() {
    for p in predictions(5000) {
        let lower = p.to_lowercase();
        let window: String = lower.chars().take(4).collect();
        // Whatever follows a full window changes nothing.
        let tails: &[&str] = if window.chars().count() == 4 { &["", " yes", " no", "xx"] } else { &[""] };
        for tail in tails {
            assert_eq!(parse_answer(&format!("{window}{tail}")), parse_answer(&p), "{p:?} + {tail:?}");
        }
        // The rule itself: yes wins over no inside the window.
        let want = if window.contains("yes") {
            Answer::Yes
        } else if window.contains("no") {
            Answer::No
        } else {
            Answer::Other
        };
        assert_eq!(parse_answer(&p), want, "{p:?}");
    }
}

/// A results file of `images` images (questions Yes then No) where exactly `correct` answers
/// are right, `both` images have both right, and `unparseable` of the wrong ones are other.
fn results(images: usize, correct: usize, both: usize, unparseable: usize) -> Vec<Line> {
    let questions = 2 * images;
    assert!(2 * both <= correct && correct - 2 * both <= images - both && questions - correct >= unparseable);
    let mut singles = correct - 2 * both;
    let mut wrong_left = questions - correct;
    let mut other_left = unparseable;
    let mut lines = Vec::new();
    for i in 0..images {
        let right = if i < both {
            [true, true]
        } else if singles > 0 {
            singles -= 1;
            [true, false]
        } else {
            [false, false]
        };
        for (q, (truth, is_right)) in [(Answer::Yes, right[0]), (Answer::No, right[1])].into_iter().enumerate() {
            let prediction = if is_right {
                if truth == Answer::Yes { "Yes" } else { "No" }
            } else {
                wrong_left -= 1;
                if other_left > 0 {
                    other_left -= 1;
                    "Maybe"
                } else if truth == Answer::Yes {
                    "No"
                } else {
                    "Yes"
                }
            };
            lines.push(Line {
                image: format!("{i}.png"),
                question: format!("Question {q}?"),
                truth,
                prediction: prediction.into(),
            });
        }
    }
    assert_eq!((wrong_left, other_left), (0, 0));
    lines
}

#[test]
fn the_official_example_counts_give_the_official_totals_to_the_last_digit() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/mme-official-example.json");
    let vector: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut lines = BTreeMap::new();
    for (name, counts) in vector["subtasks"].as_object().unwrap() {
        let n = |k: &str| counts[k].as_u64().unwrap() as usize;
        let file = results(n("questions") / 2, n("correct"), n("both_correct_images"), n("unparseable"));
        lines.insert(name.clone(), file);
    }
    let scores = score(&lines, &Categories::official()).unwrap();
    for (name, counts) in vector["subtasks"].as_object().unwrap() {
        let s = &scores.subtasks[name];
        assert_eq!(s.score.to_bits(), counts["score"].as_f64().unwrap().to_bits(), "{name}: {}", s.score);
        assert_eq!(s.unparseable as u64, counts["unparseable"].as_u64().unwrap(), "{name}");
    }
    assert_eq!(scores.totals["perception"].to_bits(), vector["perception_total"].as_f64().unwrap().to_bits());
    assert_eq!(scores.totals["cognition"].to_bits(), vector["cognition_total"].as_f64().unwrap().to_bits());
}

fn every_subtask(file: impl Fn() -> Vec<Line>) -> BTreeMap<String, Vec<Line>> {
    Categories::official().subtasks().map(|s| (s.to_string(), file())).collect()
}

#[test]
fn the_position_cheat_scores_200_and_always_yes_50_on_every_subtask() {
    let cheat = every_subtask(|| {
        let mut lines = results(10, 20, 10, 0);
        for (i, l) in lines.iter_mut().enumerate() {
            l.prediction = if i % 2 == 0 { "Yes".into() } else { "No".into() };
        }
        lines
    });
    let scores = score(&cheat, &Categories::official()).unwrap();
    assert!(scores.subtasks.values().all(|s| s.score == 200.0));
    assert_eq!((scores.totals["perception"], scores.totals["cognition"]), (2000.0, 800.0));
    let yes = every_subtask(|| {
        let mut lines = results(10, 20, 10, 0);
        lines.iter_mut().for_each(|l| l.prediction = "yes".into());
        lines
    });
    let scores = score(&yes, &Categories::official()).unwrap();
    assert!(scores.subtasks.values().all(|s| s.score == 50.0), "{:?}", scores.subtasks);
}

#[test]
fn hand_counted_subtasks_score_as_computed_by_hand() {
    // existence: 4 images; 5 of 8 right, 2 images with both right, 1 unparseable:
    //   acc 5/8 = 0.625, acc+ 2/4 = 0.5 → 62.5 + 50 = 112.5
    // count: 3 images; 2 of 6 right, none both, 4 unparseable: 33.33… + 0
    // everything else: every answer unparseable → 0 (the official script would crash)
    let mut lines = every_subtask(|| {
        let mut l = results(2, 0, 0, 4);
        l.iter_mut().for_each(|l| l.prediction = "unsure".into());
        l
    });
    lines.insert("existence".into(), results(4, 5, 2, 1));
    lines.insert("count".into(), results(3, 2, 0, 4));
    let scores = score(&lines, &Categories::official()).unwrap();
    assert_eq!(scores.subtasks["existence"].score, 112.5);
    assert_eq!(scores.subtasks["existence"].unparseable, 1);
    assert_eq!(scores.subtasks["count"].score, 2.0 / 6.0 * 100.0);
    assert_eq!(scores.subtasks["position"].score, 0.0);
    assert_eq!(scores.totals["perception"], 112.5 + 2.0 / 6.0 * 100.0);
    assert_eq!(scores.totals["cognition"], 0.0);
}

#[test]
fn results_files_are_read_strictly_with_the_line_named() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    let categories = Categories(vec![("all".into(), vec!["a".into()])]);
    write("a.txt", "1.png\tIs it red?\tYes\tYes\n1.png\tIs it blue?\tNo\tno, it is red\n");
    let scores = score_dir(dir.path(), &categories).unwrap();
    assert_eq!(scores.totals["all"], 200.0);
    write("a.txt", "1.png\tIs it red?\tYes\n1.png\tIs it blue?\tNo\tNo\n");
    let err = score_dir(dir.path(), &categories).unwrap_err().to_string();
    assert!(err.contains("a.txt, line 1") && err.contains("4 tab-separated fields"), "{err}");
    write("a.txt", "1.png\tIs it red?\tMaybe\tYes\n1.png\tIs it blue?\tNo\tNo\n");
    let err = score_dir(dir.path(), &categories).unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("yes or no"), "{err}");
    write("a.txt", "1.png\tIs it red?\tYes\tYes\n");
    let err = score_dir(dir.path(), &categories).unwrap_err().to_string();
    assert!(err.contains("two questions"), "{err}");
    let other = Categories(vec![("all".into(), vec!["b".into()])]);
    let err = score_dir(dir.path(), &other).unwrap_err().to_string();
    assert!(err.contains("b.txt") && err.contains("missing"), "{err}");
}
