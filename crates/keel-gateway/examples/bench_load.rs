//! Open-loop load at a fixed rate against one URL, for the overhead benchmark: sends
//! `RATE` requests a second for `SECONDS` seconds (bounded: at most 60 s and 100,000
//! requests), each with its own 5 s timeout, and prints one JSON line with the latency
//! percentiles in microseconds and the error count.
//!
//! Usage: `bench_load URL MODEL RATE SECONDS`

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: bench_load URL MODEL RATE SECONDS");
        std::process::exit(2);
    }
    let url = args[1].clone();
    let model = args[2].clone();
    let rate: f64 = args[3].parse().expect("RATE is a number");
    let seconds: f64 = args[4]
        .parse::<f64>()
        .expect("SECONDS is a number")
        .min(60.0);
    let total = ((rate * seconds) as usize).min(100_000);
    let body =
        format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"Say ok."}}]}}"#);
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        let (latencies, errors) = (latencies.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let ok = match client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
            {
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            if ok {
                latencies
                    .lock()
                    .await
                    .push(sent.elapsed().as_micros() as u64);
            } else {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut l = latencies.lock().await.clone();
    l.sort_unstable();
    let pct = |p: f64| {
        if l.is_empty() {
            0
        } else {
            l[((l.len() - 1) as f64 * p).round() as usize]
        }
    };
    println!(
        r#"{{"rate":{rate},"sent":{total},"ok":{},"errors":{},"achieved_rps":{:.0},"p50_us":{},"p90_us":{},"p99_us":{},"max_us":{}}}"#,
        l.len(),
        errors.load(std::sync::atomic::Ordering::Relaxed),
        total as f64 / elapsed,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
}
