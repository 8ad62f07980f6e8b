//! Time-ordered ids: ULIDs from one process-wide monotonic generator, so that ids made in
//! the same millisecond still sort in creation order. A broadcast reserves a block of
//! consecutive ids so that its per-recipient message ids can be derived again after a
//! crash (`nth_in_block`).

use std::sync::Mutex;
use ulid::Ulid;

use crate::time::Millis;

static LAST: Mutex<(u64, u128)> = Mutex::new((0, 0));

/// Largest block one reservation may take (the largest broadcast).
pub const MAX_BLOCK: u128 = 1 << 20;

/// Reserves `count` consecutive ULIDs, all greater than every id made before in this process.
pub fn reserve(count: u32) -> Ulid {
    debug_assert!(u128::from(count) <= MAX_BLOCK);
    let now = Millis::now().0.max(0) as u64;
    let mut last = LAST.lock().unwrap_or_else(|poison| poison.into_inner());
    let (ms, random) = if now > last.0 {
        // Leave room above the random part so a block never overflows into the next millisecond.
        (now, rand::random::<u128>() >> 49)
    } else {
        (last.0, last.1 + 1)
    };
    *last = (ms, random + u128::from(count.max(1)) - 1);
    Ulid::from_parts(ms, random)
}

/// A new time-ordered id, 26 characters.
pub fn new_id() -> String {
    reserve(1).to_string()
}

/// The `n`th id of a block reserved with `reserve` (n = 0 is the block's first id).
pub fn nth_in_block(first: &str, n: u32) -> Option<String> {
    let first = Ulid::from_string(first).ok()?;
    Some(Ulid(first.0 + u128::from(n)).to_string())
}

/// The conversation id of a (business, mobile) pair: derived from the pair, so that a chat
/// message needs no write before its one log append to name its conversation, and every
/// stage derives the same id. `c_` and 32 hex digits of SHA-256 (ids may contain any of
/// `[A-Za-z0-9_.:-]`, so the two ids are length-prefixed before hashing).
pub fn conversation_id(business_id: &str, mobile_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for id in [business_id, mobile_id] {
        hash.update((id.len() as u64).to_le_bytes());
        hash.update(id.as_bytes());
    }
    let digest = hash.finalize();
    let mut id = String::with_capacity(34);
    id.push_str("c_");
    for byte in &digest[..16] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// Whether `text` is a well-formed conversation id (`conversation_id`).
pub fn is_conversation_id(text: &str) -> bool {
    text.len() == 34 && text.starts_with("c_") && text[2..].bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `text` is a well-formed id made by this module.
pub fn is_id(text: &str) -> bool {
    text.len() == 26 && Ulid::from_string(text).is_ok()
}

/// The creation time encoded in an id.
pub fn id_time(id: &str) -> Option<Millis> {
    Ulid::from_string(id).ok().map(|u| Millis(u.timestamp_ms() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_ids_are_derived_from_the_pair_alone() {
        let id = conversation_id("acme", "mona");
        assert_eq!(id, conversation_id("acme", "mona"));
        assert_eq!(id.len(), 34);
        assert!(id.starts_with("c_"));
        assert!(is_conversation_id(&id) && !is_conversation_id(&new_id()) && !is_conversation_id("c_xyz"));
        assert_ne!(id, conversation_id("mona", "acme"));
        // Ids may contain ':', so "a:b" + "c" must not collide with "a" + "b:c".
        assert_ne!(conversation_id("a:b", "c"), conversation_id("a", "b:c"));
    }

    #[test]
    fn ids_sort_in_creation_order() {
        let ids: Vec<String> = (0..10_000).map(|_| new_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn block_ids_are_derivable_and_precede_later_ids() {
        let first = reserve(1000).to_string();
        let last = nth_in_block(&first, 999).unwrap();
        let next = new_id();
        assert!(first < last && last < next);
        assert!(is_id(&last));
    }
}
