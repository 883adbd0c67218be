//! Secret paths and `secret://` references.
//!
//! A path is 1-256 characters of `A-Za-z0-9._/-`, split by `/` into non-empty segments none of
//! which is `.` or `..`, and does not start with `/`. The narrow alphabet rules out control
//! characters, URL escapes and anything a backend might read as syntax (HashiCorp Vault paths
//! are built from these segments).

use std::fmt;

/// A validated secret path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretPath(String);

/// Longest path accepted, in characters (all ASCII).
pub const MAX_PATH_LEN: usize = 256;

/// The scheme of references to vault secrets in configuration.
pub const REFERENCE_SCHEME: &str = "secret://";

/// Why a path was refused; the message never repeats control characters it found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPath(pub String);

impl SecretPath {
    /// Checks `text` against the rules above.
    pub fn parse(text: &str) -> Result<SecretPath, InvalidPath> {
        if text.is_empty() || text.len() > MAX_PATH_LEN {
            return Err(InvalidPath(format!(
                "a secret path has 1 to {MAX_PATH_LEN} characters"
            )));
        }
        if let Some(c) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')))
        {
            let shown = if c.is_control() {
                format!("a control character (U+{:04X})", u32::from(c))
            } else {
                format!("`{c}`")
            };
            return Err(InvalidPath(format!(
                "a secret path may only hold A-Z, a-z, 0-9, `.`, `_`, `-` and `/`, not {shown}"
            )));
        }
        if text.starts_with('/') {
            return Err(InvalidPath(
                "a secret path must not start with `/`".to_owned(),
            ));
        }
        for segment in text.split('/') {
            match segment {
                "" => {
                    return Err(InvalidPath(
                        "a secret path has no empty segment (no `//`, no trailing `/`)".to_owned(),
                    ));
                }
                "." | ".." => {
                    return Err(InvalidPath(format!(
                        "a secret path has no `{segment}` segment"
                    )));
                }
                _ => {}
            }
        }
        Ok(SecretPath(text.to_owned()))
    }

    /// Checks a listing prefix: empty (everything), a path, or a path followed by `/` (a
    /// folder) — so never a `.` or `..` segment or an empty one, which a backend that builds
    /// URLs from the prefix could read as a way out of the tenant's folder.
    pub fn check_prefix(text: &str) -> Result<(), InvalidPath> {
        if text.is_empty() {
            return Ok(());
        }
        let body = text.strip_suffix('/').unwrap_or(text);
        SecretPath::parse(body).map(|_| ()).map_err(|e| {
            InvalidPath(format!(
                "a prefix is a secret path, or one followed by `/`: {}",
                e.0
            ))
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed `secret://path` or `secret://path@version` reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    pub path: SecretPath,
    /// A pinned version; `None` follows the latest.
    pub version: Option<u32>,
}

impl SecretRef {
    /// `Ok(None)` when `text` is not a reference at all (a plain value); an error when it starts
    /// with `secret://` but is malformed.
    pub fn parse(text: &str) -> Result<Option<SecretRef>, InvalidPath> {
        let Some(rest) = text.strip_prefix(REFERENCE_SCHEME) else {
            return Ok(None);
        };
        let (path, version) = match rest.rsplit_once('@') {
            Some((path, version)) => {
                let version = version
                    .parse::<u32>()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| {
                        InvalidPath(
                            "the version after `@` in a secret reference must be a positive integer"
                                .to_owned(),
                        )
                    })?;
                (path, Some(version))
            }
            None => (rest, None),
        };
        Ok(Some(SecretRef {
            path: SecretPath::parse(path)?,
            version,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_paths_pass() {
        for p in [
            "a",
            "db/password",
            "team-1/svc_2/api.key",
            "A.b-C_d",
            &"x".repeat(256),
        ] {
            assert!(SecretPath::parse(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn bad_paths_are_refused() {
        for p in [
            "",
            "/abs",
            "a//b",
            "a/",
            "..",
            "a/../b",
            "a/./b",
            ".",
            "a\nb",
            "a\u{7}b",
            "a b",
            "a%2fb",
            "a\\b",
            "ä",
            "a@1",
            &"x".repeat(257),
        ] {
            assert!(SecretPath::parse(p).is_err(), "{p:?}");
        }
    }

    #[test]
    fn references_parse_with_an_optional_version() {
        assert_eq!(SecretRef::parse("plain").ok(), Some(None));
        let r = SecretRef::parse("secret://db/password").ok().flatten();
        assert_eq!(
            r.map(|r| (r.path.0, r.version)),
            Some(("db/password".into(), None))
        );
        let r = SecretRef::parse("secret://db/password@3").ok().flatten();
        assert_eq!(r.map(|r| r.version), Some(Some(3)));
        assert!(SecretRef::parse("secret://../x").is_err());
        assert!(SecretRef::parse("secret://x@0").is_err());
        assert!(SecretRef::parse("secret://x@").is_err());
    }
}
