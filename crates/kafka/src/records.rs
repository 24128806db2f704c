//! Record batches: decoding what producers send (compressed or not) into log records, and encoding log
//! records for consumers.
//!
//! Decoding is bounded before `kafka-protocol`'s `RecordBatchDecoder` sees anything: its built-in
//! decompressors inflate without limit and it reserves `record_count` records and `header_count` headers
//! straight off the wire, so a small malicious batch could exhaust memory. Here each batch's header is read
//! first, decompression goes through [`Budget`]-limited readers, and the decompressed records are walked once
//! (no allocation) to prove every count is backed by bytes before the crate's decoder runs.

use std::cell::Cell;
use std::io::Read;

use bytes::{Bytes, BytesMut};
use esgf_events_engine::{Header, NewRecord, Record};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record as KafkaRecord, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
    TimestampType,
};

/// Size of a v2 record batch header, up to and including the record count.
const BATCH_HEADER: usize = 61;
/// The smallest possible encoded record: seven one-byte fields.
const MIN_RECORD: usize = 7;
/// Frames used by xerial snappy (Kafka's Java clients); raw snappy is accepted too.
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    #[error("record batch is truncated or malformed: {0}")]
    Malformed(String),
    #[error("record batch magic {0} is not supported (only v2 record batches are)")]
    UnsupportedMagic(i8),
    #[error("transactional and control batches are not supported")]
    Transactional,
    #[error("records exceed the limit of {0} decompressed bytes per request")]
    TooLarge(usize),
    #[error("records exceed the limit of {0} records per request")]
    TooManyRecords(usize),
}

/// What one produce request may decode, in total over all its batches.
#[derive(Debug)]
pub struct Budget {
    bytes: Cell<usize>,
    records: Cell<usize>,
    max_bytes: usize,
    max_records: usize,
}

impl Budget {
    pub fn new(max_bytes: usize, max_records: usize) -> Self {
        Budget { bytes: Cell::new(max_bytes), records: Cell::new(max_records), max_bytes, max_records }
    }

    fn spend_bytes(&self, n: usize) -> Result<(), RecordsError> {
        let left = self.bytes.get().checked_sub(n).ok_or(RecordsError::TooLarge(self.max_bytes))?;
        self.bytes.set(left);
        Ok(())
    }

    fn spend_records(&self, n: usize) -> Result<(), RecordsError> {
        let left = self.records.get().checked_sub(n).ok_or(RecordsError::TooManyRecords(self.max_records))?;
        self.records.set(left);
        Ok(())
    }
}

/// One producer batch, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// -1 when the producer is not idempotent.
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records: Vec<NewRecord>,
}

impl Batch {
    /// Sequence number of the batch's last record (sequences wrap at `i32::MAX`, as Kafka's do).
    pub fn last_sequence(&self) -> i32 {
        let span = i32::try_from(self.records.len().saturating_sub(1)).unwrap_or(i32::MAX);
        if self.base_sequence > i32::MAX - span {
            span - (i32::MAX - self.base_sequence) - 1
        } else {
            self.base_sequence + span
        }
    }
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(raw)
}

/// Decodes every record batch of one partition's `records` field.
pub fn decode_batches(data: &Bytes, budget: &Budget) -> Result<Vec<Batch>, RecordsError> {
    let mut batches = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let rest = &data[at..];
        if rest.len() < BATCH_HEADER {
            return Err(RecordsError::Malformed(format!(
                "{} bytes left, a batch header takes 61",
                rest.len()
            )));
        }
        let length = be_i32(rest, 8);
        let total = usize::try_from(length)
            .ok()
            .and_then(|l| l.checked_add(12))
            .filter(|&t| t >= BATCH_HEADER && t <= rest.len())
            .ok_or_else(|| RecordsError::Malformed(format!("batch length {length}")))?;
        let magic = rest[16] as i8;
        if magic != 2 {
            return Err(RecordsError::UnsupportedMagic(magic));
        }
        let attributes = be_i16(rest, 21);
        if attributes & (0b11 << 4) != 0 {
            return Err(RecordsError::Transactional);
        }
        let record_count = usize::try_from(be_i32(rest, 57))
            .map_err(|_| RecordsError::Malformed("negative record count".to_owned()))?;
        budget.spend_records(record_count)?;
        let producer_id = be_i64(rest, 43);
        let producer_epoch = be_i16(rest, 51);
        let base_sequence = be_i32(rest, 53);

        let mut batch_bytes = data.slice(at..at + total);
        // The crate wraps the callback's error in its own type: keep ours aside to report it as it is.
        let failure = Cell::new(None);
        let decompress = |buf: &mut Bytes, compression: Compression| {
            let checked = inflate(buf, compression, budget).and_then(|out| {
                check_records(&out, record_count)?;
                Ok(out)
            });
            if let Err(e) = &checked {
                failure.set(Some(e.clone()));
            }
            Ok(checked?)
        };
        let set = RecordBatchDecoder::decode_with_custom_compression(&mut batch_bytes, Some(decompress))
            .map_err(|e| failure.take().unwrap_or_else(|| RecordsError::Malformed(format!("{e:#}"))))?;
        let records = set.records.into_iter().map(to_new_record).collect();
        batches.push(Batch { producer_id, producer_epoch, base_sequence, records });
        at += total;
    }
    Ok(batches)
}

fn to_new_record(record: KafkaRecord) -> NewRecord {
    NewRecord {
        // A negative timestamp is Kafka's "none": let the log stamp it.
        timestamp_ms: (record.timestamp >= 0).then_some(record.timestamp),
        key: record.key,
        // The log has no null value; a tombstone is stored as an empty value.
        value: record.value.unwrap_or_default(),
        headers: record
            .headers
            .into_iter()
            .map(|(name, value)| Header { name: name.as_str().to_owned(), value: value.unwrap_or_default() })
            .collect(),
    }
}

/// Decompresses `buf` within the budget. Uncompressed data is returned as is (and counted too).
fn inflate(buf: &mut Bytes, compression: Compression, budget: &Budget) -> Result<Bytes, RecordsError> {
    let input = std::mem::take(buf);
    let limit = budget.bytes.get();
    let out = match compression {
        Compression::None => input,
        Compression::Gzip => read_bounded(flate2::read::MultiGzDecoder::new(&input[..]), limit, budget)?,
        Compression::Lz4 => {
            let decoder =
                lz4::Decoder::new(&input[..]).map_err(|e| RecordsError::Malformed(format!("lz4: {e}")))?;
            read_bounded(decoder, limit, budget)?
        }
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::new(&input[..])
                .map_err(|e| RecordsError::Malformed(format!("zstd: {e}")))?;
            // Bounds the window the decoder allocates, whatever the frame header asks for.
            decoder.window_log_max(24).map_err(|e| RecordsError::Malformed(format!("zstd: {e}")))?;
            read_bounded(decoder, limit, budget)?
        }
        Compression::Snappy => snappy(&input, limit, budget)?,
    };
    if compression == Compression::None {
        budget.spend_bytes(out.len())?;
    }
    Ok(out)
}

fn read_bounded(reader: impl Read, limit: usize, budget: &Budget) -> Result<Bytes, RecordsError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| RecordsError::Malformed(format!("decompression failed: {e}")))?;
    budget.spend_bytes(out.len())?;
    Ok(Bytes::from(out))
}

fn snappy(input: &[u8], limit: usize, budget: &Budget) -> Result<Bytes, RecordsError> {
    let block = |block: &[u8], out: &mut Vec<u8>| -> Result<(), RecordsError> {
        let len =
            snap::raw::decompress_len(block).map_err(|e| RecordsError::Malformed(format!("snappy: {e}")))?;
        if out.len() + len > limit {
            return Err(RecordsError::TooLarge(budget.max_bytes));
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(block, &mut out[start..])
            .map_err(|e| RecordsError::Malformed(format!("snappy: {e}")))?;
        Ok(())
    };
    let mut out = Vec::new();
    if input.len() >= 16 && input.starts_with(XERIAL_MAGIC) {
        let mut rest = &input[16..];
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(RecordsError::Malformed("snappy: truncated block length".to_owned()));
            }
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let body = rest
                .get(4..4 + len)
                .ok_or_else(|| RecordsError::Malformed("snappy: truncated block".into()))?;
            block(body, &mut out)?;
            rest = &rest[4 + len..];
        }
    } else {
        block(input, &mut out)?;
    }
    budget.spend_bytes(out.len())?;
    Ok(Bytes::from(out))
}

/// Walks `count` records in `data` without allocating; every length and count must be backed by bytes.
fn check_records(data: &[u8], count: usize) -> Result<(), RecordsError> {
    let bad = |what: &str| RecordsError::Malformed(format!("record {what}"));
    if count > data.len() / MIN_RECORD {
        return Err(bad("count exceeds the batch's bytes"));
    }
    let mut rest = data;
    for _ in 0..count {
        let len = usize::try_from(varint(&mut rest)?).map_err(|_| bad("length is negative"))?;
        if len > rest.len() {
            return Err(bad("length exceeds the batch"));
        }
        let (mut record, tail) = rest.split_at(len);
        rest = tail;
        take(&mut record, 1)?; // attributes
        varint(&mut record)?; // timestamp delta
        varint(&mut record)?; // offset delta
        sized(&mut record)?; // key
        sized(&mut record)?; // value
        let headers = usize::try_from(varint(&mut record)?).map_err(|_| bad("header count is negative"))?;
        if headers > record.len() / 2 {
            return Err(bad("header count exceeds the record's bytes"));
        }
        for _ in 0..headers {
            let key = varint(&mut record)?;
            if key < 0 {
                return Err(bad("header key is null"));
            }
            take(&mut record, key as usize)?;
            sized(&mut record)?;
        }
        if !record.is_empty() {
            return Err(bad("has trailing bytes"));
        }
    }
    if !rest.is_empty() {
        return Err(bad("batch has bytes after its last record"));
    }
    Ok(())
}

fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], RecordsError> {
    if n > buf.len() {
        return Err(RecordsError::Malformed("record is truncated".to_owned()));
    }
    let (head, tail) = buf.split_at(n);
    *buf = tail;
    Ok(head)
}

/// A length-prefixed field; -1 is null.
fn sized(buf: &mut &[u8]) -> Result<(), RecordsError> {
    match varint(buf)? {
        -1 => Ok(()),
        n if n < 0 => Err(RecordsError::Malformed("negative field length".to_owned())),
        n => take(buf, n as usize).map(drop),
    }
}

/// A zig-zag varint of up to 64 bits.
fn varint(buf: &mut &[u8]) -> Result<i64, RecordsError> {
    let mut raw: u64 = 0;
    for i in 0..10 {
        let b = take(buf, 1)?[0];
        raw |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    Err(RecordsError::Malformed("varint too long".to_owned()))
}

/// Encodes log records as one uncompressed v2 batch (appended to `out`).
pub fn encode_records(records: &[Record], out: &mut BytesMut) -> Result<(), String> {
    let Some(first) = records.first() else { return Ok(()) };
    let converted: Vec<KafkaRecord> = records
        .iter()
        .map(|r| KafkaRecord {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: r.offset as i64,
            // The encoder starts a new batch whenever offset - sequence changes; keeping it constant yields one
            // batch, whose base sequence comes out as -1 (none), as for any non-idempotent batch.
            sequence: ((r.offset - first.offset) as i32).wrapping_sub(1),
            timestamp: r.timestamp_ms,
            key: r.key.clone(),
            value: Some(r.value.clone()),
            headers: r
                .headers
                .iter()
                .map(|h| (StrBytes::from_string(h.name.clone()), Some(h.value.clone())))
                .collect::<IndexMap<_, _>>(),
        })
        .collect();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(out, converted.iter(), &options).map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_record(offset: u64, value: &'static [u8]) -> Record {
        Record {
            offset,
            timestamp_ms: 1_700_000_000_000 + offset as i64,
            key: Some(Bytes::from_static(b"k")),
            value: Bytes::from_static(value),
            headers: vec![Header { name: "h".into(), value: Bytes::from_static(b"v") }],
        }
    }

    fn producer_batch(compression: Compression, values: &[&'static [u8]]) -> Bytes {
        let records: Vec<KafkaRecord> = values
            .iter()
            .enumerate()
            .map(|(i, v)| KafkaRecord {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: 9,
                producer_epoch: 0,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: 5 + i as i32,
                timestamp: 1_000 + i as i64,
                key: None,
                value: Some(Bytes::from_static(v)),
                headers: IndexMap::new(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records.iter(),
            &RecordEncodeOptions { version: 2, compression },
        )
        .unwrap();
        buf.freeze()
    }

    #[test]
    fn log_records_encode_as_one_batch_that_decodes_back() {
        let records = vec![log_record(10, b"a"), log_record(11, b"bb"), log_record(12, b"ccc")];
        let mut buf = BytesMut::new();
        encode_records(&records, &mut buf).unwrap();
        let mut bytes = buf.freeze();
        let sets = RecordBatchDecoder::decode_all(&mut bytes).unwrap();
        assert_eq!(sets.len(), 1);
        let decoded = &sets[0].records;
        assert_eq!(decoded.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![10, 11, 12]);
        assert_eq!(decoded[2].value.as_deref(), Some(&b"ccc"[..]));
        assert_eq!(decoded[0].timestamp, 1_700_000_000_010);
        assert_eq!(decoded[0].producer_id, -1);
    }

    #[test]
    fn producer_batches_decode_with_every_codec() {
        for compression in
            [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd]
        {
            let data = producer_batch(compression, &[b"one", b"two"]);
            let batches = decode_batches(&data, &Budget::new(1 << 20, 1000)).unwrap();
            assert_eq!(batches.len(), 1, "{compression:?}");
            let batch = &batches[0];
            assert_eq!((batch.producer_id, batch.base_sequence, batch.last_sequence()), (9, 5, 6));
            assert_eq!(batch.records[1].value, Bytes::from_static(b"two"));
            assert_eq!(batch.records[1].timestamp_ms, Some(1_001));
        }
    }

    #[test]
    fn decompression_beyond_the_budget_is_refused() {
        let big: &'static [u8] = Box::leak(vec![b'x'; 100_000].into_boxed_slice());
        for compression in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let data = producer_batch(compression, &[big]);
            assert!(data.len() < 10_000, "{compression:?} compresses");
            let result = decode_batches(&data, &Budget::new(50_000, 1000));
            assert!(matches!(result, Err(RecordsError::TooLarge(50_000))), "{compression:?}: {result:?}");
        }
    }

    #[test]
    fn record_count_beyond_the_bytes_is_refused_before_allocating() {
        let mut raw = BytesMut::from(&producer_batch(Compression::None, &[b"v"])[..]);
        raw[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        // Fix the CRC so only the count is wrong.
        let crc = crc32c_of(&raw[21..]);
        raw[17..21].copy_from_slice(&crc.to_be_bytes());
        let result = decode_batches(&raw.freeze(), &Budget::new(1 << 20, usize::MAX));
        assert!(matches!(result, Err(RecordsError::Malformed(_))), "{result:?}");
    }

    #[test]
    fn huge_header_count_is_refused() {
        // One record: len, attrs, ts delta, offset delta, key null, value len 0, header count 2^30.
        let mut record = vec![0u8, 0, 0, -1i8 as u8, 0];
        record.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x08]);
        let mut data = vec![(record.len() as u8) << 1];
        data.extend_from_slice(&record);
        assert!(check_records(&data, 1).is_err());
    }

    #[test]
    fn transactional_batches_are_refused() {
        let mut raw = BytesMut::from(&producer_batch(Compression::None, &[b"v"])[..]);
        raw[22] |= 1 << 4;
        assert_eq!(
            decode_batches(&raw.freeze(), &Budget::new(1 << 20, 10)),
            Err(RecordsError::Transactional)
        );
    }

    #[test]
    fn last_sequence_wraps_like_kafka() {
        let batch = |base, n| Batch {
            producer_id: 1,
            producer_epoch: 0,
            base_sequence: base,
            records: vec![NewRecord::from_value(Bytes::new()); n],
        };
        assert_eq!(batch(0, 1).last_sequence(), 0);
        assert_eq!(batch(5, 3).last_sequence(), 7);
        assert_eq!(batch(i32::MAX, 2).last_sequence(), 0);
        assert_eq!(batch(i32::MAX - 1, 4).last_sequence(), 1);
    }

    fn crc32c_of(data: &[u8]) -> u32 {
        // Castagnoli, bitwise: test-only, so speed does not matter.
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82f6_3b78 } else { crc >> 1 };
            }
        }
        !crc
    }
}
