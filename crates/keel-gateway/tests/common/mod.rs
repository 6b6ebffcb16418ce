//! A scripted upstream for the gateway's tests: a real HTTP/1.1 server on a loopback port,
//! written on raw TCP so that it can misbehave the way real providers do (stall, cut a
//! stream midway, answer with garbage). Each connection serves one request and takes the
//! next step of the script; when the script runs out, it answers a plain completion.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone)]
pub enum Step {
    /// A JSON answer with this status and extra headers.
    Reply {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: String,
    },
    /// An event stream of these frames, then the connection closes (after `[DONE]`, or
    /// midway if the frames stop before it).
    Stream(Vec<String>),
    /// Read the request, then say nothing until the client gives up.
    Stall,
}

pub fn completion(model: &str, text: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    })
    .to_string()
}

pub fn ok(text: &str) -> Step {
    Step::Reply {
        status: 200,
        headers: vec![],
        body: completion("m", text),
    }
}

pub fn status(status: u16, headers: Vec<(&'static str, String)>) -> Step {
    Step::Reply {
        status,
        headers,
        body: r#"{"error":{"code":"x","message":"scripted failure"}}"#.into(),
    }
}

pub fn chunk(content: &str) -> String {
    serde_json::json!({
        "id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]
    })
    .to_string()
}

#[derive(Default)]
struct Shared {
    script: VecDeque<Step>,
    /// The `model` field of every request received, in order.
    models: Vec<String>,
}

#[derive(Clone)]
pub struct Upstream {
    pub base: String,
    shared: Arc<Mutex<Shared>>,
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Mutex::new(Shared::default()));
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, s.clone()));
            }
        });
        Self { base, shared }
    }

    pub fn script(&self, steps: impl IntoIterator<Item = Step>) {
        self.shared.lock().unwrap().script.extend(steps);
    }

    pub fn models(&self) -> Vec<String> {
        self.shared.lock().unwrap().models.clone()
    }
}

async fn read_request(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = conn.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(buf[end + 4..end + 4 + length].to_vec());
        }
    }
}

async fn serve(mut conn: TcpStream, shared: Arc<Mutex<Shared>>) {
    let Some(body) = read_request(&mut conn).await else {
        return;
    };
    let model = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["model"].as_str().map(str::to_string))
        .unwrap_or_default();
    let step = {
        let mut s = shared.lock().unwrap();
        s.models.push(model.clone());
        s.script.pop_front()
    }
    .unwrap_or_else(|| Step::Reply {
        status: 200,
        headers: vec![],
        body: completion(&model, "hello"),
    });
    match step {
        Step::Reply {
            status,
            headers,
            body,
        } => {
            let mut head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
        }
        Step::Stream(frames) => {
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
            let _ = conn.write_all(head.as_bytes()).await;
            for frame in frames {
                let _ = conn
                    .write_all(format!("data: {frame}\n\n").as_bytes())
                    .await;
                let _ = conn.flush().await;
            }
        }
        Step::Stall => {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }
    let _ = conn.shutdown().await;
}
