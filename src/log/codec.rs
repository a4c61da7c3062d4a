//! On-disk encoding of log records.
//!
//! ```text
//! record value = [version: u8 = 1][crc32c-ish: u32 LE crc32 of body][body: bincode(Record)]
//! ```
//! The checksum covers the body; a record whose checksum or decoding fails is reported as
//! [`LogError::Corrupt`](super::LogError::Corrupt), never returned.

use super::Record;

/// Version byte written before every record.
pub const RECORD_VERSION: u8 = 1;

const HEADER: usize = 5;

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
    }
}
