//! The Merkle tree (RFC 9162 §2.1, identical hashing to RFC 6962), through `tlog_tiles`.
//!
//! Appending record `n` stores the hashes [`stored_hashes`] returns at
//! [`stored_hash_index`]`(0, n)` onwards: the leaf hash and the roots of the complete
//! subtrees it closes, about two per record. Roots and proofs then read O(log n) of them.
//!
//! `tlog_tiles` reads hashes through a synchronous [`HashReader`]; the log's hashes live in
//! a database reached asynchronously. So every operation runs twice: once with a
//! [`Recorder`] to learn which stored hashes it needs (the indexes depend only on sizes and
//! positions, never on hash values), then, once the caller has fetched exactly those, with a
//! [`MapReader`]. Pure: no IO here.

use std::cell::RefCell;
use std::collections::HashMap;

pub use tlog_tiles::tlog::{
    check_record, check_tree, prove_record, prove_tree, record_hash, stored_hash_count,
    stored_hash_index, stored_hashes, tree_hash, Error, Hash, HashReader,
};

/// Records the indexes asked for and answers with placeholder hashes.
#[derive(Default)]
pub struct Recorder(RefCell<Vec<u64>>);

impl HashReader for Recorder {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, Error> {
        self.0.borrow_mut().extend_from_slice(indexes);
        Ok(vec![Hash::default(); indexes.len()])
    }
}

impl Recorder {
    /// The indexes asked for so far, sorted and without repeats.
    pub fn into_indexes(self) -> Vec<u64> {
        let mut v = self.0.into_inner();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Answers from a map of stored hashes fetched beforehand.
pub struct MapReader<'a>(pub &'a HashMap<u64, Hash>);

impl HashReader for MapReader<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, Error> {
        indexes
            .iter()
            .map(|i| self.0.get(i).copied().ok_or(Error::IndexesNotInTree))
            .collect()
    }
}

/// Answers from every stored hash in index order (the verifier recomputes them all).
pub struct VecReader<'a>(pub &'a [Hash]);

impl HashReader for VecReader<'_> {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, Error> {
        indexes
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.0.get(i))
                    .copied()
                    .ok_or(Error::IndexesNotInTree)
            })
            .collect()
    }
}

/// Stored hashes that appending record `n` reads.
pub fn append_needs(n: u64) -> Vec<u64> {
    let r = Recorder::default();
    let _ = tlog_tiles::tlog::stored_hashes_for_record_hash(n, Hash::default(), &r);
    r.into_indexes()
}

/// Stored hashes that the root of a tree of `size` records reads.
pub fn root_needs(size: u64) -> Vec<u64> {
    let r = Recorder::default();
    let _ = tree_hash(size, &r);
    r.into_indexes()
}

/// Stored hashes that the inclusion proof of record `n` in a tree of `size` reads.
/// `None` unless `n < size`.
pub fn inclusion_needs(size: u64, n: u64) -> Option<Vec<u64>> {
    if n >= size {
        return None;
    }
    let r = Recorder::default();
    prove_record(size, n, &r).ok()?;
    Some(r.into_indexes())
}

/// Stored hashes that the consistency proof between sizes `old` and `new` reads.
/// `None` unless `1 <= old <= new`.
pub fn consistency_needs(new: u64, old: u64) -> Option<Vec<u64>> {
    if old == 0 || old > new {
        return None;
    }
    let r = Recorder::default();
    prove_tree(new, old, &r).ok()?;
    Some(r.into_indexes())
}

/// Checks an inclusion proof without panicking on bad input: is `leaf` record `n` of
/// the tree of `size` with root `root`?
pub fn verify_inclusion(proof: &[Hash], size: u64, root: Hash, n: u64, leaf: Hash) -> bool {
    n < size && proof.len() <= 64 && check_record(&proof.to_vec(), size, root, n, leaf).is_ok()
}

/// Checks a consistency proof without panicking on bad input: is the tree of size `old`
/// with root `old_root` a prefix of the tree of size `new` with root `new_root`?
pub fn verify_consistency(
    proof: &[Hash],
    new: u64,
    new_root: Hash,
    old: u64,
    old_root: Hash,
) -> bool {
    if old == 0 || old > new || proof.len() > 128 {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    check_tree(&proof.to_vec(), new, new_root, old, old_root).is_ok()
}

/// Encodes hashes as base64 strings (how proofs travel in JSON).
pub fn to_b64(hashes: &[Hash]) -> Vec<String> {
    use base64::Engine as _;
    hashes
        .iter()
        .map(|h| base64::engine::general_purpose::STANDARD.encode(h.0))
        .collect()
}

/// Decodes one base64 hash.
pub fn hash_from_b64(s: &str) -> Option<Hash> {
    use base64::Engine as _;
    let v = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    Some(Hash(v.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a log of `n` records in memory the way the store does.
    fn build(n: u64) -> (Vec<Vec<u8>>, Vec<Hash>) {
        let mut stored: Vec<Hash> = Vec::new();
        let mut leaves = Vec::new();
        for i in 0..n {
            let data = format!("event {i}").into_bytes();
            let hs = stored_hashes(i, &data, &VecReader(&stored)).unwrap();
            assert_eq!(stored.len() as u64, stored_hash_index(0, i));
            stored.extend(hs);
            leaves.push(data);
        }
        assert_eq!(stored.len() as u64, stored_hash_count(n));
        (leaves, stored)
    }

    #[test]
    fn hashing_is_rfc_6962() {
        // Leaf: SHA-256(0x00 || entry). The empty tree: SHA-256 of nothing.
        use sha2::Digest;
        let leaf = record_hash(b"hello");
        let mut h = sha2::Sha256::new();
        h.update([0u8]);
        h.update(b"hello");
        assert_eq!(leaf.0.as_slice(), h.finalize().as_slice());
        assert_eq!(
            tree_hash(0, &VecReader(&[])).unwrap().0.as_slice(),
            sha2::Sha256::digest(b"").as_slice()
        );
    }

    /// Roots and proofs agree with ct-merkle, an independent RFC 6962 implementation, for
    /// every size up to 70 (not only powers of two).
    #[test]
    fn roots_and_proofs_match_ct_merkle() {
        let (leaves, stored) = build(70);
        let mut ct: ct_merkle::CtMerkleTree<sha2::Sha256, Vec<u8>> = ct_merkle::CtMerkleTree::new();
        let mut roots = Vec::new();
        for (i, l) in leaves.iter().enumerate() {
            ct.push(l.clone());
            let size = i as u64 + 1;
            let ours = tree_hash(size, &VecReader(&stored)).unwrap();
            assert_eq!(
                ours.0.as_slice(),
                ct.root().as_bytes().as_slice(),
                "root at {size}"
            );
            roots.push(ours);
        }
        for size in 1..=70u64 {
            let root = roots[size as usize - 1];
            for n in 0..size {
                let p = prove_record(size, n, &VecReader(&stored)).unwrap();
                assert!(verify_inclusion(
                    &p,
                    size,
                    root,
                    n,
                    record_hash(&leaves[n as usize])
                ));
                assert!(!verify_inclusion(&p, size, root, n, record_hash(b"forged")));
            }
            for old in 1..=size {
                let p = prove_tree(size, old, &VecReader(&stored)).unwrap();
                assert!(verify_consistency(
                    &p,
                    size,
                    root,
                    old,
                    roots[old as usize - 1]
                ));
                if old < size {
                    assert!(!verify_consistency(&p, size, root, old, root));
                }
            }
        }
    }

    #[test]
    fn recorder_asks_for_what_the_real_run_reads() {
        let (_, stored) = build(37);
        let all: HashMap<u64, Hash> = stored
            .iter()
            .enumerate()
            .map(|(i, h)| (i as u64, *h))
            .collect();
        for size in 1..=37u64 {
            let need = root_needs(size);
            let subset: HashMap<u64, Hash> = need.iter().map(|i| (*i, all[i])).collect();
            assert_eq!(
                tree_hash(size, &MapReader(&subset)).unwrap(),
                tree_hash(size, &VecReader(&stored)).unwrap()
            );
            for n in 0..size {
                let need = inclusion_needs(size, n).unwrap();
                let subset: HashMap<u64, Hash> = need.iter().map(|i| (*i, all[i])).collect();
                assert!(prove_record(size, n, &MapReader(&subset)).is_ok());
            }
        }
        assert!(inclusion_needs(3, 3).is_none());
        assert!(consistency_needs(3, 0).is_none());
        assert!(consistency_needs(3, 4).is_none());
        // Bad input to the checks is a plain false, never a panic.
        assert!(!verify_inclusion(
            &[],
            0,
            Hash::default(),
            5,
            Hash::default()
        ));
        assert!(!verify_consistency(
            &[],
            2,
            Hash::default(),
            3,
            Hash::default()
        ));
    }
}

#[cfg(test)]
mod known_answers {
    use super::*;

    /// The RFC 6962 test leaves used by Certificate Transparency implementations
    /// (certificate-transparency-go `merkle` tests, Go's sumdb `ct_test.go`), and the
    /// published roots of the trees of their first 1..8 leaves.
    #[test]
    fn roots_of_the_ct_test_vectors() {
        let leaves: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        let roots = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        let mut stored: Vec<Hash> = Vec::new();
        for (i, l) in leaves.iter().enumerate() {
            let hs = stored_hashes(i as u64, l, &VecReader(&stored)).unwrap();
            stored.extend(hs);
            let root = tree_hash(i as u64 + 1, &VecReader(&stored)).unwrap();
            let hex: String = root.0.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, roots[i], "root of the first {} leaves", i + 1);
        }
    }
}

/// The hashes to store for record `n` whose leaf hash is `leaf`, given every hash stored
/// before it (in index order). `None` when `stored` is too short.
pub fn stored_hashes_for_leaf(n: u64, leaf: Hash, stored: &[Hash]) -> Option<Vec<Hash>> {
    if stored.len() as u64 != stored_hash_index(0, n) {
        return None;
    }
    tlog_tiles::tlog::stored_hashes_for_record_hash(n, leaf, &VecReader(stored)).ok()
}
