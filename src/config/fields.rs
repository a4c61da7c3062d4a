//! Reading configuration values so that every problem names its field.
//!
//! [`deserialize`] reads a section serde can read alone (`[server]`, `[storage]`, ...); its
//! problems name the section. [`Fields`] reads a table field by field, for the sections whose
//! shape depends on a value (`type`) or whose entries need their own names in problems
//! (`[source]`, `[[sites]]`, `[engine]`): each problem names its field (`site "aws-1".bucket:
//! missing`; an entry is named by its position, `sites[1]`, only until its name is known and
//! usable), every field is looked at once, and [`Fields::finish`] reports the fields nobody
//! read, as `deny_unknown_fields` does for the serde sections. Readers never stop at the first
//! problem: a section reads every field, then keeps the value only if all of them were usable.

use serde::de::DeserializeOwned;

use super::secret::{resolve_secret, Secret};

/// Deserializes `value` into `T`; a failure is recorded as one problem naming `at`.
pub(super) fn deserialize<T: DeserializeOwned>(
    at: &str,
    value: toml::Value,
    errors: &mut Vec<String>,
) -> Option<T> {
    match value.try_into::<T>() {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = e.message().trim().replace('\n', " ");
            errors.push(format!("{at}: {msg}"));
            None
        }
    }
}

/// Whether `name` follows S3's bucket naming rules: 3 to 63 characters of lowercase letters,
/// digits, `.` and `-`, starting and ending with a letter or digit, no `..`, not an IP
/// address. Checked before a name goes near a URL or a host name.
pub fn is_s3_bucket_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'.' || *c == b'-')
        && b.first().is_some_and(|c| c.is_ascii_alphanumeric())
        && b.last().is_some_and(|c| c.is_ascii_alphanumeric())
        && !name.contains("..")
        && name.parse::<std::net::Ipv4Addr>().is_err()
}

/// The problem of a bucket name that breaks S3's naming rules (see [`is_s3_bucket_name`]).
pub(super) fn not_an_s3_bucket_name(name: &str) -> String {
    format!(
        "{name:?} is not a valid S3 bucket name (3-63 characters: lowercase letters, digits, \
         '.' and '-', starting and ending with a letter or digit, no \"..\", not an IP address)"
    )
}

/// The fields of one TOML table, read one by one.
pub(super) struct Fields<'e> {
    /// Where the table is (`source`, `sites[1]`): the prefix of every problem.
    at: String,
    /// The fields not read yet.
    table: toml::Table,
    /// Every field name asked for, for the unknown-field problem.
    known: Vec<String>,
    errors: &'e mut Vec<String>,
}

impl<'e> Fields<'e> {
    /// The fields of `value`, which must be a table.
    pub(super) fn new(
        at: String,
        value: toml::Value,
        errors: &'e mut Vec<String>,
    ) -> Option<Fields<'e>> {
        match value {
            toml::Value::Table(table) => Some(Fields {
                at,
                table,
                known: Vec::new(),
                errors,
            }),
            other => {
                errors.push(format!("{at}: must be a table, not {}", other.type_str()));
                None
            }
        }
    }

    /// Names the table from now on (`site "aws-1"` once its name is known to be usable).
    pub(super) fn rename(&mut self, at: String) {
        self.at = at;
    }

    /// The full name of field `name` (`site "aws-1".bucket`).
    pub(super) fn path(&self, name: &str) -> String {
        format!("{}.{name}", self.at)
    }

    /// Records a problem with field `name`.
    pub(super) fn problem(&mut self, name: &str, what: impl std::fmt::Display) {
        let path = self.path(name);
        self.errors.push(format!("{path}: {what}"));
    }

    /// Field `name` when given and usable; a value of the wrong type is a problem.
    pub(super) fn optional<T: DeserializeOwned>(&mut self, name: &str) -> Option<T> {
        self.known.push(name.to_string());
        let value = self.table.remove(name)?;
        let path = self.path(name);
        deserialize(&path, value, self.errors)
    }

    /// Field `name`; its absence is a problem (`missing`).
    pub(super) fn required<T: DeserializeOwned>(&mut self, name: &str) -> Option<T> {
        if !self.table.contains_key(name) {
            self.known.push(name.to_string());
            self.problem(name, "missing");
            return None;
        }
        self.optional(name)
    }

    /// Field `name`, or `default` when it is absent (or unusable, which is recorded).
    pub(super) fn or<T: DeserializeOwned>(&mut self, name: &str, default: impl FnOnce() -> T) -> T {
        self.optional(name).unwrap_or_else(default)
    }

    /// A required `http://` or `https://` URL.
    pub(super) fn url(&mut self, name: &str) -> Option<String> {
        let url: String = self.required(name)?;
        let ok = (url.starts_with("http://") || url.starts_with("https://"))
            && url.split("://").nth(1).is_some_and(|rest| !rest.is_empty())
            && !url.contains(char::is_whitespace);
        if !ok {
            self.problem(name, format!("{url:?} is not an http:// or https:// URL"));
            return None;
        }
        Some(url)
    }

    /// A required S3 bucket name, checked against S3's naming rules.
    pub(super) fn s3_bucket(&mut self, name: &str) -> Option<String> {
        let bucket: String = self.required(name)?;
        if !is_s3_bucket_name(&bucket) {
            self.problem(name, not_an_s3_bucket_name(&bucket));
            return None;
        }
        Some(bucket)
    }

    /// An optional CA file (PEM) trusted for an `https://` endpoint instead of the bundled
    /// roots; it must hold at least one usable certificate now, so `check-config` catches what
    /// `serve` would fail on.
    pub(super) fn ca_file(&mut self, name: &str) -> Option<std::path::PathBuf> {
        let path: std::path::PathBuf = self.optional(name)?;
        match crate::tls::read_ca_file(&path) {
            Ok(_) => Some(path),
            Err(e) => {
                self.problem(name, e);
                None
            }
        }
    }

    /// A secret given as field `name` or through the environment variable its `name_env` twin
    /// names, resolved now (see [`resolve_secret`]).
    pub(super) fn secret(&mut self, name: &str, required: bool) -> Option<Secret> {
        let inline: Option<Secret> = self.optional(name);
        let env: Option<String> = self.optional(&format!("{name}_env"));
        let path = self.path(name);
        resolve_secret(&path, &inline, &env, required, self.errors).map(Secret)
    }

    /// Records every field nobody read as unknown.
    pub(super) fn finish(self) {
        for name in self.table.keys() {
            self.errors.push(format!(
                "{}.{name}: unknown field (expected one of {})",
                self.at,
                self.known.join(", ")
            ));
        }
    }
}
