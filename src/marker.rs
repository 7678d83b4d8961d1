//! The marker git stores in place of a file's content: a Git LFS pointer, spec v1.
//!
//! Formatting is byte-exact; parsing is strict and never panics. Whatever is
//! not a valid marker is not a marker, and the filters pass it through.

use std::fmt;

use crate::oid::ObjectId;

/// Markers are always shorter than this; longer input is never a marker.
pub const MAX_LEN: usize = 1024;

const VERSION_LINE: &[u8] = b"version https://git-lfs.github.com/spec/v1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Marker {
    pub id: ObjectId,
    pub size: u64,
}

impl Marker {
    pub fn new(id: ObjectId, size: u64) -> Self {
        Self { id, size }
    }

    /// Parse a marker, accepting `\n` or `\r\n` line ends as git-lfs does.
    /// Returns `None` for anything else, including extension keys, which
    /// fcache does not implement.
    pub fn parse(input: &[u8]) -> Option<Self> {
        if input.len() >= MAX_LEN || input.is_empty() {
            return None;
        }
        let mut lines = Lines { rest: input };
        if lines.next()? != VERSION_LINE {
            return None;
        }
        let hex = lines.next()?.strip_prefix(b"oid sha256:")?;
        let id = ObjectId::from_hex(hex).ok()?;
        let size = parse_size(lines.next()?.strip_prefix(b"size ")?)?;
        if !lines.rest.is_empty() {
            return None;
        }
        Some(Self { id, size })
    }
}

impl fmt::Display for Marker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
            self.id, self.size
        )
    }
}

/// Lines that must each end in `\n` or `\r\n`.
struct Lines<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let end = self.rest.iter().position(|&b| b == b'\n')?;
        let line = &self.rest[..end];
        self.rest = &self.rest[end + 1..];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // A stray carriage return inside a line is not something git-lfs writes.
        (!line.contains(&b'\r')).then_some(line)
    }
}

/// A decimal byte count: digits only, no sign, no leading zeros, fits in u64.
fn parse_size(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        if !d.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

    fn text(size: &str) -> String {
        format!("version https://git-lfs.github.com/spec/v1\noid sha256:{ID}\nsize {size}\n")
    }

    #[test]
    fn formats_exactly_like_git_lfs() {
        let m = Marker::new(ID.parse().unwrap(), 12345);
        assert_eq!(m.to_string(), text("12345"));
    }

    #[test]
    fn parses_what_it_formats() {
        let m = Marker::parse(text("12345").as_bytes()).unwrap();
        assert_eq!(m.id.to_string(), ID);
        assert_eq!(m.size, 12345);
        assert_eq!(Marker::parse(text("0").as_bytes()).unwrap().size, 0);
    }

    #[test]
    fn accepts_crlf_line_ends() {
        let crlf = text("7").replace('\n', "\r\n");
        assert_eq!(Marker::parse(crlf.as_bytes()).unwrap().size, 7);
    }

    #[test]
    fn refuses_near_misses() {
        let good = text("12");
        let cases = [
            String::new(),
            good.trim_end().to_owned(),
            format!("{good}\n"),
            format!("{good}ext-0-foo sha256:{ID}\n"),
            good.replace("size 12", "size -12"),
            good.replace("size 12", "size 012"),
            good.replace("size 12", "size 1 2"),
            good.replace("size 12", "size 99999999999999999999999"),
            good.replace("size 12", "size "),
            good.replace("sha256:", "sha1:"),
            good.replace(ID, &ID.to_uppercase()),
            good.replace(ID, &ID[..63]),
            good.replace(ID, "../../../../../../../../../../etc/passwd"),
            good.replace("spec/v1", "spec/v2"),
            good.replace("oid", "oid "),
            good.replace("\n", "\r\r\n"),
            // keys out of order
            format!("version https://git-lfs.github.com/spec/v1\nsize 12\noid sha256:{ID}\n"),
        ];
        for case in cases {
            assert_eq!(Marker::parse(case.as_bytes()), None, "accepted {case:?}");
        }
        assert_eq!(Marker::parse(&[b'x'; 2000]), None);
        assert_eq!(Marker::parse(&[0xff, 0xfe, b'\n']), None);
    }

    #[test]
    fn never_panics_on_any_prefix_or_byte_flip() {
        let good = text("4096").into_bytes();
        for end in 0..=good.len() {
            let _ = Marker::parse(&good[..end]);
        }
        for i in 0..good.len() {
            for b in [0u8, b'\n', b'\r', b' ', 0xff] {
                let mut m = good.clone();
                m[i] = b;
                let _ = Marker::parse(&m);
            }
        }
    }
}
