//! Tests that fail when the declarations in `vars.rs` and what is written elsewhere drift
//! apart: the README's settings table, and variable names written as strings in the code
//! that reads the environment (Keel's own settings code, and keel-gateway, which reads the
//! provider variables from the environment map it is given).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::vars::{help_table, ALL};

const README: &str = include_str!("../../../../README.md");

/// The rows of the README's settings table (the first table under `## Settings`): the
/// variable names of each row (a row may name several) and its default column.
fn readme_rows() -> Vec<(Vec<String>, String)> {
    let section = README
        .split("\n## ")
        .find(|s| s.starts_with("Settings\n"))
        .expect("the README has a ## Settings section");
    section
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // the header and the separator
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").collect();
            let names = cells[0]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect();
            (names, cells[1].trim().to_string())
        })
        .collect()
}

fn declared(name: &str) -> Option<&'static super::vars::Var> {
    ALL.iter().copied().find(|v| v.name == name)
}

#[test]
fn the_readme_table_lists_every_declared_variable_with_its_default() {
    let rows = readme_rows();
    assert!(rows.len() > 20, "the settings table was not found");
    let mut listed = BTreeSet::new();
    for (names, default) in &rows {
        assert!(!names.is_empty(), "a README settings row names no variable");
        for name in names {
            let var = declared(name).unwrap_or_else(|| {
                panic!("the README lists {name}, which crates/keel/src/settings/vars.rs does not declare")
            });
            assert_eq!(
                *default,
                var.default_text(),
                "the README's default for {name} differs from its declaration"
            );
            assert!(
                listed.insert(name.as_str()),
                "the README lists {name} twice"
            );
        }
    }
    for var in ALL {
        assert!(
            listed.contains(var.name),
            "{} is declared but missing from the README's settings table",
            var.name
        );
    }
}

#[test]
fn help_lists_every_variable_of_the_readme_table() {
    let help = help_table();
    let help_names: BTreeSet<&str> = help
        .lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for (names, _) in readme_rows() {
        for name in names {
            assert!(
                help_names.contains(name.as_str()),
                "{name} missing from --help"
            );
        }
    }
    let declared: BTreeSet<&str> = ALL.iter().map(|v| v.name).collect();
    assert_eq!(help_names, declared);
}

/// The source before its `mod tests` (tests set variables by name, which is fine).
fn without_tests(source: &str) -> &str {
    let mut from = 0;
    while let Some(at) = source[from..].find("#[cfg(test)]") {
        let at = from + at;
        let after = source[at + "#[cfg(test)]".len()..].trim_start();
        if after.starts_with("mod tests") {
            return &source[..at];
        }
        from = at + 1;
    }
    source
}

/// The string literals of Rust source, leaving out comments and its tests.
fn string_literals(source: &str) -> Vec<String> {
    let code = without_tests(source);
    let chars: Vec<char> = code.chars().collect();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < chars.len() {
        match chars[i] {
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i += 2;
            }
            // A char literal ('"', '\''); a lifetime has no closing quote two or three on.
            '\'' if chars.get(i + 2) == Some(&'\'') => i += 3,
            '\'' if chars.get(i + 1) == Some(&'\\') && chars.get(i + 3) == Some(&'\'') => i += 4,
            'r' if matches!(chars.get(i + 1), Some('"' | '#'))
                && (i == 0 || !chars[i - 1].is_alphanumeric() && chars[i - 1] != '_') =>
            {
                let hashes = chars[i + 1..].iter().take_while(|c| **c == '#').count();
                if chars.get(i + 1 + hashes) != Some(&'"') {
                    i += 1;
                    continue;
                }
                let start = i + 2 + hashes;
                let mut end = start;
                while end < chars.len()
                    && !(chars[end] == '"'
                        && chars[end + 1..].iter().take_while(|c| **c == '#').count() >= hashes)
                {
                    end += 1;
                }
                out.push(chars[start..end.min(chars.len())].iter().collect());
                i = end + 1 + hashes;
            }
            '"' => {
                let mut literal = String::new();
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    if let Some(c) = chars.get(i) {
                        literal.push(*c);
                    }
                    i += 1;
                }
                out.push(literal);
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// Whether a string looks like an environment variable's name.
fn looks_like_a_variable(s: &str) -> bool {
    s.len() >= 3
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

fn crate_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

#[test]
fn keel_reads_no_variable_by_a_name_written_as_a_string() {
    // Env takes a declaration, so an undeclared variable cannot be read through it; this
    // catches the other way in, a name spelled out (std::env::var("X"), vars.get("X")).
    let files = rust_files(&crate_dir("keel").join("src"));
    assert!(files.len() >= 6, "{files:?}");
    // This file is test code throughout (it names CARGO_MANIFEST_DIR for the compiler).
    for file in files.iter().filter(|f| !f.ends_with("settings/drift.rs")) {
        let source = std::fs::read_to_string(file).unwrap();
        for literal in string_literals(&source) {
            assert!(
                !looks_like_a_variable(&literal),
                "{}: \"{literal}\" is a variable name spelled out: declare it in vars.rs and \
                 read it through Env",
                file.display()
            );
        }
    }
}

#[test]
fn every_variable_the_gateway_reads_is_declared() {
    let files = rust_files(&crate_dir("keel-gateway").join("src"));
    let mut found = BTreeSet::new();
    for file in &files {
        let source = std::fs::read_to_string(file).unwrap();
        found.extend(
            string_literals(&source)
                .into_iter()
                // With an underscore: "POST" is not a variable the gateway reads.
                .filter(|l| looks_like_a_variable(l) && l.contains('_')),
        );
    }
    // Guards the scan itself: the gateway does read these.
    assert!(
        found.contains(super::vars::OPENAI_API_KEY.name),
        "{found:?}"
    );
    for name in found {
        let var = declared(&name).unwrap_or_else(|| {
            panic!("keel-gateway reads {name}, which settings/vars.rs does not declare")
        });
        if name.ends_with("_API_KEY") {
            assert!(var.secret, "{name} must be declared secret");
        }
    }
}

#[test]
fn the_literal_scan_sees_what_it_should() {
    let source = r##"
        // "IN_A_COMMENT"
        fn f<'a>(c: char) { let _ = ('"', '\'', "SEEN_ONE", r#"SEEN_TWO"#, "a \" b"); }
        /* "IN_A_BLOCK" */
        #[cfg(test)]
        mod tests { const X: &str = "IN_TESTS"; }
    "##;
    let found: Vec<String> = string_literals(source)
        .into_iter()
        .filter(|l| looks_like_a_variable(l))
        .collect();
    assert_eq!(found, ["SEEN_ONE", "SEEN_TWO"]);
}
