//! The llama backend on the real default GGUF (`make models` fetches it): generation,
//! scheduling, prefix reuse, cancellation and admission, through keel-engine's trait only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_backend_llama::{load, LlamaOptions};
use keel_engine::generate::{
    ChatMessage, FinishReason, GenerateError, GenerationEvent, GenerationRequest,
    GenerationSummary, Prompt, Sampling, TextGenerator,
};

fn gguf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn options(slots: u32, max_waiting: usize) -> LlamaOptions {
    LlamaOptions {
        slots,
        context_per_slot: 512,
        threads: 2,
        step_tokens: 256,
        max_waiting,
        prefix_cache: true,
    }
}

fn start(slots: u32, max_waiting: usize) -> Arc<dyn TextGenerator> {
    load(
        "smol",
        &gguf(),
        &options(slots, max_waiting),
        Box::new(|_| {}),
    )
    .expect("the GGUF loads")
}

fn greedy() -> Sampling {
    Sampling {
        temperature: 0.0,
        ..Sampling::default()
    }
}

fn request(prompt: &str, max_tokens: u32) -> GenerationRequest {
    GenerationRequest {
        prompt: Prompt::Text(prompt.into()),
        sampling: greedy(),
        max_tokens: Some(max_tokens),
        stop: Vec::new(),
        ignore_eos: false,
        deadline: Instant::now() + Duration::from_secs(120),
        request_id: "test".into(),
    }
}

/// Waits for a request's end: its text and summary (bounded by the request's deadline).
fn collect(g: &dyn TextGenerator, r: GenerationRequest) -> (String, GenerationSummary) {
    let mut generation = g.generate(r).expect("admitted");
    let mut text = String::new();
    loop {
        match generation
            .events
            .blocking_recv()
            .expect("the request ends with Done or Failed")
        {
            GenerationEvent::Text(t) => text.push_str(&t),
            GenerationEvent::Done(summary) => return (text, summary),
            GenerationEvent::Failed(e) => panic!("generation failed: {e}"),
        }
    }
}

#[test]
fn greedy_generation_is_repeatable_and_counts_tokens() {
    let g = start(2, 4);
    let (a, sa) = collect(g.as_ref(), request("The capital of France is", 12));
    let (b, sb) = collect(g.as_ref(), request("The capital of France is", 12));
    assert!(!a.is_empty());
    assert_eq!(a, b);
    assert!(sa.completion_tokens <= 12 && sa.completion_tokens > 0);
    assert_eq!(sa.prompt_tokens, sb.prompt_tokens);
    // The second request found the first one's prompt in a slot's cache.
    assert_eq!(sa.cached_tokens, 0);
    assert_eq!(sb.cached_tokens, sb.prompt_tokens - 1);
}

#[test]
fn the_chat_template_answers_a_question() {
    let g = start(1, 1);
    let mut r = request("", 24);
    // (With the template's default system prompt, this 135M model rambles about Paris
    // landmarks instead; a plain system prompt keeps it on the question.)
    r.prompt = Prompt::Chat(vec![
        ChatMessage {
            role: "system".into(),
            content: "You are a helpful assistant.".into(),
        },
        ChatMessage {
            role: "user".into(),
            content: "What is the capital of France?".into(),
        },
    ]);
    let (text, summary) = collect(g.as_ref(), r);
    assert!(text.contains("Paris"), "answer: {text:?}");
    assert!(summary.prompt_tokens > 10);
}

#[test]
fn max_tokens_ends_with_length_and_stop_strings_are_cut() {
    let g = start(1, 1);
    let mut r = request("Count: 1, 2, 3, 4,", 40);
    r.ignore_eos = true;
    let (text, s) = collect(g.as_ref(), r.clone());
    assert_eq!((s.finish, s.completion_tokens), (FinishReason::Length, 40));
    // Stop at the first comma that the unconstrained run produced after some text.
    let cut = text.find(',').expect("the count goes on with commas");
    r.stop = vec![",".into()];
    let (stopped, s) = collect(g.as_ref(), r);
    assert_eq!(s.finish, FinishReason::Stop);
    assert_eq!(stopped, text[..cut]);
}

#[test]
fn concurrent_requests_share_decode_steps() {
    let g = start(4, 8);
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let g = g.clone();
            std::thread::spawn(move || {
                let mut r = request(&format!("Story number {i}: once upon a time"), 30);
                r.ignore_eos = true;
                collect(g.as_ref(), r)
            })
        })
        .collect();
    for h in handles {
        let (text, s) = h.join().unwrap();
        assert_eq!(s.completion_tokens, 30);
        assert!(!text.is_empty());
    }
}

#[test]
fn a_cancelled_request_frees_its_slot_and_a_full_queue_refuses() {
    let g = start(1, 1);
    let mut long = request("Write a very long essay about the sea.", 400);
    long.ignore_eos = true;
    let mut first = g.generate(long.clone()).unwrap();
    // The first token proves it holds the only slot.
    assert!(matches!(
        first.events.blocking_recv(),
        Some(GenerationEvent::Text(_))
    ));
    let mut waiting = g.generate(request("Hello", 4)).unwrap();
    match g.generate(request("Hello", 4)) {
        Err(GenerateError::Busy { retry_after, .. }) => {
            assert!(retry_after >= Duration::from_secs(1))
        }
        other => panic!("expected Busy, got {:?}", other.map(|g| g.prompt_tokens)),
    }
    // The client leaves: its slot goes to the waiting request, which completes long before
    // the 400 tokens of the first one could have been made.
    drop(first.events);
    let mut done = false;
    while let Some(event) = waiting.events.blocking_recv() {
        match event {
            GenerationEvent::Done(s) => {
                done = s.completion_tokens > 0;
                break;
            }
            GenerationEvent::Failed(e) => panic!("{e}"),
            GenerationEvent::Text(_) => {}
        }
    }
    assert!(done);
    let (_, s) = collect(g.as_ref(), request("Hello", 4));
    assert!(s.completion_tokens > 0);
}

#[test]
fn a_prompt_longer_than_the_context_is_refused() {
    let g = start(1, 1);
    let long = "word ".repeat(600);
    match g.generate(request(&long, 4)) {
        Err(GenerateError::PromptTooLong {
            prompt_tokens,
            context,
        }) => {
            assert!(prompt_tokens >= 512 && context == 512)
        }
        other => panic!(
            "expected PromptTooLong, got {:?}",
            other.map(|g| g.prompt_tokens)
        ),
    }
}

#[test]
fn a_file_that_is_not_gguf_is_a_load_error() {
    let dir = std::env::temp_dir().join(format!("keel-llm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fake = dir.join("fake.gguf");
    std::fs::write(&fake, b"not a model").unwrap();
    let e = load("x", &fake, &options(1, 1), Box::new(|_| {}))
        .err()
        .unwrap();
    assert!(e.contains("not a GGUF"), "{e}");
    // A real header with the rest cut off.
    let head = std::fs::read(gguf()).unwrap();
    let truncated = dir.join("truncated.gguf");
    std::fs::write(&truncated, &head[..head.len() / 3]).unwrap();
    let e = load("x", &truncated, &options(1, 1), Box::new(|_| {}))
        .err()
        .unwrap();
    assert!(e.contains("cannot load"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
