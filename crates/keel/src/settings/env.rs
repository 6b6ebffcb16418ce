//! Reading declared variables from the environment, and the error a bad one makes.
//!
//! `Env` only takes a `&'static Var` from `vars.rs`, parses the value as the declaration's
//! kind says, and falls back to the declared default. An error names the variable, the value
//! (hidden for a secret) and what is accepted.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use super::vars::{Fallback, Kind, Var};

/// A setting Keel cannot start with.
#[derive(Debug, PartialEq)]
pub struct SettingError {
    pub variable: &'static str,
    pub problem: Problem,
}

#[derive(Debug, PartialEq)]
pub enum Problem {
    /// The value is not one Keel accepts.
    Invalid { value: String, accepted: String },
    /// The gateway's configuration (its TOML table or its variables) is wrong.
    Gateway(String),
    /// Each value is fine, but together they are unsafe; the text says what to change.
    Refused(String),
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Problem::Invalid { value, accepted } => write!(
                f,
                "invalid setting {}={value:?}: expected {accepted}",
                self.variable
            ),
            // The message names the variable, or a key of KEEL_CONFIG's file.
            Problem::Gateway(message) if message.starts_with(self.variable) => write!(
                f,
                "invalid gateway setting {message}; see the README's gateway section"
            ),
            Problem::Gateway(message) => write!(
                f,
                "invalid gateway setting in {}: {message}; see the README's gateway section",
                self.variable
            ),
            Problem::Refused(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for SettingError {}

/// The environment, read only through declarations.
pub struct Env<'a> {
    vars: &'a HashMap<String, String>,
}

impl<'a> Env<'a> {
    pub fn new(vars: &'a HashMap<String, String>) -> Self {
        Self { vars }
    }

    /// The value, or None when unset or blank (an empty variable means "use the default").
    pub fn raw(&self, var: &'static Var) -> Option<&'a str> {
        self.vars
            .get(var.name)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    pub fn is_set(&self, var: &'static Var) -> bool {
        self.raw(var).is_some()
    }

    /// The error for `var`'s value; a secret's value is never repeated.
    pub fn error(&self, var: &'static Var, accepted: impl Into<String>) -> SettingError {
        let value = if var.secret {
            "(hidden)".to_string()
        } else {
            self.vars.get(var.name).cloned().unwrap_or_default()
        };
        SettingError {
            variable: var.name,
            problem: Problem::Invalid {
                value,
                accepted: accepted.into(),
            },
        }
    }

    /// The error for a value its declaration does not accept.
    fn invalid(&self, var: &'static Var) -> SettingError {
        self.error(var, var.accepted().unwrap_or_default())
    }

    /// A text variable, or its declared default text.
    pub fn text(&self, var: &'static Var) -> Option<&'a str> {
        let Kind::Text { default } = &var.kind else {
            panic!("{} is not declared as text", var.name)
        };
        self.raw(var).or(match default {
            Fallback::Value(text) => Some(*text),
            Fallback::None | Fallback::Computed(_) => None,
        })
    }

    /// A number, or its declared default; None when unset without a default value.
    pub fn optional_number(&self, var: &'static Var) -> Result<Option<u64>, SettingError> {
        let Kind::Number {
            default, min, max, ..
        } = &var.kind
        else {
            panic!("{} is not declared as a number", var.name)
        };
        match self.raw(var) {
            None => Ok(match default {
                Fallback::Value(n) => Some(*n),
                Fallback::None | Fallback::Computed(_) => None,
            }),
            Some(text) => text
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(&n))
                .map(Some)
                .ok_or_else(|| self.invalid(var)),
        }
    }

    /// A number declared with a default value.
    pub fn number(&self, var: &'static Var) -> Result<u64, SettingError> {
        Ok(self
            .optional_number(var)?
            .unwrap_or_else(|| panic!("{} is declared without a default value", var.name)))
    }

    pub fn count(&self, var: &'static Var) -> Result<usize, SettingError> {
        usize::try_from(self.number(var)?).map_err(|_| self.invalid(var))
    }

    pub fn millis(&self, var: &'static Var) -> Result<Duration, SettingError> {
        self.number(var).map(Duration::from_millis)
    }

    pub fn decimal(&self, var: &'static Var) -> Result<Option<f64>, SettingError> {
        let Kind::Decimal { max, .. } = &var.kind else {
            panic!("{} is not declared as a decimal", var.name)
        };
        match self.raw(var) {
            None => Ok(None),
            Some(text) => text
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0 && x <= max)
                .map(Some)
                .ok_or_else(|| self.invalid(var)),
        }
    }

    pub fn flag(&self, var: &'static Var) -> Result<bool, SettingError> {
        let Kind::Flag { default } = &var.kind else {
            panic!("{} is not declared as a flag", var.name)
        };
        match self.raw(var).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(*default),
            Some("true" | "1" | "yes" | "on") => Ok(true),
            Some("false" | "0" | "no" | "off") => Ok(false),
            Some(_) => Err(self.invalid(var)),
        }
    }

    /// One of the declared options (as declared), or the default; None when unset
    /// without a default value.
    pub fn choice(&self, var: &'static Var) -> Result<Option<&'static str>, SettingError> {
        let Kind::Choice { default, options } = &var.kind else {
            panic!("{} is not declared as a choice", var.name)
        };
        match self.raw(var) {
            None => Ok(match default {
                Fallback::Value(option) => Some(*option),
                Fallback::None | Fallback::Computed(_) => None,
            }),
            Some(text) => options
                .iter()
                .find(|o| o.eq_ignore_ascii_case(text))
                .map(|o| Some(*o))
                .ok_or_else(|| self.invalid(var)),
        }
    }

    pub fn address(&self, var: &'static Var) -> Result<IpAddr, SettingError> {
        let Kind::Address { default } = &var.kind else {
            panic!("{} is not declared as an address", var.name)
        };
        match self.raw(var) {
            None => Ok(*default),
            Some(text) => text.parse().map_err(|_| self.invalid(var)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::vars::*;
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unset_and_blank_give_the_declared_default() {
        let vars = env(&[("PORT", "  ")]);
        let e = Env::new(&vars);
        assert_eq!(e.number(&PORT).unwrap(), 8080);
        assert_eq!(e.optional_number(&METRICS_PORT).unwrap(), None);
        assert_eq!(e.optional_number(&INFERENCE_THREADS).unwrap(), None);
        assert!(e.flag(&TRUNCATE).unwrap());
        assert_eq!(e.choice(&BACKEND).unwrap(), Some("ort"));
        assert_eq!(e.choice(&LOG_FORMAT).unwrap(), None);
        assert_eq!(
            e.text(&ORT_DYLIB_PATH),
            Some("models/onnxruntime/libonnxruntime.so")
        );
        assert_eq!(e.address(&HOST).unwrap().to_string(), "0.0.0.0");
        assert_eq!(e.decimal(&BUDGET_USD_PER_DAY).unwrap(), None);
    }

    #[test]
    fn each_default_text_reads_back_as_the_default() {
        // The help prints default_text(); set to that text, a variable must parse to the
        // same value it has when unset.
        for var in ALL {
            let Some(text) = Some(var.default_text()).filter(|_| match &var.kind {
                Kind::Number { default, .. } => matches!(default, Fallback::Value(_)),
                Kind::Choice { default, .. } | Kind::Text { default } => {
                    matches!(default, Fallback::Value(_))
                }
                Kind::Flag { .. } | Kind::Address { .. } => true,
                Kind::Decimal { .. } => false,
            }) else {
                continue;
            };
            let (unset, set) = (env(&[]), env(&[(var.name, &text)]));
            let (unset, set) = (Env::new(&unset), Env::new(&set));
            let same = match &var.kind {
                Kind::Number { .. } => unset.number(var) == set.number(var),
                Kind::Choice { .. } => unset.choice(var) == set.choice(var),
                Kind::Text { .. } => unset.text(var) == set.text(var),
                Kind::Flag { .. } => unset.flag(var) == set.flag(var),
                Kind::Address { .. } => unset.address(var) == set.address(var),
                Kind::Decimal { .. } => unreachable!(),
            };
            assert!(same, "{}: the help's default {text:?} differs", var.name);
        }
    }

    #[test]
    fn values_outside_the_declaration_are_refused_with_what_it_accepts() {
        let vars = env(&[
            ("MAX_BATCH_SIZE", "0"),
            ("MAX_BODY_BYTES", "-5"),
            ("BACKEND", "tpu"),
            ("TRUNCATE", "perhaps"),
            ("BUDGET_USD_PER_DAY", "NaN"),
            ("HOST", "localhost"),
        ]);
        let e = Env::new(&vars);
        let shown = |r: SettingError| r.to_string();
        assert_eq!(
            shown(e.number(&MAX_BATCH_SIZE).unwrap_err()),
            "invalid setting MAX_BATCH_SIZE=\"0\": expected an integer from 1 to 4096"
        );
        assert!(shown(e.number(&MAX_BODY_BYTES).unwrap_err()).contains("from 1 to"));
        assert!(shown(e.choice(&BACKEND).unwrap_err()).ends_with("expected ort or candle"));
        assert!(shown(e.flag(&TRUNCATE).unwrap_err()).ends_with("true or false"));
        assert!(shown(e.decimal(&BUDGET_USD_PER_DAY).unwrap_err()).contains("US dollars"));
        assert!(shown(e.address(&HOST).unwrap_err()).contains("an IP address"));
    }

    #[test]
    fn choices_are_case_insensitive_and_answer_as_declared() {
        let vars = env(&[("ORT_PRECISION", "INT8")]);
        assert_eq!(
            Env::new(&vars).choice(&ORT_PRECISION).unwrap(),
            Some("int8")
        );
    }

    #[test]
    fn a_secret_value_is_never_repeated_in_an_error() {
        let vars = env(&[("REDIS_URL", "redis://:hunter2@nowhere")]);
        let shown = Env::new(&vars).error(&REDIS_URL, "a URL").to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("REDIS_URL"));
    }
}
