//! Kafka's default partitioner for keyed records, so an event published over HTTP lands in the same partition
//! as the same key sent by a Kafka producer (per-key ordering then holds across both transports).

/// Kafka's variant of MurmurHash2 (32-bit, seed `0x9747b28c`), as `org.apache.kafka.common.utils.Utils.murmur2`
/// computes it. The result is the Java `int` reinterpreted as `u32`.
pub fn murmur2(bytes: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java folds the length in as an `int`; a key longer than 2^31 bytes cannot exist there, so wrapping
    // matches it for every key Kafka could hash.
    let mut h = SEED ^ (bytes.len() as u32);

    let mut chunks = bytes.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    let tail = chunks.remainder();
    if !tail.is_empty() {
        // Same fall-through as the Java `switch`: the highest tail byte goes highest.
        for (i, &b) in tail.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition Kafka's default partitioner picks for `key`: `toPositive(murmur2(key)) % partitions`.
/// `partitions == 0` is treated as 1 (a topic always has at least one partition).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values are the ones Kafka's own `UtilsTest.testMurmur2` asserts (Java `int`s).
    #[test]
    fn murmur2_matches_kafka_test_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key) as i32, expected, "key {:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partition_is_the_positive_hash_modulo_partitions() {
        // "foobar" hashes to a negative Java int; Kafka masks the sign bit rather than taking abs().
        let positive = (-790_332_482_i32 as u32) & 0x7fff_ffff;
        assert_eq!(partition_for_key(b"foobar", 7), positive % 7);
        assert_eq!(partition_for_key(b"abc", 10), 479_470_107 % 10);
    }

    #[test]
    fn partition_is_always_below_partition_count() {
        for n in 1..=64u32 {
            for key in ["", "a", "CMIP6.CMIP.NCAR.CESM2.historical.r1i1p1f1.Amon.tas.gn.v20190308"] {
                assert!(partition_for_key(key.as_bytes(), n) < n);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_key_maps_into_range(key in proptest::collection::vec(proptest::num::u8::ANY, 0..64), n in 1u32..=1024) {
            proptest::prop_assert!(partition_for_key(&key, n) < n);
        }
    }

    #[test]
    fn zero_partitions_is_treated_as_one() {
        assert_eq!(partition_for_key(b"anything", 0), 0);
    }
}
