//! Part sizing for multipart copies, as the original's `MultipleBackendTask` (reference 3.4,
//! item 6).
//!
//! Parts start at 16 MiB; an object of at most 16 MiB is one range. While there would be more
//! than 1,000 parts and the part size is below 512 MiB, the size doubles; then it doubles again
//! while there would be more than 10,000 parts (S3's limit). A 0-byte object is one part with no
//! range (`(0, 0)` is never returned for it: the list is empty-ranged, see [`part_ranges`]).

/// First part size: 16 MiB.
pub const MIN_PART_SIZE: u64 = 16 * 1024 * 1024;
/// Part size above which doubling stops for the 1,000-part goal: 512 MiB.
pub const SOFT_MAX_PART_SIZE: u64 = 512 * 1024 * 1024;
/// Part count the first doubling aims below.
pub const SOFT_MAX_PARTS: u64 = 1000;
/// S3's hard limit on parts.
pub const MAX_PARTS: u64 = 10_000;

/// The part size used for an object of `len` bytes.
pub fn part_size(len: u64) -> u64 {
    let parts = |size: u64| len.div_ceil(size);
    let mut size = MIN_PART_SIZE;
    while parts(size) > SOFT_MAX_PARTS && size < SOFT_MAX_PART_SIZE {
        size *= 2;
    }
    while parts(size) > MAX_PARTS {
        size *= 2;
    }
    size
}

/// The inclusive byte ranges of the parts of an object of `len` bytes, in order; they cover the
/// object exactly.
///
/// A 0-byte object is one part with no range: the result is empty and the caller uploads a
/// single empty part (or, better, does a single put).
pub fn part_ranges(len: u64) -> Vec<(u64, u64)> {
    if len == 0 {
        return Vec::new();
    }
    let size = part_size(len);
    let mut out = Vec::with_capacity(len.div_ceil(size) as usize);
    let mut start = 0;
    while start < len {
        let end = (start + size).min(len) - 1;
        out.push((start, end));
        start = end + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;
    const GIB: u64 = 1024 * MIB;

    fn check_cover(len: u64, ranges: &[(u64, u64)]) {
        let mut next = 0;
        for &(s, e) in ranges {
            assert_eq!(s, next);
            assert!(e >= s);
            next = e + 1;
        }
        assert_eq!(next, len);
    }

    fn summary(len: u64) -> (usize, u64) {
        let r = part_ranges(len);
        check_cover(len, &r);
        (r.len(), r[0].1 - r[0].0 + 1)
    }

    #[test]
    fn zero_bytes_is_one_part_without_range() {
        assert!(part_ranges(0).is_empty());
    }

    #[test]
    fn sixteen_mib_is_one_range() {
        assert_eq!(part_ranges(16 * MIB), vec![(0, 16 * MIB - 1)]);
        assert_eq!(part_ranges(1), vec![(0, 0)]);
    }

    #[test]
    fn sixteen_mib_plus_one_is_two_ranges() {
        assert_eq!(
            part_ranges(16 * MIB + 1),
            vec![(0, 16 * MIB - 1), (16 * MIB, 16 * MIB)]
        );
    }

    #[test]
    fn sixteen_thousand_mib_is_a_thousand_parts_of_sixteen_mib() {
        assert_eq!(summary(16000 * MIB), (1000, 16 * MIB));
    }

    #[test]
    fn one_byte_more_doubles_the_part_size() {
        assert_eq!(summary(16000 * MIB + 1), (501, 32 * MIB));
    }

    #[test]
    fn ten_thousand_parts_of_512_mib_stay_at_512_mib() {
        assert_eq!(summary(512 * MIB * 10_000), (10_000, 512 * MIB));
    }

    #[test]
    fn beyond_ten_thousand_parts_the_size_doubles_again() {
        assert_eq!(summary(512 * MIB * 10_000 + 1), (5001, GIB));
    }

    #[test]
    fn five_tib_is_5120_parts_of_one_gib() {
        assert_eq!(summary(5 * 1024 * GIB), (5120, GIB));
    }

    #[test]
    fn forty_mib_is_three_parts_of_sixteen_mib() {
        let r = part_ranges(40 * MIB);
        assert_eq!(
            r,
            vec![
                (0, 16 * MIB - 1),
                (16 * MIB, 32 * MIB - 1),
                (32 * MIB, 40 * MIB - 1)
            ]
        );
    }
}
