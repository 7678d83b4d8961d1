//! How big the cache may grow, and which objects go first when it is too big.

use std::time::SystemTime;

use crate::oid::ObjectId;

/// Limits on the cache; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of the objects (`fcache.cachelimit`).
    pub bytes: Option<u64>,
    /// Number of objects (`fcache.cachemaxfiles`).
    pub files: Option<u64>,
}

/// An object in the cache, as eviction sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedObject {
    pub id: ObjectId,
    pub size: u64,
    /// When it was last added or used (the file's modification time).
    pub last_used: SystemTime,
}

impl Limits {
    pub fn is_limited(&self) -> bool {
        self.bytes.is_some() || self.files.is_some()
    }

    /// Can an object of `size` bytes be kept at all? One larger than the whole
    /// byte limit never is: it lives in the archive only.
    pub fn fits(&self, size: u64) -> bool {
        self.bytes.is_none_or(|limit| size <= limit)
    }

    pub fn within(&self, objects: u64, bytes: u64) -> bool {
        self.files.is_none_or(|max| objects <= max) && self.bytes.is_none_or(|max| bytes <= max)
    }

    /// The objects to evict, least recently used first, so that what stays is
    /// within the limits. Ties go by identifier, so the order is the same
    /// every time.
    pub fn eviction_order(&self, objects: &[CachedObject]) -> Vec<CachedObject> {
        let mut by_age: Vec<CachedObject> = objects.to_vec();
        by_age.sort_by_key(|o| (o.last_used, o.id));
        let mut count = objects.len() as u64;
        let mut bytes: u64 = objects.iter().map(|o| o.size).sum();
        let mut out = Vec::new();
        for o in by_age {
            if self.within(count, bytes) {
                break;
            }
            count -= 1;
            bytes -= o.size;
            out.push(o);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn obj(n: u8, size: u64, age: u64) -> CachedObject {
        CachedObject {
            id: ObjectId::of_bytes(&[n]),
            size,
            last_used: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age),
        }
    }

    #[test]
    fn unlimited_evicts_nothing() {
        let objects = [obj(1, 10, 5), obj(2, 10, 1)];
        assert!(Limits::default().eviction_order(&objects).is_empty());
        assert!(Limits::default().fits(u64::MAX));
    }

    #[test]
    fn evicts_least_recently_used_until_within_both_limits() {
        let objects = [obj(1, 10, 3), obj(2, 10, 9), obj(3, 10, 1), obj(4, 10, 5)];
        let by_count = Limits {
            bytes: None,
            files: Some(2),
        };
        let gone: Vec<_> = by_count.eviction_order(&objects);
        assert_eq!(gone, vec![objects[1], objects[3]]);
        let by_bytes = Limits {
            bytes: Some(25),
            files: None,
        };
        assert_eq!(
            by_bytes.eviction_order(&objects),
            vec![objects[1], objects[3]]
        );
        let both = Limits {
            bytes: Some(35),
            files: Some(2),
        };
        assert_eq!(both.eviction_order(&objects).len(), 2);
        assert!(!both.fits(36));
        assert!(both.fits(35));
    }
}
