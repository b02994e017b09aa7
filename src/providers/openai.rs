//! An OpenAI-compatible chat-completions client (reqwest). The API key is read from the
//! environment variable the model names, sent in a header, and never stored anywhere.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::ImageUrls;
use crate::calls::{CallError, CallFuture, CallResult, CallStatus, ChatRequest, Part, Provider};
use crate::dsl::ModelDef;

pub struct OpenAi {
    client: reqwest::Client,
    url: String,
    model: String,
    /// The model entry's own `params` (part of its identity): sent with every request.
    params: serde_json::Map<String, Value>,
    api_key: Option<String>,
    images: Arc<ImageUrls>,
}

impl OpenAi {
    /// The provider of model `name`, or why it cannot be set up.
    pub fn new(name: &str, def: &ModelDef, images: Arc<ImageUrls>) -> Result<OpenAi, String> {
        let base =
            def.base_url.as_deref().ok_or_else(|| "needs a `base_url` (e.g. http://127.0.0.1:8000/v1)".to_string())?;
        let model = def.model.clone().unwrap_or_else(|| name.to_string());
        let api_key = match &def.api_key_env {
            None => None,
            Some(var) => {
                Some(std::env::var(var).map_err(|_| format!("reads its API key from ${var}, which is not set"))?)
            }
        };
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1024)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let url = format!("{}/chat/completions", base.trim_end_matches('/'));
        Ok(OpenAi { client, url, model, params: def.params.clone(), api_key, images })
    }

    async fn body(&self, request: &ChatRequest) -> Result<Value, CallError> {
        let mut messages = Vec::with_capacity(request.messages.len());
        for message in &request.messages {
            let mut content = Vec::with_capacity(message.content.len());
            for part in &message.content {
                content.push(match part {
                    Part::Text { text } => json!({"type": "text", "text": text}),
                    Part::Image { digest } => {
                        let url = self
                            .images
                            .data_url_async(digest, request.image_max_side)
                            .await
                            .map_err(CallError::Fatal)?;
                        json!({"type": "image_url", "image_url": {"url": &*url}})
                    }
                });
            }
            messages.push(json!({"role": message.role, "content": content}));
        }
        let mut body = json!({"model": self.model, "messages": messages, "n": 1});
        // The model's own params first; the request's (the stage's decoding params) win.
        for (k, v) in self.params.iter().chain(&request.params) {
            body[k] = v.clone();
        }
        Ok(body)
    }

    /// A server's words with the API key taken out, should it echo it.
    fn redact(&self, text: &str) -> String {
        let short: String = text.chars().take(300).collect();
        match &self.api_key {
            Some(key) if !key.is_empty() => short.replace(key.as_str(), "[api key]"),
            _ => short,
        }
    }

    async fn call(&self, request: &ChatRequest, timeout: Duration) -> Result<CallResult, CallError> {
        let body = self.body(request).await?;
        let start = Instant::now();
        let mut post = self.client.post(&self.url).json(&body).timeout(timeout);
        if let Some(key) = &self.api_key {
            post = post.bearer_auth(key);
        }
        let transient = |detail: String| CallError::Transient { detail, retry_after: None };
        let response = post.send().await.map_err(|e| transient(describe(&e)))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let text = response.text().await.map_err(|e| transient(format!("reading the reply: {}", describe(&e))))?;
        let latency_ms = start.elapsed().as_millis() as u64;
        let detail = format!("HTTP {status}: {}", self.redact(&text));
        match status.as_u16() {
            200..=299 => parse_reply(&text, latency_ms).map_err(|e| transient(self.redact(&e))),
            408 | 409 | 429 | 500..=599 => Err(CallError::Transient { detail, retry_after }),
            // The request itself is at fault: remembered, so it is not paid for again.
            400 | 422 if !mentions_credentials(&text) => {
                let refused = ["content_policy", "content_filter", "safety"].iter().any(|w| text.contains(w));
                let kind = if refused { CallStatus::Refused } else { CallStatus::Rejected };
                Ok(CallResult {
                    status: kind,
                    text: None,
                    finish_reason: None,
                    tokens_in: None,
                    tokens_out: None,
                    latency_ms,
                    detail: Some(detail),
                })
            }
            404 => {
                Err(CallError::Fatal(format!("{} has no model `{}` or no such route: {detail}", self.url, self.model)))
            }
            // Credentials, payment, proxies, redirects: the setup is wrong, and once it is fixed
            // no remembered failure may stand in the way.
            _ => Err(CallError::Fatal(format!(
                "{} refused the request ({detail}); check the URL and the API key variable",
                self.url
            ))),
        }
    }
}

impl Provider for OpenAi {
    fn send<'a>(&'a self, request: &'a ChatRequest, timeout: Duration) -> CallFuture<'a> {
        Box::pin(self.call(request, timeout))
    }
}

/// Whether an error body is about the API key (some servers say so with a 400).
fn mentions_credentials(text: &str) -> bool {
    let lowered = text.to_lowercase();
    ["api key", "api_key", "apikey", "unauthorized", "authentication", "credential"].iter().any(|w| lowered.contains(w))
}

/// A reqwest error in words, without the URL's query (which can carry keys for some APIs).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "the reply broke off"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() { kind.to_string() } else { format!("{kind}: {detail}") }
}

/// `Retry-After` in seconds (or OpenAI's `retry-after-ms`).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
    get("retry-after-ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| get("retry-after"))
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(600.0)))
}

/// Reads a chat-completions reply. A garbled one is an error (retried, never remembered).
fn parse_reply(text: &str, latency_ms: u64) -> Result<CallResult, String> {
    let reply: Value = serde_json::from_str(text).map_err(|e| format!("the reply is not JSON: {e}"))?;
    let choice = reply.get("choices").and_then(|c| c.get(0)).ok_or("the reply has no choices")?;
    let finish_reason = choice.get("finish_reason").and_then(Value::as_str).map(String::from);
    let message = choice.get("message").ok_or("the reply's choice has no message")?;
    let content = match message.get("content") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(Value::Array(parts)) => {
            Some(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(""))
        }
        Some(other) => return Err(format!("the reply's content is a {}", crate::dsl::type_name(other))),
    };
    let usage = |field: &str| reply.get("usage").and_then(|u| u.get(field)).and_then(Value::as_u64);
    let refusal = message.get("refusal").and_then(Value::as_str).filter(|r| !r.is_empty()).map(String::from);
    let refused = finish_reason.as_deref() == Some("content_filter") || refusal.is_some();
    if content.is_none() && !refused {
        return Err("the reply has no content".into());
    }
    Ok(CallResult {
        status: if refused { CallStatus::Refused } else { CallStatus::Ok },
        text: content,
        finish_reason,
        tokens_in: usage("prompt_tokens"),
        tokens_out: usage("completion_tokens"),
        latency_ms,
        detail: refusal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_and_garbage_is_an_error() {
        let ok = r#"{"choices":[{"message":{"role":"assistant","content":"A cat."},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":3}}"#;
        let r = parse_reply(ok, 5).unwrap();
        assert_eq!(
            (r.status, r.text.as_deref(), r.tokens_in, r.tokens_out),
            (CallStatus::Ok, Some("A cat."), Some(9), Some(3))
        );
        let filtered = r#"{"choices":[{"message":{"content":null},"finish_reason":"content_filter"}]}"#;
        assert_eq!(parse_reply(filtered, 1).unwrap().status, CallStatus::Refused);
        assert!(parse_reply("{\"choices\": [", 1).is_err());
        assert!(parse_reply("{\"choices\": []}", 1).is_err());
        assert!(parse_reply(r#"{"choices":[{"message":{"content":null},"finish_reason":"stop"}]}"#, 1).is_err());
    }
}
