//! Which models to serve: MODEL_PATH, MODELS or the `[[models]]` of KEEL_CONFIG's file
//! (only one of them), else the default models that `make run` fetches.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use keel_engine::ModelSource;
use serde::Deserialize;

use super::env::{Env, SettingError};
use super::vars::{Var, DEFAULT_MODELS, KEEL_CONFIG, MODELS, MODEL_PATH};

/// Keel's TOML file: `[[models]]` here, and a `[gateway]` table read by keel-gateway.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    models: Vec<ConfigModel>,
    #[allow(dead_code)]
    gateway: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigModel {
    name: String,
    path: PathBuf,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/'))
}

fn check_unique(
    env: &Env,
    variable: &'static Var,
    models: &[ModelSource],
) -> Result<(), SettingError> {
    let mut seen = HashSet::new();
    for m in models {
        if !seen.insert(&m.name) {
            return Err(env.error(
                variable,
                format!("distinct model names (\"{}\" appears twice)", m.name),
            ));
        }
    }
    Ok(())
}

fn parse_model_list(env: &Env, list: &str) -> Result<Vec<ModelSource>, SettingError> {
    let accepted = "name=path pairs separated by commas, names of letters, digits and -_.:/";
    let models = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((name, path)) if valid_name(name.trim()) && !path.trim().is_empty() => {
                Ok(ModelSource {
                    name: name.trim().to_string(),
                    path: PathBuf::from(path.trim()),
                })
            }
            _ => Err(env.error(&MODELS, accepted)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if models.is_empty() {
        return Err(env.error(&MODELS, accepted));
    }
    check_unique(env, &MODELS, &models)?;
    Ok(models)
}

/// The text of the TOML file named by KEEL_CONFIG, with its path.
pub fn read_config_file(env: &Env) -> Result<Option<(PathBuf, String)>, SettingError> {
    let Some(path) = env.text(&KEEL_CONFIG) else {
        return Ok(None);
    };
    let file = PathBuf::from(path);
    let text = std::fs::read_to_string(&file)
        .map_err(|e| env.error(&KEEL_CONFIG, format!("a readable TOML file ({e})")))?;
    Ok(Some((file, text)))
}

/// The models of the TOML file named by KEEL_CONFIG (none if it has no `[[models]]`).
fn config_file_models(
    env: &Env,
    file: &Path,
    text: &str,
) -> Result<Vec<ModelSource>, SettingError> {
    let config: ConfigFile = toml::from_str(text).map_err(|e| {
        env.error(
            &KEEL_CONFIG,
            format!(
                "a TOML file of [[models]] (name, path) and an optional [gateway] table ({})",
                e.message()
            ),
        )
    })?;
    let base = file.parent().unwrap_or(Path::new("."));
    let models: Vec<ModelSource> = config
        .models
        .into_iter()
        .map(|m| {
            if !valid_name(&m.name) {
                return Err(env.error(
                    &KEEL_CONFIG,
                    format!(
                        "model names of letters, digits and -_.:/ (got \"{}\")",
                        m.name
                    ),
                ));
            }
            Ok(ModelSource {
                name: m.name,
                path: base.join(m.path),
            })
        })
        .collect::<Result<_, _>>()?;
    check_unique(env, &KEEL_CONFIG, &models)?;
    Ok(models)
}

/// The models to serve, from whichever one source is given.
pub fn models(env: &Env, config: Option<(&Path, &str)>) -> Result<Vec<ModelSource>, SettingError> {
    let file_models = match config {
        Some((file, text)) => config_file_models(env, file, text)?,
        None => Vec::new(),
    };
    let mut given: Vec<&'static Var> = [&MODEL_PATH, &MODELS]
        .into_iter()
        .filter(|v| env.is_set(v))
        .collect();
    if !file_models.is_empty() {
        given.insert(0, &KEEL_CONFIG);
    }
    if given.len() > 1 {
        return Err(env.error(
            given[1],
            format!(
                "only one of {}, {} and {}'s [[models]] (also set: {})",
                MODEL_PATH.name, MODELS.name, KEEL_CONFIG.name, given[0].name
            ),
        ));
    }
    match given.first() {
        None => parse_model_list(env, DEFAULT_MODELS),
        Some(var) if var.name == KEEL_CONFIG.name => Ok(file_models),
        Some(var) if var.name == MODEL_PATH.name => {
            let path = PathBuf::from(env.text(&MODEL_PATH).unwrap_or_default());
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|n| valid_name(n))
                .ok_or_else(|| env.error(&MODEL_PATH, "a folder whose name is a valid model name"))?
                .to_string();
            Ok(vec![ModelSource { name, path }])
        }
        Some(_) => parse_model_list(env, env.text(&MODELS).unwrap_or_default()),
    }
}
