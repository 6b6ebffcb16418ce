//! PDF text, extracted in a separate process.
//!
//! A PDF is a program of compressed streams: a few kilobytes can inflate to gigabytes, and
//! parsers of hostile PDFs panic or loop. So the server never parses one itself. It runs its
//! own binary as `keel extract-pdf`, which caps its own memory and CPU time (setrlimit)
//! before reading the PDF on standard input and writing the text layer on standard output.
//! Whatever happens there (an abort at the memory cap, a kill at the CPU cap, a panic), the
//! server only sees a failed file; the parent also bounds the wall time and the output.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use keel_rag::records::LastError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// The child's exit status when the bytes are not a readable PDF.
pub const EXIT_UNREADABLE: i32 = 4;

/// How the server reaches the extractor.
#[derive(Debug, Clone)]
pub struct PdfExtractor {
    /// The keel binary (normally `std::env::current_exe()`).
    pub program: PathBuf,
    /// Wall-clock limit for one file, on top of the child's own CPU limit.
    pub timeout: Duration,
    /// Most bytes of text read back.
    pub max_text_bytes: usize,
}

impl PdfExtractor {
    pub fn new(program: PathBuf) -> Self {
        Self {
            program,
            timeout: Duration::from_secs(60),
            max_text_bytes: 64 << 20,
        }
    }

    /// The PDF's text layer, or why it cannot be read.
    pub async fn extract(&self, pdf: Vec<u8>) -> Result<String, LastError> {
        let failed = |code: &str, message: String| LastError {
            code: code.into(),
            message,
        };
        let mut child = Command::new(&self.program)
            .arg("extract-pdf")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed("server_error", format!("starting the PDF reader: {e}")))?;
        let (Some(mut stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(failed("server_error", "the PDF reader has no pipes".into()));
        };
        // Written while the output is read: a child blocked on a full stdout pipe would never
        // finish reading its input.
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(&pdf).await;
        });
        let limit = self.max_text_bytes as u64;
        let run = async {
            let (mut text, mut why) = (Vec::new(), Vec::new());
            let (mut out, mut err) = (stdout.take(limit + 1), stderr.take(4096));
            let (read, _) = tokio::join!(out.read_to_end(&mut text), err.read_to_end(&mut why));
            read.map_err(|e| failed("server_error", format!("reading the PDF text: {e}")))?;
            let status = child
                .wait()
                .await
                .map_err(|e| failed("server_error", format!("waiting for the PDF reader: {e}")))?;
            Ok::<_, LastError>((status, text, why))
        };
        let outcome = tokio::time::timeout(self.timeout, run).await;
        writer.abort();
        let (status, text, why) = outcome.map_err(|_| {
            failed(
                "invalid_file",
                format!(
                    "reading the PDF took longer than {} s",
                    self.timeout.as_secs()
                ),
            )
        })??;
        if text.len() as u64 > limit {
            return Err(failed(
                "invalid_file",
                format!("the PDF's text is larger than {limit} bytes"),
            ));
        }
        match status.code() {
            Some(0) => Ok(String::from_utf8_lossy(&text).into_owned()),
            Some(EXIT_UNREADABLE) => Err(failed(
                "invalid_file",
                format!(
                    "the PDF could not be read: {}",
                    String::from_utf8_lossy(&why).trim()
                ),
            )),
            // A signal (the memory or CPU cap) or an abort: the file asked for too much.
            _ => Err(failed(
                "invalid_file",
                "the PDF could not be read within Keel's memory and time limits for one file"
                    .into(),
            )),
        }
    }
}
