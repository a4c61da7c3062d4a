//! Secrets of the configuration (`access_key`, `secret_key`, `key`, `token`, a MongoDB URI):
//! the [`Secret`] type whose `Debug` never shows the value, and [`resolve_secret`], the one
//! place a secret given inline or through the environment variable its `*_env` twin names is
//! read and checked.

use std::fmt;

use serde::Deserialize;

/// A secret string whose `Debug` never shows the value.
#[derive(Clone, Deserialize, PartialEq, Eq, Default)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Resolves a secret given inline or through an environment variable; records a problem
/// naming `field` (or its `_env` twin) when neither is usable, when both are given, or when
/// `required` and none is.
pub(super) fn resolve_secret(
    field: &str,
    inline: &Option<Secret>,
    env: &Option<String>,
    required: bool,
    errors: &mut Vec<String>,
) -> Option<String> {
    match (inline, env) {
        (Some(_), Some(_)) => {
            errors.push(format!(
                "{field}: give either {field} or {field}_env, not both"
            ));
            None
        }
        (Some(s), None) => {
            if s.0.is_empty() {
                errors.push(format!("{field}: must not be empty"));
            }
            Some(s.0.clone())
        }
        (None, Some(var)) => {
            if !is_env_name(var) {
                errors.push(format!(
                    "{field}_env: {var:?} is not a valid environment variable name"
                ));
                return None;
            }
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => Some(v),
                _ => {
                    errors.push(format!(
                        "{field}_env: environment variable {var} is not set"
                    ));
                    None
                }
            }
        }
        (None, None) => {
            if required {
                errors.push(format!("{field}: missing (give {field} or {field}_env)"));
            }
            None
        }
    }
}
