//! Dynamic statements: parameters collected while the SQL is built, bound in order.

use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::Postgres;

/// One bound parameter of a statement built at run time.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    I64(i64),
    F64(f64),
    Json(serde_json::Value),
}

/// A statement whose SQL is assembled from this crate's own fragments and placeholder
/// numbers; every value a client chose is in `args`, never in `sql`.
pub(crate) fn query(sql: &str, args: Vec<Arg>) -> Query<'_, Postgres, PgArguments> {
    let mut q = sqlx::query(sql);
    for a in args {
        q = match a {
            Arg::Text(s) => q.bind(s),
            Arg::I64(n) => q.bind(n),
            Arg::F64(n) => q.bind(n),
            Arg::Json(v) => q.bind(sqlx::types::Json(v)),
        };
    }
    q
}

/// pgvector's text form of a vector: `[x,y,...]`, each f32 in its shortest exact form.
pub(crate) fn vector_text(v: &[f32]) -> String {
    let mut s = String::with_capacity(v.len() * 12 + 2);
    s.push('[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&x.to_string());
    }
    s.push(']');
    s
}

/// A quoted lexeme of PostgreSQL's `tsvector`/`tsquery` text forms.
fn lexeme(term: &str) -> String {
    format!("'{}'", term.replace('\\', "\\\\").replace('\'', "''"))
}

/// PostgreSQL keeps at most this many positions of one lexeme.
const MAX_POSITIONS: u32 = 255;

/// A chunk's analyzed terms as a `tsvector` literal: each term with as many positions as it
/// occurs (its BM25 term frequency), numbered consecutively.
pub(crate) fn tsvector_text(terms: &std::collections::BTreeMap<String, u32>) -> String {
    let mut s = String::new();
    let mut position = 1u32;
    for (term, &n) in terms {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(&lexeme(term));
        s.push(':');
        for i in 0..n.min(MAX_POSITIONS) {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&position.min(16383).to_string());
            position += 1;
        }
    }
    s
}

/// The analyzed query terms as a `tsquery` that matches a chunk containing any of them.
pub(crate) fn any_term_query(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| lexeme(t))
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsvector_literals_quote_terms_and_count_positions() {
        let terms = [("don't".to_string(), 2), ("a\\b".to_string(), 1)]
            .into_iter()
            .collect();
        assert_eq!(tsvector_text(&terms), r"'a\\b':1 'don''t':2,3");
        assert_eq!(any_term_query(&["x'y".into(), "z".into()]), "'x''y' | 'z'");
        assert_eq!(vector_text(&[0.5, -1.0, 1e-7]), "[0.5,-1,0.0000001]");
    }
}
