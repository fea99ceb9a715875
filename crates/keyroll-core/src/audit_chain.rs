//! The audit log's hash chain (SPEC §8): the canonical encoding of an entry, the link from one
//! entry to the next, and the verification of a whole chain.
//!
//! Each entry's hash is SHA-256 over its canonical encoding, which ends with the previous
//! entry's hash ([`GENESIS`] for the first). Editing an entry changes its hash; removing or
//! reordering entries breaks the link of the entry that follows. There is no secret in the chain,
//! so someone who can write the database can also recompute every hash after an edit: only a
//! head hash kept elsewhere ([`verify_expecting`]) detects such a rewrite, or a cut-off tail.
//!
//! The encoding is fixed and unambiguous: a version tag, then every field in a fixed order, each
//! integer as 8 bytes big-endian, each text as its length (8 bytes big-endian) and its UTF-8
//! bytes, each optional text as a presence byte (0 or 1) then the text. No two different entries
//! encode to the same bytes, whatever their texts contain.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::Timestamp;

/// A SHA-256 hash of the chain, shown as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainHash(pub [u8; 32]);

/// The "previous hash" of the first entry.
pub const GENESIS: ChainHash = ChainHash([0; 32]);

/// What tags the encoding, so a future encoding cannot be confused with this one.
const ENCODING_TAG: &[u8] = b"keyroll-audit-v1";

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChainHash({self})")
    }
}

/// A text that is not a chain hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an audit chain hash: expected 64 hex digits (SHA-256)")]
pub struct BadChainHash {
    /// What was given.
    pub input: String,
}

impl FromStr for ChainHash {
    type Err = BadChainHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 32];
        match hex::decode_to_slice(s, &mut out) {
            Ok(()) => Ok(ChainHash(out)),
            Err(_) => Err(BadChainHash { input: s.into() }),
        }
    }
}

impl ChainHash {
    /// A hash from stored bytes; `None` unless exactly 32.
    pub fn from_slice(bytes: &[u8]) -> Option<ChainHash> {
        <[u8; 32]>::try_from(bytes).ok().map(ChainHash)
    }
}

/// The fields of one audit entry that the chain covers (all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainEntry<'a> {
    /// Its position in the log.
    pub seq: i64,
    /// When.
    pub at: Timestamp,
    /// Who.
    pub actor: &'a str,
    /// What.
    pub action: &'a str,
    /// On what.
    pub target: &'a str,
    /// The detail JSON, as the exact text stored.
    pub detail: &'a str,
    /// The request that caused it.
    pub request_id: Option<&'a str>,
    /// From where.
    pub remote_addr: Option<&'a str>,
}

/// The canonical bytes of `entry` following `prev`: what [`link`] hashes.
pub fn encode(prev: &ChainHash, entry: &ChainEntry<'_>) -> Vec<u8> {
    fn text(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u64).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn optional(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                text(out, s);
            }
        }
    }
    let mut out = Vec::with_capacity(
        ENCODING_TAG.len()
            + 64
            + entry.actor.len()
            + entry.action.len()
            + entry.target.len()
            + entry.detail.len(),
    );
    out.extend_from_slice(ENCODING_TAG);
    out.extend_from_slice(&entry.seq.to_be_bytes());
    out.extend_from_slice(&entry.at.unix_millis().to_be_bytes());
    text(&mut out, entry.actor);
    text(&mut out, entry.action);
    text(&mut out, entry.target);
    text(&mut out, entry.detail);
    optional(&mut out, entry.request_id);
    optional(&mut out, entry.remote_addr);
    out.extend_from_slice(&prev.0);
    out
}

/// The hash of `entry` when it follows the entry whose hash is `prev`.
pub fn link(prev: &ChainHash, entry: &ChainEntry<'_>) -> ChainHash {
    ChainHash(Sha256::digest(encode(prev, entry)).into())
}

/// An entry as stored, with the hashes the store wrote beside it. A missing hash (a row written
/// outside keyroll) never matches anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredLink<'a> {
    /// The entry.
    pub entry: ChainEntry<'a>,
    /// The previous entry's hash, as stored.
    pub prev_hash: Option<ChainHash>,
    /// This entry's hash, as stored.
    pub hash: Option<ChainHash>,
}

/// The end of an intact chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// How many entries were checked.
    pub entries: u64,
    /// The last entry's position, if there is one.
    pub seq: Option<i64>,
    /// The last entry's hash ([`GENESIS`] for an empty log).
    pub hash: ChainHash,
}

/// How a link is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// The entry's content does not hash to its stored hash: it was edited.
    Edited,
    /// The entry's link names no entry present: the one before it was removed (or rewritten).
    Removed,
    /// The entry's link names another entry present, not the one before it: entries were
    /// reordered.
    Reordered,
}

impl BreakKind {
    /// A stable word for it (`edited`, `removed`, `reordered`).
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::Edited => "edited",
            BreakKind::Removed => "removed",
            BreakKind::Reordered => "reordered",
        }
    }
}

/// The first broken link of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the audit chain is broken at entry {position} (seq {seq}): {}", self.explain())]
pub struct ChainBreak {
    /// 1-based position of the entry in the log, in `seq` order.
    pub position: u64,
    /// The entry's `seq` as stored.
    pub seq: i64,
    /// How.
    pub kind: BreakKind,
}

impl ChainBreak {
    /// What the kind means, in words.
    pub fn explain(&self) -> &'static str {
        match self.kind {
            BreakKind::Edited => "the entry was edited (its content does not match its hash)",
            BreakKind::Removed => {
                "the entry before it was removed or rewritten (its link names no entry present)"
            }
            BreakKind::Reordered => {
                "entries were reordered (its link names another entry, not the one before it)"
            }
        }
    }
}

/// Checks every link of `entries`, given oldest first (in `seq` order), and returns the head, or
/// the first broken link. An entry is checked for its link to the one before it first (a broken
/// link says entries are missing or out of order) and then for its own content.
pub fn verify(entries: &[StoredLink<'_>]) -> Result<Head, ChainBreak> {
    let mut head = Head {
        entries: 0,
        seq: None,
        hash: GENESIS,
    };
    for (i, stored) in entries.iter().enumerate() {
        let position = i as u64 + 1;
        let broken = |kind| ChainBreak {
            position,
            seq: stored.entry.seq,
            kind,
        };
        let out_of_order = head.seq.is_some_and(|s| stored.entry.seq <= s);
        if out_of_order || stored.prev_hash != Some(head.hash) {
            let names_another = stored.prev_hash.is_some_and(|p| {
                p == GENESIS
                    || entries
                        .iter()
                        .enumerate()
                        .any(|(j, e)| j + 1 != i && e.hash == Some(p))
            });
            let kind = if out_of_order || names_another {
                BreakKind::Reordered
            } else {
                BreakKind::Removed
            };
            return Err(broken(kind));
        }
        let hash = link(&head.hash, &stored.entry);
        if stored.hash != Some(hash) {
            return Err(broken(BreakKind::Edited));
        }
        head = Head {
            entries: position,
            seq: Some(stored.entry.seq),
            hash,
        };
    }
    Ok(head)
}

/// Why a chain does not verify against an expected head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExpectError {
    /// A link is broken.
    #[error(transparent)]
    Broken(#[from] ChainBreak),
    /// Every link holds, but no entry has the expected hash: entries at the end were removed
    /// (the tail was truncated), or the chain was rewritten.
    #[error(
        "no entry of the audit chain has the expected head {expected}: entries at its end were \
         removed or the chain was rewritten (head now {head})"
    )]
    HeadMissing {
        /// The head that was expected.
        expected: ChainHash,
        /// The head found.
        head: ChainHash,
    },
}

/// [`verify`], and the entry whose hash is `expected` must still be in the chain (entries
/// appended after it are fine). Returns the head and the position of the expected entry (0 when
/// `expected` is [`GENESIS`]).
pub fn verify_expecting(
    entries: &[StoredLink<'_>],
    expected: &ChainHash,
) -> Result<(Head, u64), ExpectError> {
    let head = verify(entries)?;
    if *expected == GENESIS {
        return Ok((head, 0));
    }
    // After `verify`, every stored hash is the recomputed one.
    match entries.iter().position(|e| e.hash == Some(*expected)) {
        Some(i) => Ok((head, i as u64 + 1)),
        None => Err(ExpectError::HeadMissing {
            expected: *expected,
            head: head.hash,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Row {
        seq: i64,
        detail: String,
        prev: Option<ChainHash>,
        hash: Option<ChainHash>,
    }

    fn entry(seq: i64, detail: &str) -> ChainEntry<'_> {
        ChainEntry {
            seq,
            at: Timestamp::from_unix_millis(1_000 * seq),
            actor: "tok_1",
            action: "consumer.updated",
            target: "prod/app",
            detail,
            request_id: Some("rq_1"),
            remote_addr: None,
        }
    }

    /// A chain of `n` rows as a store would write them.
    fn chain(n: i64) -> Vec<Row> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let detail = format!("{{\"n\":{seq}}}");
                let hash = link(&prev, &entry(seq, &detail));
                let row = Row {
                    seq,
                    detail,
                    prev: Some(prev),
                    hash: Some(hash),
                };
                prev = hash;
                row
            })
            .collect()
    }

    fn links(rows: &[Row]) -> Vec<StoredLink<'_>> {
        rows.iter()
            .map(|r| StoredLink {
                entry: entry(r.seq, &r.detail),
                prev_hash: r.prev,
                hash: r.hash,
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies_to_its_last_hash() {
        let rows = chain(4);
        let head = verify(&links(&rows)).unwrap();
        assert_eq!(head.entries, 4);
        assert_eq!(head.seq, Some(4));
        assert_eq!(Some(head.hash), rows[3].hash);
        let empty = verify(&[]).unwrap();
        assert_eq!((empty.entries, empty.hash), (0, GENESIS));
    }

    #[test]
    fn an_edited_entry_is_named() {
        let mut rows = chain(4);
        rows[2].detail = "{\"n\":99}".into();
        let err = verify(&links(&rows)).unwrap_err();
        assert_eq!(
            err,
            ChainBreak {
                position: 3,
                seq: 3,
                kind: BreakKind::Edited
            }
        );
        assert!(err.to_string().contains("entry 3 (seq 3)"), "{err}");
    }

    #[test]
    fn a_missing_hash_is_an_edit() {
        let mut rows = chain(2);
        rows[1].hash = None;
        assert_eq!(verify(&links(&rows)).unwrap_err().kind, BreakKind::Edited);
    }

    #[test]
    fn a_removed_entry_breaks_the_link_of_the_next() {
        let mut rows = chain(4);
        rows.remove(1);
        let err = verify(&links(&rows)).unwrap_err();
        assert_eq!(
            err,
            ChainBreak {
                position: 2,
                seq: 3,
                kind: BreakKind::Removed
            }
        );
        let mut rows = chain(3);
        rows.remove(0);
        assert_eq!(
            verify(&links(&rows)).unwrap_err(),
            ChainBreak {
                position: 1,
                seq: 2,
                kind: BreakKind::Removed
            }
        );
    }

    #[test]
    fn swapped_positions_are_a_reordering() {
        let mut rows = chain(4);
        // Swap the seq of rows 2 and 3, as an UPDATE of the table would; readers sort by seq.
        rows[1].seq = 3;
        rows[2].seq = 2;
        rows.swap(1, 2);
        let err = verify(&links(&rows)).unwrap_err();
        assert_eq!(
            err,
            ChainBreak {
                position: 2,
                seq: 2,
                kind: BreakKind::Reordered
            }
        );
        // Rows handed over out of seq order are a reordering too.
        let mut rows = chain(3);
        rows.swap(1, 2);
        assert_eq!(
            verify(&links(&rows)).unwrap_err().kind,
            BreakKind::Reordered
        );
    }

    #[test]
    fn a_rewritten_entry_breaks_the_next_link() {
        let mut rows = chain(3);
        rows[1].detail = "{\"n\":7}".into();
        rows[1].hash = Some(link(&rows[0].hash.unwrap(), &entry(2, &rows[1].detail)));
        let err = verify(&links(&rows)).unwrap_err();
        assert_eq!((err.position, err.kind), (3, BreakKind::Removed));
    }

    #[test]
    fn a_truncated_tail_is_found_only_with_the_expected_head() {
        let mut rows = chain(4);
        let old_head = rows[3].hash.unwrap();
        rows.pop();
        assert_eq!(verify(&links(&rows)).unwrap().entries, 3);
        let err = verify_expecting(&links(&rows), &old_head).unwrap_err();
        assert!(
            matches!(err, ExpectError::HeadMissing { expected, .. } if expected == old_head),
            "{err}"
        );
        // An older head is still in the chain: entries appended since are fine.
        let older = rows[1].hash.unwrap();
        let (head, at) = verify_expecting(&links(&rows), &older).unwrap();
        assert_eq!((head.entries, at), (3, 2));
        assert_eq!(verify_expecting(&[], &GENESIS).unwrap().1, 0);
    }

    #[test]
    fn the_encoding_is_unambiguous_across_field_boundaries() {
        let a = ChainEntry {
            actor: "ab",
            action: "c",
            ..entry(1, "{}")
        };
        let b = ChainEntry {
            actor: "a",
            action: "bc",
            ..entry(1, "{}")
        };
        assert_ne!(encode(&GENESIS, &a), encode(&GENESIS, &b));
        let none = ChainEntry {
            request_id: None,
            remote_addr: Some(""),
            ..entry(1, "{}")
        };
        let empty = ChainEntry {
            request_id: Some(""),
            remote_addr: None,
            ..entry(1, "{}")
        };
        assert_ne!(link(&GENESIS, &none), link(&GENESIS, &empty));
        assert_ne!(
            link(&GENESIS, &entry(1, "{}")),
            link(&ChainHash([1; 32]), &entry(1, "{}"))
        );
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let h = link(&GENESIS, &entry(1, "{}"));
        assert_eq!(h.to_string().len(), 64);
        assert_eq!(h.to_string().parse::<ChainHash>().unwrap(), h);
        assert!("abc".parse::<ChainHash>().is_err());
        assert!("zz".repeat(32).parse::<ChainHash>().is_err());
    }
}
