//! `ObjectId`: the SHA-256 identifier of an object's content.
//!
//! This is the only way an identifier becomes a path: it can only be built
//! from exactly 64 lowercase hex digits or from a finished hash, so a path
//! made from it never holds `/`, `..` or anything else a caller did not mean.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// Length of an identifier in hex digits.
pub const HEX_LEN: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid object identifier {shown:?}: expected 64 lowercase hex digits")]
pub struct InvalidObjectId {
    shown: String,
}

impl ObjectId {
    /// The identifier of the empty content.
    pub fn empty() -> Self {
        Self::from_digest(Sha256::new())
    }

    pub fn from_digest(hasher: Sha256) -> Self {
        Self(hasher.finalize().into())
    }

    /// Hash a whole byte slice (tests and small inputs only; content is streamed elsewhere).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(HEX_LEN);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }

    /// Where this object lives below a store root: `aa/bb/<id><suffix>`.
    pub fn fan_out_path(&self, suffix: &str) -> PathBuf {
        let hex = self.to_hex();
        let mut path = PathBuf::from(&hex[0..2]);
        path.push(&hex[2..4]);
        path.push(format!("{hex}{suffix}"));
        path
    }

    /// A shortened form for tables meant for people.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_owned()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl FromStr for ObjectId {
    type Err = InvalidObjectId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s.as_bytes())
    }
}

impl ObjectId {
    /// Parse exactly 64 lowercase hex digits; anything else is refused.
    pub fn from_hex(hex: &[u8]) -> Result<Self, InvalidObjectId> {
        let invalid = || InvalidObjectId {
            shown: String::from_utf8_lossy(&hex[..hex.len().min(80)]).into_owned(),
        };
        if hex.len() != HEX_LEN {
            return Err(invalid());
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            let hi = nibble(pair[0]).ok_or_else(invalid)?;
            let lo = nibble(pair[1]).ok_or_else(invalid)?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Self(out))
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.to_hex())
    }
}

impl serde::Serialize for ObjectId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for ObjectId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn empty_content_has_the_well_known_id() {
        assert_eq!(ObjectId::empty().to_hex(), EMPTY);
        assert_eq!(ObjectId::of_bytes(b"").to_hex(), EMPTY);
    }

    #[test]
    fn round_trips_hex() {
        let id: ObjectId = EMPTY.parse().unwrap();
        assert_eq!(id.to_string(), EMPTY);
    }

    #[test]
    fn refuses_anything_but_64_lowercase_hex() {
        for bad in [
            "",
            &EMPTY[..63],
            &format!("{EMPTY}0"),
            &EMPTY.to_uppercase(),
            "../../../../etc/passwd/../../../../../../../../../../../../../../../../..",
            &format!("{}g", &EMPTY[..63]),
            &format!("{}/", &EMPTY[..63]),
            &format!("{}é", &EMPTY[..62]),
        ] {
            assert!(bad.parse::<ObjectId>().is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn fan_out_path_has_two_levels() {
        let id: ObjectId = EMPTY.parse().unwrap();
        assert_eq!(
            id.fan_out_path(".cache"),
            PathBuf::from(format!("e3/b0/{EMPTY}.cache"))
        );
    }
}
