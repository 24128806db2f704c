//! The on-disk framing: Kafka's record batch v2, uncompressed, so the Kafka endpoint can serve stored batches
//! as they are. Each batch carries a CRC32C over everything after the CRC field; a batch whose CRC, length or
//! inner structure does not check out is never decoded into records.
//!
//! Layout (big-endian): base_offset i64 | batch_length i32 | leader_epoch i32 | magic i8 (=2) | crc u32 |
//! attributes i16 | last_offset_delta i32 | base_timestamp i64 | max_timestamp i64 | producer_id i64 |
//! producer_epoch i16 | base_sequence i32 | record_count i32 | records. Each record: length varint |
//! attributes i8 | timestamp_delta varlong | offset_delta varint | key (varint length, -1 = null) |
//! value (varint length) | header count varint | headers (varint-length name, varint-length value).

use bytes::Bytes;

use crate::{Header, NewRecord, Record};

/// Bytes before the first record.
pub const BATCH_HEADER_LEN: usize = 61;
/// Bytes of `base_offset` + `batch_length`, which `batch_length` does not count.
pub const LOG_OVERHEAD: usize = 12;
const MAGIC: i8 = 2;
const CRC_START: usize = 21;

/// What the log needs to know about a batch without decoding its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    /// Total bytes of the batch including the 12-byte log overhead.
    pub total_len: usize,
    pub last_offset_delta: u32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub record_count: u32,
}

impl BatchHeader {
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.last_offset_delta)
    }
    pub fn next_offset(&self) -> u64 {
        self.last_offset() + 1
    }
}

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the batch announces: a torn write at the tail, or a read that needs more bytes.
    #[error("incomplete batch: need {needed} bytes, have {have}")]
    Incomplete { needed: usize, have: usize },
    #[error("{0}")]
    Invalid(String),
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, FrameError> {
    Err(FrameError::Invalid(msg.into()))
}

/// Encodes `records` as one batch starting at `base_offset`, appending to `out`. Records without a timestamp
/// get `now_ms`. Returns the header of the encoded batch.
pub fn encode_batch(base_offset: u64, records: &[NewRecord], now_ms: i64, out: &mut Vec<u8>) -> BatchHeader {
    assert!(!records.is_empty(), "a batch holds at least one record");
    let start = out.len();
    let timestamps: Vec<i64> = records.iter().map(|r| r.timestamp_ms.unwrap_or(now_ms)).collect();
    let base_ts = timestamps[0];
    let max_ts = timestamps.iter().copied().max().unwrap_or(base_ts);
    let last_delta = u32::try_from(records.len() - 1).expect("batch record count fits u32");

    out.extend_from_slice(&(base_offset as i64).to_be_bytes());
    out.extend_from_slice(&[0; 4]); // batch_length, patched below
    out.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
    out.push(MAGIC as u8);
    out.extend_from_slice(&[0; 4]); // crc, patched below
    out.extend_from_slice(&0i16.to_be_bytes()); // attributes: no compression, create time
    out.extend_from_slice(&(last_delta as i32).to_be_bytes());
    out.extend_from_slice(&base_ts.to_be_bytes());
    out.extend_from_slice(&max_ts.to_be_bytes());
    out.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    out.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    out.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    out.extend_from_slice(&(records.len() as i32).to_be_bytes());

    let mut body = Vec::with_capacity(64);
    for (i, (rec, ts)) in records.iter().zip(&timestamps).enumerate() {
        body.clear();
        body.push(0); // record attributes
        put_varlong(&mut body, ts - base_ts);
        put_varint(&mut body, i as i32);
        match &rec.key {
            Some(k) => {
                put_varint(&mut body, len_i32(k.len()));
                body.extend_from_slice(k);
            }
            None => put_varint(&mut body, -1),
        }
        put_varint(&mut body, len_i32(rec.value.len()));
        body.extend_from_slice(&rec.value);
        put_varint(&mut body, len_i32(rec.headers.len()));
        for h in &rec.headers {
            put_varint(&mut body, len_i32(h.name.len()));
            body.extend_from_slice(h.name.as_bytes());
            put_varint(&mut body, len_i32(h.value.len()));
            body.extend_from_slice(&h.value);
        }
        put_varint(out, len_i32(body.len()));
        out.extend_from_slice(&body);
    }

    let total = out.len() - start;
    let batch_length = i32::try_from(total - LOG_OVERHEAD).expect("batch length fits i32");
    out[start + 8..start + 12].copy_from_slice(&batch_length.to_be_bytes());
    let crc = crc32c::crc32c(&out[start + CRC_START..]);
    out[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
    BatchHeader {
        base_offset,
        total_len: total,
        last_offset_delta: last_delta,
        base_timestamp: base_ts,
        max_timestamp: max_ts,
        record_count: records.len() as u32,
    }
}

fn len_i32(n: usize) -> i32 {
    i32::try_from(n).expect("lengths are bounded by the max batch size")
}

/// Reads the length fields at the start of `buf` and returns the batch's total length, without checking the
/// CRC. `Incomplete` when `buf` is shorter than the fixed header.
pub fn peek_total_len(buf: &[u8]) -> Result<usize, FrameError> {
    if buf.len() < LOG_OVERHEAD {
        return Err(FrameError::Incomplete { needed: LOG_OVERHEAD, have: buf.len() });
    }
    let batch_length = i32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
    if batch_length < (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32 {
        return invalid(format!("batch length {batch_length} is smaller than a batch header"));
    }
    Ok(LOG_OVERHEAD + batch_length as usize)
}

/// Parses and verifies the batch at the start of `buf` (length, magic, CRC32C, header consistency).
/// Records are not decoded, but their bytes are covered by the CRC.
pub fn check_batch(buf: &[u8]) -> Result<BatchHeader, FrameError> {
    let total = peek_total_len(buf)?;
    if buf.len() < total {
        return Err(FrameError::Incomplete { needed: total, have: buf.len() });
    }
    let b = &buf[..total];
    // The leader epoch is outside the CRC; this engine always writes 0, so anything else is damage.
    if b[12..16] != [0; 4] {
        return invalid("non-zero partition leader epoch");
    }
    if b[16] as i8 != MAGIC {
        return invalid(format!("unsupported magic byte {}", b[16] as i8));
    }
    let stored_crc = u32::from_be_bytes(b[17..21].try_into().expect("4 bytes"));
    let crc = crc32c::crc32c(&b[CRC_START..]);
    if crc != stored_crc {
        return invalid(format!("CRC32C mismatch: stored {stored_crc:#010x}, computed {crc:#010x}"));
    }
    let base_offset = i64::from_be_bytes(b[0..8].try_into().expect("8 bytes"));
    let attributes = i16::from_be_bytes(b[21..23].try_into().expect("2 bytes"));
    let last_delta = i32::from_be_bytes(b[23..27].try_into().expect("4 bytes"));
    let base_timestamp = i64::from_be_bytes(b[27..35].try_into().expect("8 bytes"));
    let max_timestamp = i64::from_be_bytes(b[35..43].try_into().expect("8 bytes"));
    let count = i32::from_be_bytes(b[57..61].try_into().expect("4 bytes"));
    if base_offset < 0 {
        return invalid(format!("negative base offset {base_offset}"));
    }
    if attributes & 0x07 != 0 {
        return invalid("compressed batches are not stored by this engine");
    }
    if count <= 0 || last_delta != count - 1 {
        return invalid(format!("record count {count} does not match last offset delta {last_delta}"));
    }
    if (base_offset as u64).checked_add(last_delta as u64 + 1).is_none() {
        return invalid("offsets overflow");
    }
    Ok(BatchHeader {
        base_offset: base_offset as u64,
        total_len: total,
        last_offset_delta: last_delta as u32,
        base_timestamp,
        max_timestamp,
        record_count: count as u32,
    })
}

/// Decodes the records of a verified batch (`batch` = exactly the batch's bytes, from [`check_batch`]) whose
/// offset is `>= from_offset`, pushing them to `out`. Values and keys share `batch`'s memory (no copies).
pub fn decode_records(
    batch: &Bytes,
    header: &BatchHeader,
    from_offset: u64,
    out: &mut Vec<Record>,
) -> Result<(), FrameError> {
    let mut cur = Cursor { buf: batch, pos: BATCH_HEADER_LEN };
    for i in 0..header.record_count {
        let len = cur.varint()?;
        if len < 0 {
            return invalid(format!("record {i} has negative length"));
        }
        let end = cur.pos.checked_add(len as usize).filter(|&e| e <= batch.len());
        let Some(end) = end else {
            return invalid(format!("record {i} runs past the end of its batch"));
        };
        let _attributes = cur.byte()?;
        let ts_delta = cur.varlong()?;
        let offset_delta = cur.varint()?;
        if offset_delta != i as i32 {
            return invalid(format!("record {i} has offset delta {offset_delta}"));
        }
        let key = cur.nullable_bytes()?;
        let value = cur.nullable_bytes()?.unwrap_or_default();
        let header_count = cur.varint()?;
        if header_count < 0 || header_count as usize > len as usize {
            return invalid(format!("record {i} has an impossible header count {header_count}"));
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let name = cur.nullable_bytes()?.unwrap_or_default();
            let name = String::from_utf8(name.to_vec()).map_err(|_| {
                FrameError::Invalid(format!("record {i} has a header name that is not UTF-8"))
            })?;
            let value = cur.nullable_bytes()?.unwrap_or_default();
            headers.push(Header { name, value });
        }
        if cur.pos != end {
            return invalid(format!("record {i} length does not match its contents"));
        }
        let offset = header.base_offset + i as u64;
        if offset >= from_offset {
            out.push(Record {
                offset,
                timestamp_ms: header.base_timestamp.wrapping_add(ts_delta),
                key,
                value,
                headers,
            });
        }
    }
    if cur.pos != batch.len() {
        return invalid("trailing bytes after the last record");
    }
    Ok(())
}

/// Fuzz entry point: any bytes in, never a panic out.
pub fn decode_batch_for_fuzzing(data: &[u8]) -> Option<usize> {
    let header = check_batch(data).ok()?;
    let bytes = Bytes::copy_from_slice(&data[..header.total_len]);
    let mut out = Vec::new();
    decode_records(&bytes, &header, 0, &mut out).ok()?;
    Some(out.len())
}

struct Cursor<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, FrameError> {
        let b =
            *self.buf.get(self.pos).ok_or_else(|| FrameError::Invalid("unexpected end of batch".into()))?;
        self.pos += 1;
        Ok(b)
    }

    fn unsigned(&mut self, max_bytes: u32) -> Result<u64, FrameError> {
        let mut value = 0u64;
        for i in 0..max_bytes {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        invalid("varint too long")
    }

    fn varint(&mut self) -> Result<i32, FrameError> {
        let v = self.unsigned(5)? as u32;
        Ok(((v >> 1) as i32) ^ -((v & 1) as i32))
    }

    fn varlong(&mut self) -> Result<i64, FrameError> {
        let v = self.unsigned(10)?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn nullable_bytes(&mut self) -> Result<Option<Bytes>, FrameError> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let end = self.pos.checked_add(len as usize).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return invalid("field runs past the end of its batch");
        };
        let out = self.buf.slice(self.pos..end);
        self.pos = end;
        Ok(Some(out))
    }
}

fn put_unsigned(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_unsigned(out, u64::from(((v << 1) ^ (v >> 31)) as u32));
}

fn put_varlong(out: &mut Vec<u8>, v: i64) {
    put_unsigned(out, ((v << 1) ^ (v >> 63)) as u64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn to_bytes(buf: &[u8]) -> Bytes {
        Bytes::copy_from_slice(buf)
    }

    fn rec(key: Option<&[u8]>, value: &[u8], ts: Option<i64>, headers: &[(&str, &[u8])]) -> NewRecord {
        NewRecord {
            timestamp_ms: ts,
            key: key.map(Bytes::copy_from_slice),
            value: Bytes::copy_from_slice(value),
            headers: headers
                .iter()
                .map(|(n, v)| Header { name: (*n).to_owned(), value: Bytes::copy_from_slice(v) })
                .collect(),
        }
    }

    fn roundtrip(base: u64, records: &[NewRecord], now: i64) -> Vec<Record> {
        let mut buf = Vec::new();
        let h = encode_batch(base, records, now, &mut buf);
        assert_eq!(h.total_len, buf.len());
        let checked = check_batch(&buf).expect("valid batch");
        assert_eq!(checked, h);
        let mut out = Vec::new();
        decode_records(&to_bytes(&buf), &checked, 0, &mut out).expect("decodes");
        out
    }

    #[test]
    fn encoded_batch_decodes_to_the_same_records_with_dense_offsets() {
        let records = vec![
            rec(Some(b"k1"), b"{\"a\":1}", Some(1_000), &[("h", b"v")]),
            rec(None, b"", None, &[]),
            rec(Some(b""), b"x", Some(500), &[]),
        ];
        let out = roundtrip(41, &records, 2_000);
        assert_eq!(out.len(), 3);
        assert_eq!(out.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![41, 42, 43]);
        assert_eq!(out[0].timestamp_ms, 1_000);
        assert_eq!(out[1].timestamp_ms, 2_000);
        assert_eq!(out[2].timestamp_ms, 500);
        assert_eq!(out[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(out[1].key, None);
        assert_eq!(out[2].key.as_deref(), Some(&b""[..]));
        assert_eq!(out[0].headers[0].name, "h");
    }

    #[test]
    fn header_is_kafka_record_batch_v2() {
        let mut buf = Vec::new();
        encode_batch(7, &[rec(None, b"v", Some(5), &[])], 5, &mut buf);
        assert_eq!(i64::from_be_bytes(buf[0..8].try_into().unwrap()), 7);
        assert_eq!(i32::from_be_bytes(buf[8..12].try_into().unwrap()) as usize, buf.len() - 12);
        assert_eq!(buf[16], 2, "magic");
        assert_eq!(i32::from_be_bytes(buf[57..61].try_into().unwrap()), 1, "record count");
    }

    #[test]
    fn flipped_byte_is_detected() {
        // Base offset (bytes 0..8) is outside the CRC; the log checks it against the offset sequence instead.
        let mut buf = Vec::new();
        encode_batch(0, &[rec(Some(b"k"), b"hello world", None, &[])], 1, &mut buf);
        for i in 12..buf.len() {
            if (17..21).contains(&i) {
                continue;
            }
            let mut bad = buf.clone();
            bad[i] ^= 0x01;
            assert!(check_batch(&bad).is_err(), "flip at {i} undetected");
        }
    }

    #[test]
    fn truncated_batch_is_incomplete() {
        let mut buf = Vec::new();
        encode_batch(0, &[rec(None, b"hello", None, &[])], 1, &mut buf);
        for cut in 0..buf.len() {
            assert!(matches!(check_batch(&buf[..cut]), Err(FrameError::Incomplete { .. })), "cut {cut}");
        }
    }

    #[test]
    fn decode_from_offset_skips_earlier_records() {
        let records: Vec<_> = (0..5).map(|i| rec(None, format!("{i}").as_bytes(), None, &[])).collect();
        let mut buf = Vec::new();
        let h = encode_batch(10, &records, 1, &mut buf);
        let mut out = Vec::new();
        decode_records(&to_bytes(&buf), &h, 13, &mut out).unwrap();
        assert_eq!(out.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![13, 14]);
    }

    proptest! {
        #[test]
        fn any_records_roundtrip(
            base in 0u64..(1u64 << 50),
            now in any::<i64>().prop_map(|t| t / 4),
            recs in prop::collection::vec(
                (prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
                 prop::collection::vec(any::<u8>(), 0..300),
                 prop::option::of(-1_000_000i64..1_000_000),
                 prop::collection::vec(("[a-z]{0,8}", prop::collection::vec(any::<u8>(), 0..20)), 0..3)),
                1..20),
        ) {
            let records: Vec<NewRecord> = recs.iter().map(|(k, v, ts, hs)| NewRecord {
                timestamp_ms: ts.map(|d| now.wrapping_add(d)),
                key: k.as_ref().map(|k| Bytes::copy_from_slice(k)),
                value: Bytes::copy_from_slice(v),
                headers: hs.iter().map(|(n, v)| Header { name: n.clone(), value: Bytes::copy_from_slice(v) }).collect(),
            }).collect();
            let out = roundtrip(base, &records, now);
            prop_assert_eq!(out.len(), records.len());
            for (i, (o, r)) in out.iter().zip(&records).enumerate() {
                prop_assert_eq!(o.offset, base + i as u64);
                prop_assert_eq!(o.timestamp_ms, r.timestamp_ms.unwrap_or(now));
                prop_assert_eq!(&o.key, &r.key);
                prop_assert_eq!(&o.value, &r.value);
                prop_assert_eq!(&o.headers, &r.headers);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(data in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_batch_for_fuzzing(&data);
        }

        #[test]
        fn arbitrary_record_bytes_with_a_valid_crc_never_panic(
            body in prop::collection::vec(any::<u8>(), 0..256), count in 1i32..5,
        ) {
            // A hostile batch whose CRC is right but whose records are garbage must be refused, not crash.
            let mut buf = Vec::new();
            encode_batch(0, &[rec(None, b"x", Some(1), &[])], 1, &mut buf);
            buf.truncate(BATCH_HEADER_LEN);
            buf[23..27].copy_from_slice(&(count - 1).to_be_bytes());
            buf[57..61].copy_from_slice(&count.to_be_bytes());
            buf.extend_from_slice(&body);
            let len = (buf.len() - LOG_OVERHEAD) as i32;
            buf[8..12].copy_from_slice(&len.to_be_bytes());
            let crc = crc32c::crc32c(&buf[CRC_START..]);
            buf[17..21].copy_from_slice(&crc.to_be_bytes());
            let _ = decode_batch_for_fuzzing(&buf);
        }
    }
}
