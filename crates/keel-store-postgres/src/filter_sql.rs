//! A parsed [`Filter`] as a PostgreSQL expression over a `jsonb` attributes column, so that
//! the filter runs inside each search leg. Keys and values are bound parameters, never
//! spliced into the SQL. The semantics are those of [`Filter::matches`]: a missing key is
//! false, and values compare only within their own JSON type (jsonb equality is typed, and
//! an ordering compares numbers only, through a CASE so a string is never cast).

use keel_rag::filter::{CmpOp, Filter, Scalar};

use crate::sql::Arg;

/// Appends the expression for `filter` over `column` to `sql`, and its parameters to `args`
/// (numbered from `args.len() + 1`).
pub(crate) fn compile(filter: &Filter, column: &str, sql: &mut String, args: &mut Vec<Arg>) {
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
                compile(part, column, sql, args);
            }
            sql.push(')');
        }
        Filter::Cmp { key, op, values } => {
            args.push(Arg::Text(key.clone()));
            let value = format!("({column} -> ${})", args.len());
            let equal_any = |sql: &mut String, args: &mut Vec<Arg>| {
                let list: Vec<serde_json::Value> = values.iter().map(scalar_json).collect();
                args.push(Arg::Json(serde_json::Value::Array(list)));
                // jsonb equality: 1 = 1.0, "1" <> 1, true <> "true".
                sql.push_str(&format!(
                    "EXISTS (SELECT 1 FROM jsonb_array_elements(${}) v WHERE v = {value})",
                    args.len()
                ));
            };
            match op {
                CmpOp::Eq | CmpOp::In => equal_any(sql, args),
                CmpOp::Ne | CmpOp::Nin => {
                    sql.push_str(&format!("({value} IS NOT NULL AND NOT "));
                    equal_any(sql, args);
                    sql.push(')');
                }
                CmpOp::Gt | CmpOp::Gte | CmpOp::Lt | CmpOp::Lte => {
                    let Scalar::Num(n) = values[0] else {
                        // Parsing refuses non-numbers for ordering operators.
                        sql.push_str("false");
                        return;
                    };
                    let cmp = match op {
                        CmpOp::Gt => ">",
                        CmpOp::Gte => ">=",
                        CmpOp::Lt => "<",
                        _ => "<=",
                    };
                    args.push(Arg::F64(n));
                    sql.push_str(&format!(
                        "(CASE WHEN jsonb_typeof({value}) = 'number' THEN ({value})::text::float8 {cmp} ${} ELSE false END)",
                        args.len()
                    ));
                }
            }
        }
    }
}

fn scalar_json(s: &Scalar) -> serde_json::Value {
    match s {
        Scalar::Str(s) => serde_json::Value::String(s.clone()),
        Scalar::Num(n) => serde_json::json!(n),
        Scalar::Bool(b) => serde_json::Value::Bool(*b),
    }
}
