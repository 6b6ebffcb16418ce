//! `keel extract-pdf`: the child process the server runs for each PDF it ingests (see
//! `keel_retrieval::pdf`). It caps its own address space and CPU time before it reads a byte,
//! so a PDF that inflates to gigabytes or loops the parser ends this process, not the server.

use std::io::{Read, Write};

use keel_retrieval::pdf::EXIT_UNREADABLE;
use rlimit::Resource;

/// Address space for the parser: the binary's own mappings plus room for a large document.
const MAX_ADDRESS_SPACE: u64 = 1 << 30;
/// CPU seconds for one PDF; the kernel sends SIGXCPU, then SIGKILL.
const MAX_CPU_SECONDS: u64 = 30;
/// Largest PDF read (the server's own upload limit is far lower by default).
const MAX_PDF_BYTES: u64 = 512 << 20;

pub fn run() -> ! {
    let limits = [
        (Resource::AS, MAX_ADDRESS_SPACE),
        (Resource::CPU, MAX_CPU_SECONDS),
        // The parser writes no files.
        (Resource::FSIZE, 0),
    ];
    for (resource, limit) in limits {
        if let Err(e) = resource.set(limit, limit) {
            fail(&format!("cannot limit {resource:?}: {e}"));
        }
    }
    let mut pdf = Vec::new();
    if let Err(e) = std::io::stdin().take(MAX_PDF_BYTES).read_to_end(&mut pdf) {
        fail(&format!("reading the PDF: {e}"));
    }
    // pdf-extract panics on some malformed files; a panic is an unreadable PDF, not a crash.
    std::panic::set_hook(Box::new(|_| {}));
    let text = match std::panic::catch_unwind(|| pdf_extract::extract_text_from_mem(&pdf)) {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => fail(&e.to_string()),
        Err(_) => fail("the PDF's structure is broken"),
    };
    let mut out = std::io::stdout().lock();
    if out
        .write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .is_err()
    {
        std::process::exit(EXIT_UNREADABLE);
    }
    std::process::exit(0);
}

fn fail(why: &str) -> ! {
    eprintln!("{why}");
    std::process::exit(EXIT_UNREADABLE);
}
