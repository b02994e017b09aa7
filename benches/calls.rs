//! The model-call client against a local server that answers at once: 100k calls at
//! `max_in_flight: 256` (DESIGN §9: over 2,000 calls/s, flat memory). Reports calls/s,
//! client CPU per call and peak memory, then the same calls again from the memo.
//!
//! `cargo bench --bench calls`. The server runs in a child process (this binary with
//! `--serve`), so the CPU figures are the client's alone.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use silkie::calls::{self, CallSpec, ChatRequest, Limits, Memo, Message, Part};
use silkie::dsl::ModelDef;
use silkie::providers::{self, ImageUrls};

#[path = "../tests/common/server.rs"]
mod server;

const CALLS: usize = 100_000;

fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

mod support;
use support::peak_rss_mb;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve") {
        let s = server::Server::start(|_| server::Fault::None);
        println!("{}", s.url);
        loop {
            std::thread::park();
        }
    }
    if !args.iter().any(|a| a == "--bench") {
        println!("calls bench: run it with `cargo bench --bench calls`");
        return;
    }
    let mut child = Command::new(&args[0]).arg("--serve").stdout(Stdio::piped()).spawn().expect("start the server");
    let mut url = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut url).unwrap();
    let url = url.trim().to_string();

    let def: ModelDef =
        serde_json::from_value(json!({"provider": "openai", "model": "bench", "base_url": url})).unwrap();
    let images = Arc::new(ImageUrls::new(|_| Err("this bench sends no images".into())));
    let store_dir = tempfile::tempdir().expect("a temporary store");
    let store = silkie::store::Store::open(store_dir.path()).expect("open the store");
    let (provider, _) = providers::endpoint("bench", &def, images, &store).unwrap();
    let limits = Limits { max_in_flight: 256, ..Limits::default() };
    let endpoints = || -> Result<calls::Endpoints, calls::CallsError> {
        Ok(BTreeMap::from([("bench".to_string(), (provider.clone(), limits.clone()))]))
    };
    let identity = providers::identity("bench", &def);
    let specs: Vec<CallSpec> = (0..CALLS)
        .map(|i| {
            let request = ChatRequest {
                messages: vec![Message {
                    role: "user".into(),
                    content: vec![Part::Text { text: format!("Describe picture {i}.") }],
                }],
                params: BTreeMap::from([("max_tokens".to_string(), json!(64))]),
                image_max_side: None,
            };
            CallSpec { key: calls::call_key(&identity, &request, 0), model: "bench".into(), request }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let memo = Memo::open(&dir.path().join("calls.sqlite")).unwrap();
    let rss_before = peak_rss_mb();
    let (cpu, start) = (cpu_seconds(), Instant::now());
    let (results, stats) = calls::run_calls(&specs, &endpoints, &memo, false, &|_, _, _, _| {}).unwrap();
    let (wall, cpu) = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    assert_eq!(results.len(), CALLS);
    println!(
        "{CALLS} calls at max_in_flight 256: {:.2} s, {:.0} calls/s, client CPU {:.0} µs per call, {} retries; peak RSS {:.0} MB ({:.0} MB before)",
        wall,
        CALLS as f64 / wall,
        cpu / CALLS as f64 * 1e6,
        stats.retries,
        peak_rss_mb(),
        rss_before
    );
    let (cpu, start) = (cpu_seconds(), Instant::now());
    let (again, stats) = calls::run_calls(&specs, &endpoints, &memo, true, &|_, _, _, _| {}).unwrap();
    assert_eq!((again.len(), stats.memo_hits as usize), (CALLS, CALLS));
    println!(
        "the same calls from the memo (--offline): {:.2} s, {:.0} calls/s, CPU {:.1} µs per call",
        start.elapsed().as_secs_f64(),
        CALLS as f64 / start.elapsed().as_secs_f64(),
        (cpu_seconds() - cpu) / CALLS as f64 * 1e6
    );
    let _ = child.kill();
    let _ = child.wait();
}
