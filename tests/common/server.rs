//! A small OpenAI-compatible chat server for tests, on 127.0.0.1, with injectable faults and
//! a log of every request it received and every reply it completed.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

/// What the server does with the n-th request (counting from 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    None,
    TooManyRequests,
    ServerError,
    MalformedJson,
    Slow(Duration),
    DropConnection,
    /// 429 with `Retry-After: N` seconds.
    RetryAfter(u64),
    /// Any status with this body.
    Status(u16, &'static str),
}

pub struct Server {
    pub url: String,
    /// Every request body, in arrival order.
    pub requests: Arc<Mutex<Vec<Value>>>,
    /// Request bodies the server answered with a complete, valid reply.
    pub completed: Arc<Mutex<Vec<Value>>>,
    counter: Arc<AtomicU64>,
}

/// The reply text for a request: a function of its model and user text, so runs compare.
pub fn answer(body: &Value) -> String {
    let model = body["model"].as_str().unwrap_or("");
    format!("{model} says: {}", request_text(body).chars().rev().collect::<String>())
}

/// Every text part of a request's messages, joined.
pub fn request_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|m| m["content"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["text"].as_str().map(String::from))
        .collect()
}

/// Builds the reply text for a request body.
pub type Reply = dyn Fn(&Value) -> String + Send + Sync;

impl Server {
    pub fn start(plan: impl Fn(u64) -> Fault + Send + Sync + 'static) -> Server {
        Server::start_with(plan, answer)
    }

    pub fn start_with(
        plan: impl Fn(u64) -> Fault + Send + Sync + 'static,
        reply: impl Fn(&Value) -> String + Send + Sync + 'static,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let completed = Arc::new(Mutex::new(Vec::new()));
        let counter = Arc::new(AtomicU64::new(0));
        let plan = Arc::new(plan);
        let reply: Arc<Reply> = Arc::new(reply);
        let (r, c, n) = (requests.clone(), completed.clone(), counter.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, c, n, plan, reply) = (r.clone(), c.clone(), n.clone(), plan.clone(), reply.clone());
                std::thread::spawn(move || serve(stream, &r, &c, &n, &*plan, &*reply));
            }
        });
        Server { url, requests, completed, counter }
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

fn serve(
    stream: TcpStream,
    requests: &Mutex<Vec<Value>>,
    completed: &Mutex<Vec<Value>>,
    counter: &AtomicU64,
    plan: &(dyn Fn(u64) -> Fault + Send + Sync),
    reply_text: &Reply,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        let mut saw_request_line = false;
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" && saw_request_line {
                break;
            }
            saw_request_line = true;
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        requests.lock().unwrap().push(body.clone());
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let ok_reply = || {
            json!({
                "choices": [{"message": {"role": "assistant", "content": reply_text(&body)}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 11, "completion_tokens": 7}
            })
            .to_string()
        };
        let (status, extra, reply) = match plan(n) {
            Fault::DropConnection => return,
            Fault::TooManyRequests => (429, "Retry-After: 0\r\n".to_string(), "{\"error\": \"slow down\"}".to_string()),
            Fault::RetryAfter(secs) => (429, format!("Retry-After: {secs}\r\n"), "{\"error\": \"wait\"}".to_string()),
            Fault::Status(code, body) => (code, String::new(), body.to_string()),
            Fault::ServerError => (500, String::new(), "{\"error\": \"boom\"}".to_string()),
            Fault::MalformedJson => (200, String::new(), "{\"choices\": [".to_string()),
            Fault::Slow(d) => {
                std::thread::sleep(d);
                (200, String::new(), ok_reply())
            }
            Fault::None => (200, String::new(), ok_reply()),
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
            reply.len()
        );
        if writer.write_all(head.as_bytes()).and_then(|_| writer.write_all(reply.as_bytes())).is_err() {
            return;
        }
        if status == 200 && reply.ends_with('}') {
            completed.lock().unwrap().push(body);
        }
    }
}
