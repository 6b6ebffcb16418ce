//! The `keel` binary: parses the command line and the settings, then serves.

mod extract_pdf;
mod serve;
mod settings;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "Keel: a production runtime for AI models"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Load the configured models and serve them over HTTP (the default).
    Serve,
    /// Read an API key on standard input and print its SHA-256 hash, for KEEL_API_KEYS_FILE.
    HashKey,
    /// Read a PDF on standard input and print its text layer, under memory and CPU limits.
    /// The server runs this itself for each PDF it ingests.
    #[command(hide = true)]
    ExtractPdf,
}

fn main() {
    let matches = Cli::command()
        .after_help(settings::help_table())
        .get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let settings = match settings::Settings::from_env() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("keel: {e}");
                    std::process::exit(2);
                }
            };
            if let Err(e) = serve::run(settings) {
                eprintln!("keel: {e:#}");
                std::process::exit(1);
            }
        }
        Command::HashKey => {
            let mut key = String::new();
            if std::io::stdin().read_line(&mut key).is_err() || key.trim().is_empty() {
                eprintln!("keel: hash-key reads a key on standard input");
                std::process::exit(2);
            }
            let hash = keel_http::auth::hash_key(key.trim_end_matches(['\r', '\n']));
            println!("{}", keel_http::auth::to_hex(&hash));
        }
        Command::ExtractPdf => extract_pdf::run(),
    }
}
