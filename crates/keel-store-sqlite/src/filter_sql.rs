//! A parsed [`Filter`] as an SQLite expression over a JSON `attributes` column, so that the
//! filter runs inside each search leg. Keys and values are bound parameters, never spliced
//! into the SQL. The semantics are those of [`Filter::matches`] (a test checks them against
//! each other): a missing key is false, values compare only within their own JSON type.

use keel_rag::filter::{CmpOp, Filter, Scalar};
use rusqlite::types::Value;

/// Appends the expression for `filter` over `column` to `sql`, and its parameters to `params`
/// (numbered from `params.len() + 1`).
pub(crate) fn compile(filter: &Filter, column: &str, sql: &mut String, params: &mut Vec<Value>) {
    match filter {
        Filter::And(parts) | Filter::Or(parts) => {
            let joiner = if matches!(filter, Filter::And(_)) {
                " AND "
            } else {
                " OR "
            };
            sql.push('(');
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    sql.push_str(joiner);
                }
                compile(part, column, sql, params);
            }
            sql.push(')');
        }
        Filter::Cmp { key, op, values } => {
            params.push(Value::Text(json_path(key)));
            let path = params.len();
            let present = format!("json_type({column}, ?{path}) IS NOT NULL");
            let equal_any = |sql: &mut String, params: &mut Vec<Value>| {
                sql.push('(');
                for (i, v) in values.iter().enumerate() {
                    if i > 0 {
                        sql.push_str(" OR ");
                    }
                    equal(column, path, v, sql, params);
                }
                sql.push(')');
            };
            match op {
                CmpOp::Eq | CmpOp::In => equal_any(sql, params),
                CmpOp::Ne | CmpOp::Nin => {
                    sql.push_str(&format!("({present} AND NOT "));
                    equal_any(sql, params);
                    sql.push(')');
                }
                CmpOp::Gt | CmpOp::Gte | CmpOp::Lt | CmpOp::Lte => {
                    let Scalar::Num(n) = values[0] else {
                        // Parsing refuses non-numbers for ordering operators.
                        sql.push('0');
                        return;
                    };
                    let cmp = match op {
                        CmpOp::Gt => ">",
                        CmpOp::Gte => ">=",
                        CmpOp::Lt => "<",
                        _ => "<=",
                    };
                    params.push(Value::Real(n));
                    sql.push_str(&format!(
                        "(json_type({column}, ?{path}) IN ('integer', 'real') AND json_extract({column}, ?{path}) {cmp} ?{})",
                        params.len()
                    ));
                }
            }
        }
    }
}

fn equal(column: &str, path: usize, value: &Scalar, sql: &mut String, params: &mut Vec<Value>) {
    match value {
        Scalar::Bool(b) => {
            sql.push_str(&format!("json_type({column}, ?{path}) = '{b}'"));
        }
        Scalar::Str(s) => {
            params.push(Value::Text(s.clone()));
            sql.push_str(&format!(
                "(json_type({column}, ?{path}) = 'text' AND json_extract({column}, ?{path}) = ?{})",
                params.len()
            ));
        }
        Scalar::Num(n) => {
            params.push(Value::Real(*n));
            sql.push_str(&format!(
                "(json_type({column}, ?{path}) IN ('integer', 'real') AND json_extract({column}, ?{path}) = ?{})",
                params.len()
            ));
        }
    }
}

/// `$."key"`, with the key's quotes and backslashes escaped, so any key is one path step.
fn json_path(key: &str) -> String {
    let escaped = key.replace('\\', "\\\\").replace('"', "\\\"");
    format!("$.\"{escaped}\"")
}
