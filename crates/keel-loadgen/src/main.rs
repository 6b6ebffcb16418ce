//! An open-loop load generator: requests leave at a fixed rate whatever the server does, so an
//! overloaded server cannot slow its own load down (closed-loop tools such as wrk can only
//! offer as much as the server answers). Latency is measured from each request's scheduled
//! start, so time spent waiting for a connection counts (no coordinated omission).
//!
//! Prints one JSON object: counts by status, refusals without Retry-After, latency
//! percentiles of admitted (2xx) and refused answers, and what the generator itself dropped.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use tokio::sync::{Mutex, Semaphore};

#[derive(Parser)]
struct Args {
    /// The URL to POST to.
    #[arg(long)]
    url: String,
    /// The JSON body of every request.
    #[arg(long, conflicts_with = "bodies")]
    body: Option<String>,
    /// A file of request bodies, one JSON document a line, sent in rotation.
    #[arg(long)]
    bodies: Option<std::path::PathBuf>,
    /// Requests per second.
    #[arg(long)]
    rate: f64,
    /// Seconds to run.
    #[arg(long)]
    duration: f64,
    /// Most requests in flight; beyond it the generator drops (and counts) a request.
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// Seconds a request may take before it counts as timed out.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

#[derive(Default)]
struct Tally {
    statuses: BTreeMap<String, u64>,
    refused_without_retry_after: u64,
    admitted_ms: Vec<f64>,
    refused_ms: Vec<f64>,
}

fn percentiles(mut v: Vec<f64>) -> serde_json::Value {
    if v.is_empty() {
        return json!(null);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    json!({
        "count": v.len(),
        "p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99), "p999_ms": at(0.999),
        "max_ms": v[v.len() - 1],
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.rate > 0.0 && args.duration > 0.0,
        "rate and duration must be > 0"
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs_f64(args.timeout))
        .pool_max_idle_per_host(args.max_in_flight)
        .build()?;
    let bodies: Arc<Vec<String>> = Arc::new(match (&args.body, &args.bodies) {
        (Some(body), None) => vec![body.clone()],
        (None, Some(path)) => std::fs::read_to_string(path)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
        _ => anyhow::bail!("give --body or --bodies"),
    });
    anyhow::ensure!(!bodies.is_empty(), "no request bodies");
    let tally = Arc::new(Mutex::new(Tally::default()));
    let permits = Arc::new(Semaphore::new(args.max_in_flight));
    let total = (args.rate * args.duration).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let start = Instant::now();
    let mut dropped = 0u64;
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            dropped += 1;
            continue;
        };
        let body = bodies[i as usize % bodies.len()].clone();
        let (client, tally, url) = (client.clone(), tally.clone(), args.url.clone());
        tasks.push(tokio::spawn(async move {
            let result = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let outcome = match result {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response.headers().contains_key("retry-after");
                    // Read the whole answer: latency ends with the last byte.
                    let ok = response.bytes().await.is_ok();
                    Ok((status.as_u16(), retry_after, ok))
                }
                Err(e) => Err(if e.is_timeout() { "timeout" } else { "error" }),
            };
            let ms = scheduled.elapsed().as_secs_f64() * 1e3;
            let mut t = tally.lock().await;
            match outcome {
                Ok((status, retry_after, true)) => {
                    *t.statuses.entry(status.to_string()).or_default() += 1;
                    if (200..300).contains(&status) {
                        t.admitted_ms.push(ms);
                    } else {
                        t.refused_ms.push(ms);
                        if !retry_after && matches!(status, 429 | 503) {
                            t.refused_without_retry_after += 1;
                        }
                    }
                }
                Ok((_, _, false)) => *t.statuses.entry("body_cut".into()).or_default() += 1,
                Err(kind) => *t.statuses.entry(kind.into()).or_default() += 1,
            }
            drop(permit);
        }));
    }
    let sent_for = start.elapsed().as_secs_f64();
    for task in tasks {
        task.await?;
    }
    let tally = std::mem::take(&mut *tally.lock().await);
    println!(
        "{}",
        json!({
            "rate": args.rate,
            "duration_s": args.duration,
            "scheduled": total,
            "dropped_by_generator": dropped,
            "sending_took_s": sent_for,
            "statuses": tally.statuses,
            "refused_without_retry_after": tally.refused_without_retry_after,
            "admitted": percentiles(tally.admitted_ms),
            "refused": percentiles(tally.refused_ms),
        })
    );
    Ok(())
}
