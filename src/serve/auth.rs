//! Who may read and who may write: credentials from a token file.
//!
//! The file holds one credential per line, `read USER:SECRET` or
//! `write USER:SECRET` (`write` may read too); blank lines and lines starting
//! with `#` are ignored. Clients send them as HTTP Basic auth (what git-lfs
//! gets from git's credential helper) or send the secret alone as a bearer
//! token (`fcache.http.token`).

use std::path::{Path, PathBuf};

use base64::Engine as _;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read token file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "token file {}, line {line}: expected `read USER:SECRET` or `write USER:SECRET`",
        path.display()
    )]
    Syntax { path: PathBuf, line: usize },
    #[error("token file {} holds no credentials", path.display())]
    Empty { path: PathBuf },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug)]
pub struct Entry {
    user: String,
    secret: String,
    access: Access,
}

/// Who gets in. `Anonymous` lets everyone read and write.
#[derive(Debug)]
pub enum Auth {
    Anonymous,
    Tokens(Vec<Entry>),
}

/// Why a request is not let through.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No credentials, or ones we do not know: 401.
    Unauthenticated,
    /// Known credentials without the access asked for: 403.
    Forbidden,
}

impl Auth {
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        let text = fs_err::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = || AuthError::Syntax {
                path: path.to_owned(),
                line: i + 1,
            };
            let mut words = line.split_whitespace();
            let access = match words.next() {
                Some("read") => Access::Read,
                Some("write") => Access::Write,
                _ => return Err(syntax()),
            };
            let credential = words.next().ok_or_else(syntax)?;
            if words.next().is_some() {
                return Err(syntax());
            }
            let (user, secret) = credential.split_once(':').ok_or_else(syntax)?;
            if user.is_empty() || secret.is_empty() {
                return Err(syntax());
            }
            entries.push(Entry {
                user: user.to_owned(),
                secret: secret.to_owned(),
                access,
            });
        }
        if entries.is_empty() {
            return Err(AuthError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Auth::Tokens(entries))
    }

    /// Check an `Authorization` header value against the access `needed`.
    pub fn check(&self, authorization: Option<&str>, needed: Access) -> Result<(), Denied> {
        let entries = match self {
            Auth::Anonymous => return Ok(()),
            Auth::Tokens(entries) => entries,
        };
        let granted = authorization
            .and_then(|value| {
                let (scheme, rest) = value.trim().split_once(' ')?;
                let rest = rest.trim();
                if scheme.eq_ignore_ascii_case("basic") {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(rest)
                        .ok()?;
                    let decoded = String::from_utf8(decoded).ok()?;
                    let (user, secret) = decoded.split_once(':')?;
                    entries
                        .iter()
                        .filter(|e| same(&e.user, user) & same(&e.secret, secret))
                        .map(|e| e.access)
                        .max()
                } else if scheme.eq_ignore_ascii_case("bearer") {
                    entries
                        .iter()
                        .filter(|e| same(&e.secret, rest))
                        .map(|e| e.access)
                        .max()
                } else {
                    None
                }
            })
            .ok_or(Denied::Unauthenticated)?;
        if granted >= needed {
            Ok(())
        } else {
            Err(Denied::Forbidden)
        }
    }
}

/// Compare secrets in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, secret: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
        )
    }

    fn tokens(text: &str) -> Result<Auth, AuthError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, text).unwrap();
        Auth::from_file(&path)
    }

    #[test]
    fn read_and_write_credentials() {
        let auth = tokens("# who\nread ci:r3ad\n\nwrite alice:wr1te\n").unwrap();
        let ci = basic("ci", "r3ad");
        let alice = basic("alice", "wr1te");
        assert_eq!(auth.check(Some(&ci), Access::Read), Ok(()));
        assert_eq!(auth.check(Some(&ci), Access::Write), Err(Denied::Forbidden));
        assert_eq!(auth.check(Some(&alice), Access::Write), Ok(()));
        assert_eq!(auth.check(Some("Bearer wr1te"), Access::Write), Ok(()));
        assert_eq!(auth.check(Some("bearer r3ad"), Access::Read), Ok(()));
        for bad in [
            None,
            Some(basic("ci", "wrong").as_str()),
            Some(basic("alice", "r3ad").as_str()),
            Some("Bearer nope"),
            Some("Basic !!!"),
            Some("Digest x"),
            Some(""),
        ] {
            assert_eq!(
                auth.check(bad, Access::Read),
                Err(Denied::Unauthenticated),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_files_are_refused_naming_the_line() {
        let err = tokens("read ci:x\nadmin bob:y\n").err().unwrap();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert!(tokens("write nosecret\n").is_err());
        assert!(tokens("write :x\n").is_err());
        assert!(tokens("# nothing\n").is_err());
    }

    #[test]
    fn anonymous_lets_everyone_in() {
        assert_eq!(Auth::Anonymous.check(None, Access::Write), Ok(()));
    }
}
