//! Attributes on a vector-store file, and OpenAI's filters over them.
//!
//! A filter is parsed and checked once, with the path of the offending field in the message
//! (`filters.filters[1].type: ...`), then either evaluated here ([`Filter::matches`], for
//! the exact scan and for tests) or compiled into a store's SQL, so that it runs *inside*
//! each search leg rather than on its top hits.
//!
//! Semantics, the same on every backend: a comparison on a key the file does not have is
//! false (`ne` and `nin` included); values compare only with values of their own type, so
//! `"5"` never equals `5`; `gt`/`gte`/`lt`/`lte` take numbers only.

use serde_json::{Map, Value};

use crate::error::RagError;

pub type Attributes = Map<String, Value>;

pub const MAX_ATTRIBUTES: usize = 16;
pub const MAX_KEY_CHARS: usize = 64;
pub const MAX_STRING_CHARS: usize = 512;
/// Bounds on a filter's shape, so that one request cannot build an unbounded query.
pub const MAX_DEPTH: usize = 8;
pub const MAX_NODES: usize = 64;
pub const MAX_LIST: usize = 100;

#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Str(String),
    Num(f64),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Nin,
}

impl CmpOp {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "eq" => Self::Eq,
            "ne" => Self::Ne,
            "gt" => Self::Gt,
            "gte" => Self::Gte,
            "lt" => Self::Lt,
            "lte" => Self::Lte,
            "in" => Self::In,
            "nin" => Self::Nin,
            _ => return None,
        })
    }

    pub fn is_ordering(self) -> bool {
        matches!(self, Self::Gt | Self::Gte | Self::Lt | Self::Lte)
    }

    pub fn is_list(self) -> bool {
        matches!(self, Self::In | Self::Nin)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `values` holds one value, or the list of `in` / `nin`.
    Cmp {
        key: String,
        op: CmpOp,
        values: Vec<Scalar>,
    },
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

fn invalid(path: &str, message: impl std::fmt::Display) -> RagError {
    RagError::Invalid(format!("{path}: {message}"))
}

fn scalar(value: &Value, path: &str) -> Result<Scalar, RagError> {
    match value {
        Value::String(s) if s.chars().count() <= MAX_STRING_CHARS => Ok(Scalar::Str(s.clone())),
        Value::String(_) => Err(invalid(
            path,
            format!("longer than {MAX_STRING_CHARS} characters"),
        )),
        Value::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Scalar::Num)
            .ok_or_else(|| invalid(path, "not a finite number")),
        Value::Bool(b) => Ok(Scalar::Bool(*b)),
        _ => Err(invalid(path, "must be a string, a number or a boolean")),
    }
}

fn key(value: Option<&Value>, path: &str) -> Result<String, RagError> {
    match value {
        Some(Value::String(k)) if k.contains(['"', '\\']) => {
            Err(invalid(path, "must not contain quotes or backslashes"))
        }
        Some(Value::String(k)) if !k.is_empty() && k.chars().count() <= MAX_KEY_CHARS => {
            Ok(k.clone())
        }
        Some(Value::String(_)) => Err(invalid(
            path,
            format!("must be 1 to {MAX_KEY_CHARS} characters"),
        )),
        Some(_) => Err(invalid(path, "must be a string")),
        None => Err(invalid(path, "is required")),
    }
}

/// Checks a file's `attributes`: at most 16 keys of up to 64 characters, each a string
/// (up to 512 characters), a number or a boolean.
pub fn parse_attributes(value: &Value, path: &str) -> Result<Attributes, RagError> {
    let Value::Object(map) = value else {
        return Err(invalid(path, "must be an object"));
    };
    if map.len() > MAX_ATTRIBUTES {
        return Err(invalid(path, format!("at most {MAX_ATTRIBUTES} keys")));
    }
    for (k, v) in map {
        key(Some(&Value::String(k.clone())), &format!("{path}.{k}"))?;
        scalar(v, &format!("{path}.{k}"))?;
    }
    Ok(map.clone())
}

impl Filter {
    /// Parses OpenAI's comparison and compound filters; `path` names the field in errors.
    pub fn parse(value: &Value, path: &str) -> Result<Self, RagError> {
        let mut nodes = 0;
        Self::parse_at(value, path, 1, &mut nodes)
    }

    fn parse_at(
        value: &Value,
        path: &str,
        depth: usize,
        nodes: &mut usize,
    ) -> Result<Self, RagError> {
        *nodes += 1;
        if depth > MAX_DEPTH || *nodes > MAX_NODES {
            return Err(invalid(
                path,
                format!("filters nest at most {MAX_DEPTH} deep with at most {MAX_NODES} filters"),
            ));
        }
        let Value::Object(obj) = value else {
            return Err(invalid(path, "must be an object"));
        };
        let type_path = format!("{path}.type");
        let kind = match obj.get("type") {
            Some(Value::String(t)) => t.as_str(),
            Some(_) => return Err(invalid(&type_path, "must be a string")),
            None => return Err(invalid(&type_path, "is required")),
        };
        if kind == "and" || kind == "or" {
            let list_path = format!("{path}.filters");
            let Some(Value::Array(items)) = obj.get("filters") else {
                return Err(invalid(&list_path, "must be a list of filters"));
            };
            if items.is_empty() {
                return Err(invalid(&list_path, "must not be empty"));
            }
            let parts = items
                .iter()
                .enumerate()
                .map(|(i, f)| Self::parse_at(f, &format!("{list_path}[{i}]"), depth + 1, nodes))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(if kind == "and" {
                Self::And(parts)
            } else {
                Self::Or(parts)
            });
        }
        let op = CmpOp::parse(kind).ok_or_else(|| {
            invalid(
                &type_path,
                format!("unknown operator '{kind}'; expected one of eq, ne, gt, gte, lt, lte, in, nin, and, or"),
            )
        })?;
        let key = key(obj.get("key"), &format!("{path}.key"))?;
        let value_path = format!("{path}.value");
        let values = match (op.is_list(), obj.get("value")) {
            (_, None) => return Err(invalid(&value_path, "is required")),
            (true, Some(Value::Array(items))) => {
                if items.is_empty() || items.len() > MAX_LIST {
                    return Err(invalid(
                        &value_path,
                        format!("must hold 1 to {MAX_LIST} values"),
                    ));
                }
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| scalar(v, &format!("{value_path}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?
            }
            (true, Some(_)) => return Err(invalid(&value_path, format!("'{kind}' takes a list"))),
            (false, Some(v)) => vec![scalar(v, &value_path)?],
        };
        if op.is_ordering() && !matches!(values[0], Scalar::Num(_)) {
            return Err(invalid(&value_path, format!("'{kind}' compares numbers")));
        }
        Ok(Self::Cmp { key, op, values })
    }

    /// Whether a file with `attrs` passes.
    pub fn matches(&self, attrs: &Attributes) -> bool {
        match self {
            Self::And(parts) => parts.iter().all(|f| f.matches(attrs)),
            Self::Or(parts) => parts.iter().any(|f| f.matches(attrs)),
            Self::Cmp { key, op, values } => {
                let Some(have) = attrs.get(key).and_then(|v| scalar(v, "").ok()) else {
                    return false;
                };
                let equal = |want: &Scalar| match (&have, want) {
                    (Scalar::Str(a), Scalar::Str(b)) => a == b,
                    (Scalar::Num(a), Scalar::Num(b)) => a == b,
                    (Scalar::Bool(a), Scalar::Bool(b)) => a == b,
                    _ => false,
                };
                let number = match (&have, &values[0]) {
                    (Scalar::Num(a), Scalar::Num(b)) => Some((*a, *b)),
                    _ => None,
                };
                match op {
                    CmpOp::Eq => equal(&values[0]),
                    CmpOp::Ne => !equal(&values[0]),
                    CmpOp::In => values.iter().any(equal),
                    CmpOp::Nin => !values.iter().any(equal),
                    CmpOp::Gt => number.is_some_and(|(a, b)| a > b),
                    CmpOp::Gte => number.is_some_and(|(a, b)| a >= b),
                    CmpOp::Lt => number.is_some_and(|(a, b)| a < b),
                    CmpOp::Lte => number.is_some_and(|(a, b)| a <= b),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(v: Value) -> Attributes {
        parse_attributes(&v, "attributes").unwrap()
    }

    fn parse(v: Value) -> Result<Filter, String> {
        Filter::parse(&v, "filters").map_err(|e| e.to_string())
    }

    #[test]
    fn every_operator_and_compound() {
        let a = attrs(json!({"lang": "en", "year": 2024, "draft": false}));
        let cases = [
            (json!({"type": "eq", "key": "lang", "value": "en"}), true),
            (json!({"type": "ne", "key": "lang", "value": "en"}), false),
            (json!({"type": "gt", "key": "year", "value": 2023}), true),
            (json!({"type": "gte", "key": "year", "value": 2024}), true),
            (json!({"type": "lt", "key": "year", "value": 2024}), false),
            (json!({"type": "lte", "key": "year", "value": 2024.0}), true),
            (
                json!({"type": "in", "key": "lang", "value": ["de", "en"]}),
                true,
            ),
            (
                json!({"type": "nin", "key": "lang", "value": ["de", "en"]}),
                false,
            ),
            (json!({"type": "eq", "key": "draft", "value": false}), true),
            (json!({"type": "eq", "key": "year", "value": "2024"}), false),
            (json!({"type": "ne", "key": "missing", "value": "x"}), false),
            (
                json!({"type": "nin", "key": "missing", "value": ["x"]}),
                false,
            ),
            (
                json!({"type": "and", "filters": [
                    {"type": "eq", "key": "lang", "value": "en"},
                    {"type": "or", "filters": [
                        {"type": "lt", "key": "year", "value": 2000},
                        {"type": "eq", "key": "draft", "value": false}]}]}),
                true,
            ),
            (
                json!({"type": "or", "filters": [
                    {"type": "eq", "key": "lang", "value": "fr"},
                    {"type": "gt", "key": "year", "value": 3000}]}),
                false,
            ),
        ];
        for (filter, want) in cases {
            assert_eq!(parse(filter.clone()).unwrap().matches(&a), want, "{filter}");
        }
    }

    #[test]
    fn bad_filters_name_the_field_at_fault() {
        let cases = [
            (
                json!({"type": "like", "key": "a", "value": "x"}),
                "filters.type: unknown operator 'like'",
            ),
            (
                json!({"key": "a", "value": "x"}),
                "filters.type: is required",
            ),
            (
                json!({"type": "eq", "value": "x"}),
                "filters.key: is required",
            ),
            (
                json!({"type": "eq", "key": "a"}),
                "filters.value: is required",
            ),
            (
                json!({"type": "gt", "key": "a", "value": "x"}),
                "filters.value: 'gt' compares numbers",
            ),
            (
                json!({"type": "in", "key": "a", "value": "x"}),
                "filters.value: 'in' takes a list",
            ),
            (
                json!({"type": "in", "key": "a", "value": []}),
                "filters.value: must hold 1 to 100",
            ),
            (
                json!({"type": "eq", "key": "a", "value": {"x": 1}}),
                "filters.value: must be a string",
            ),
            (
                json!({"type": "and", "filters": []}),
                "filters.filters: must not be empty",
            ),
            (
                json!({"type": "or", "filters": [{"type": "eq", "key": "a", "value": 1}, {"type": "eq", "key": 5, "value": 1}]}),
                "filters.filters[1].key: must be a string",
            ),
            (json!("eq"), "filters: must be an object"),
        ];
        for (filter, want) in cases {
            let err = parse(filter.clone()).unwrap_err();
            assert!(err.starts_with(want), "{filter}: {err}");
        }
    }

    #[test]
    fn filter_shape_is_bounded() {
        let mut deep = json!({"type": "eq", "key": "a", "value": 1});
        for _ in 0..MAX_DEPTH {
            deep = json!({"type": "and", "filters": [deep]});
        }
        assert!(parse(deep).unwrap_err().contains("nest at most"));
        let wide: Vec<Value> = (0..MAX_NODES)
            .map(|_| json!({"type": "eq", "key": "a", "value": 1}))
            .collect();
        assert!(parse(json!({"type": "or", "filters": wide}))
            .unwrap_err()
            .contains("at most 64"));
    }

    #[test]
    fn attributes_are_bounded_and_typed() {
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(parse_attributes(&Value::Object(many), "attributes").is_err());
        let err = parse_attributes(&json!({"a": [1]}), "attributes").unwrap_err();
        assert_eq!(
            err.to_string(),
            "attributes.a: must be a string, a number or a boolean"
        );
        assert!(parse_attributes(&json!({"a": "x".repeat(513)}), "attributes").is_err());
        assert!(parse_attributes(&json!({"k".repeat(65): 1}), "attributes").is_err());
    }
}
