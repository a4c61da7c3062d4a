//! On-disk encoding of log records.
//!
//! ```text
//! record value = [version: u8 = 1][crc32c-ish: u32 LE crc32 of body][body: bincode(Record)]
//! block value  = [version: u8 = 2][count: u32 BE] ([len: u32 BE][record value]) * count
//! ```
//! The checksum covers the body; a record whose checksum or decoding fails is reported as
//! [`LogError::Corrupt`](super::LogError::Corrupt), never returned.
//!
//! A block holds consecutive records of one append under the offset of its first record: the
//! embedded store pays its per-key cost (memory, index, a deletion at retention) once per
//! block rather than once per record (issue 12). A stored value is either form.

use super::Record;

/// Version byte written before every record.
pub const RECORD_VERSION: u8 = 1;

const HEADER: usize = 5;

/// Version byte of a block of records.
pub const BLOCK_VERSION: u8 = 2;

const BLOCK_HEADER: usize = 5;

/// Encodes records already encoded with [`encode`] as one stored value: the record itself
/// when there is one, else a block.
pub fn encode_block(records: &[Vec<u8>]) -> Vec<u8> {
    if let [one] = records {
        return one.clone();
    }
    let len: usize = records.iter().map(|r| r.len() + 4).sum();
    let mut out = Vec::with_capacity(BLOCK_HEADER + len);
    out.push(BLOCK_VERSION);
    out.extend_from_slice(&(records.len() as u32).to_be_bytes());
    for r in records {
        out.extend_from_slice(&(r.len() as u32).to_be_bytes());
        out.extend_from_slice(r);
    }
    out
}

/// How many records a stored value holds (1 for a value that is not a readable block).
pub fn stored_count(bytes: &[u8]) -> u64 {
    match bytes {
        [BLOCK_VERSION, a, b, c, d, ..] => u64::from(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => 1,
    }
}

/// The encoded records of a stored value, in offset order. An item is an error when the
/// block's structure is damaged there; nothing after it can be located.
pub fn stored(bytes: &[u8]) -> Stored<'_> {
    match bytes {
        [BLOCK_VERSION, ..] if bytes.len() >= BLOCK_HEADER => Stored {
            rest: &bytes[BLOCK_HEADER..],
            left: stored_count(bytes),
            block: true,
        },
        _ => Stored {
            rest: bytes,
            left: 1,
            block: false,
        },
    }
}

/// Iterator returned by [`stored`].
pub struct Stored<'a> {
    rest: &'a [u8],
    left: u64,
    block: bool,
}

impl<'a> Iterator for Stored<'a> {
    type Item = Result<&'a [u8], String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        if !self.block {
            return Some(Ok(std::mem::take(&mut self.rest)));
        }
        let damaged = |what: String| Some(Err(format!("damaged block: {what}")));
        let Some((len, rest)) = self.rest.split_first_chunk::<4>() else {
            self.left = 0;
            return damaged(format!("{} bytes left for a length", self.rest.len()));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            self.left = 0;
            return damaged(format!("a record of {len} bytes with {} left", rest.len()));
        }
        let (record, rest) = rest.split_at(len);
        self.rest = rest;
        Some(Ok(record))
    }
}

/// Encodes a record for storage.
pub fn encode(record: &Record) -> Vec<u8> {
    let body =
        bincode::serde::encode_to_vec(record, bincode::config::standard()).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.push(RECORD_VERSION);
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes a stored record, checking its version and checksum.
///
/// # Errors
/// A description of what failed.
pub fn decode(bytes: &[u8]) -> Result<Record, String> {
    if bytes.len() < HEADER {
        return Err(format!(
            "record of {} bytes is shorter than its header",
            bytes.len()
        ));
    }
    let (header, body) = bytes.split_at(HEADER);
    if header[0] != RECORD_VERSION {
        return Err(format!("unknown record version {}", header[0]));
    }
    let expected = u32::from_le_bytes([header[1], header[2], header[3], header[4]]);
    let actual = crc32fast::hash(body);
    if expected != actual {
        return Err(format!(
            "checksum mismatch (stored {expected:08x}, computed {actual:08x})"
        ));
    }
    let (record, used): (Record, usize) =
        bincode::serde::decode_from_slice(body, bincode::config::standard())
            .map_err(|e| format!("undecodable record: {e}"))?;
    if used != body.len() {
        return Err(format!("{} trailing bytes after record", body.len() - used));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrips_any_record(key in proptest::collection::vec(any::<u8>(), 0..64),
                                 value in proptest::collection::vec(any::<u8>(), 0..512),
                                 ts in any::<u64>()) {
            let r = Record { key, value, timestamp_ms: ts };
            prop_assert_eq!(decode(&encode(&r)).unwrap(), r);
        }

        #[test]
        fn any_flipped_byte_is_detected(value in proptest::collection::vec(any::<u8>(), 1..128),
                                        idx in any::<usize>(), bit in 0u8..8) {
            let r = Record { key: b"k".to_vec(), value, timestamp_ms: 7 };
            let mut enc = encode(&r);
            let i = idx % enc.len();
            enc[i] ^= 1 << bit;
            prop_assert!(decode(&enc).is_err());
        }

        #[test]
        fn blocks_roundtrip_and_count(values in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..300), 1..20)) {
            let recs: Vec<Record> = values.into_iter().enumerate()
                .map(|(i, value)| Record { key: vec![i as u8], value, timestamp_ms: i as u64 })
                .collect();
            let enc: Vec<Vec<u8>> = recs.iter().map(encode).collect();
            let block = encode_block(&enc);
            prop_assert_eq!(stored_count(&block), recs.len() as u64);
            let back: Vec<Record> = stored(&block).map(|r| decode(r.unwrap()).unwrap()).collect();
            prop_assert_eq!(back, recs);
        }

        #[test]
        fn a_cut_block_is_an_error_never_a_record(n in 2usize..8, cut in any::<usize>()) {
            let enc: Vec<Vec<u8>> = (0..n)
                .map(|i| encode(&Record { key: vec![1], value: vec![i as u8; 40], timestamp_ms: 0 }))
                .collect();
            let block = encode_block(&enc);
            let cut = BLOCK_HEADER + cut % (block.len() - BLOCK_HEADER);
            let items: Vec<_> = stored(&block[..cut]).collect();
            prop_assert!(items.iter().any(|r| r.is_err() || decode(r.as_ref().unwrap()).is_err()));
        }
    }
}
