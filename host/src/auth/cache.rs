//! A bounded cache of verified tokens, so an RS256/ES256 token costs a
//! signature check once, not on every request. Entries live until `exp`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use foldhash::fast::RandomState;

use super::Identity;

/// Keyed by the whole token. The hash is foldhash with a per-process random
/// seed rather than SipHash: only verified tokens are ever stored, so a
/// client cannot choose the keys in the table (it can only look up its own),
/// and hashing a ~200-byte token with SipHash was ~1.4k instructions of
/// every request.
type Entries = HashMap<Box<str>, Arc<Identity>, RandomState>;

pub struct TokenCache {
    capacity: usize,
    leeway: u64,
    entries: Mutex<Entries>,
}

impl TokenCache {
    pub fn new(capacity: usize, leeway: u64) -> Self {
        TokenCache {
            capacity,
            leeway,
            entries: Mutex::new(HashMap::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert/remove), so poison is ignored.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A still-valid identity for exactly this token.
    pub fn get(&self, token: &str, now: u64) -> Option<Arc<Identity>> {
        if self.capacity == 0 {
            return None;
        }
        let mut map = self.lock();
        let id = map.get(token)?;
        if id.exp.saturating_add(self.leeway) >= now {
            return Some(id.clone());
        }
        map.remove(token);
        None
    }

    pub fn insert(&self, token: &str, id: Arc<Identity>, now: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut map = self.lock();
        if map.len() >= self.capacity {
            let leeway = self.leeway;
            map.retain(|_, v| v.exp.saturating_add(leeway) >= now);
            if map.len() >= self.capacity {
                // Still full of live tokens: start over rather than grow.
                map.clear();
            }
        }
        map.insert(token.into(), id);
    }

    /// Forgets everything (the key set changed).
    pub fn clear(&self) {
        self.lock().clear();
    }
}
