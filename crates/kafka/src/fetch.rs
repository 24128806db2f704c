//! Fetch (with long polling) and ListOffsets.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use esgf_events_engine::ReadLimits;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::*;
use tokio::task::JoinSet;
use tracing::warn;

use crate::broker::{Broker, Session, partition_error};
use crate::errors::{self, NONE, code};
use crate::records;
use esgf_events_auth::Action;

/// Records one partition read may return (the byte limits usually bind first).
const MAX_RECORDS_PER_PARTITION: usize = 10_000;
/// Largest fetch response built, whatever the client asks for (Kafka's broker-side fetch.max.bytes).
const MAX_FETCH_RESPONSE: usize = 64 << 20;

/// One partition of a fetch, as answered so far.
struct Slot {
    topic_index: usize,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    data: fetch_response::PartitionData,
    /// Whether a later pass may still find records for it.
    pending: bool,
}

impl Broker {
    pub(crate) async fn fetch(
        &self,
        session: &mut Session,
        _version: i16,
        request: FetchRequest,
    ) -> FetchResponse {
        let mut response = FetchResponse::default();
        // This endpoint never creates incremental fetch sessions (session id 0 in every answer), so a client
        // naming one is out of step.
        if request.session_id != 0 {
            response.error_code = code(ResponseError::FetchSessionIdNotFound);
            return response;
        }
        let max_wait = Duration::from_millis(u64::try_from(request.max_wait_ms).unwrap_or(0))
            .min(self.config().max_fetch_wait);
        let deadline = Instant::now() + max_wait;
        let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
        let max_bytes = usize::try_from(request.max_bytes).unwrap_or(0).clamp(1, MAX_FETCH_RESPONSE);

        let mut slots = Vec::new();
        for (topic_index, topic) in request.topics.iter().enumerate() {
            let mut topic_response = fetch_response::FetchableTopicResponse::default();
            topic_response.topic = topic.topic.clone();
            response.responses.push(topic_response);
            let allowed = self.may(session, Action::Read { topic: &topic.topic.0 });
            for p in &topic.partitions {
                let mut data = fetch_response::PartitionData::default();
                data.partition_index = p.partition;
                data.high_watermark = -1;
                data.last_stable_offset = -1;
                data.log_start_offset = -1;
                data.aborted_transactions = Some(Vec::new());
                if !allowed {
                    data.error_code = errors::topic_denied();
                }
                slots.push(Slot {
                    topic_index,
                    partition: p.partition,
                    offset: p.fetch_offset,
                    max_bytes: usize::try_from(p.partition_max_bytes).unwrap_or(0).min(MAX_FETCH_RESPONSE),
                    data,
                    pending: allowed,
                });
            }
        }

        loop {
            let gathered = self.fetch_pass(&request.topics, &mut slots, max_bytes).await;
            let errors = slots.iter().any(|s| s.data.error_code != NONE);
            let now = Instant::now();
            if min_bytes == 0
                || gathered >= min_bytes
                || errors
                || now >= deadline
                || !slots.iter().any(|s| s.pending)
            {
                break;
            }
            if !self.wait_for_any(&request.topics, &slots, deadline - now).await {
                // Timed out (or nothing to wait on): answer with what there is, i.e. nothing.
                self.fetch_pass(&request.topics, &mut slots, max_bytes).await;
                break;
            }
        }
        for slot in slots {
            response.responses[slot.topic_index].partitions.push(slot.data);
        }
        response
    }

    /// Reads every pending slot, within the response's byte budget. Returns the record bytes gathered in total.
    async fn fetch_pass(
        &self,
        topics: &[fetch_request::FetchTopic],
        slots: &mut [Slot],
        max_bytes: usize,
    ) -> usize {
        let mut total = slots.iter().map(|s| s.data.records.as_ref().map_or(0, |r| r.len())).sum::<usize>();
        for slot in slots.iter_mut().filter(|s| s.pending) {
            let topic = topics[slot.topic_index].topic.0.as_str();
            let Ok(partition) = u32::try_from(slot.partition) else {
                slot.data.error_code = code(ResponseError::UnknownTopicOrPartition);
                slot.pending = false;
                continue;
            };
            let Ok(offset) = u64::try_from(slot.offset) else {
                slot.data.error_code = code(ResponseError::OffsetOutOfRange);
                slot.pending = false;
                continue;
            };
            // Kafka returns at least one batch for the first partition with data, even above the limits, so a
            // large record never blocks a consumer; the log's read does the same for a positive limit.
            let budget = slot.max_bytes.min(max_bytes.saturating_sub(total));
            if budget == 0 && total > 0 {
                self.fill_offsets(topic, partition, slot).await;
                continue;
            }
            let limits = ReadLimits { max_records: MAX_RECORDS_PER_PARTITION, max_bytes: budget.max(1) };
            match self.ctx.store.read(topic, partition, offset, limits).await {
                Ok(read) => {
                    slot.data.high_watermark = read.latest as i64;
                    slot.data.last_stable_offset = read.latest as i64;
                    slot.data.log_start_offset = read.earliest as i64;
                    if read.records.is_empty() {
                        continue;
                    }
                    let mut buf = BytesMut::new();
                    match records::encode_records(&read.records, &mut buf) {
                        Ok(()) => {
                            let bytes = read.records.iter().map(|r| r.value.len() as u64).sum();
                            esgf_events_ops::metrics::read(topic, "kafka", read.records.len() as u64, bytes);
                            total += buf.len();
                            slot.data.records = Some(buf.freeze());
                            slot.pending = false;
                        }
                        Err(e) => {
                            warn!(topic, partition, offset, error = %e, "encoding fetched records failed");
                            slot.data.error_code = code(ResponseError::KafkaStorageError);
                            slot.pending = false;
                        }
                    }
                }
                Err(e) => {
                    if let esgf_events_engine::StoreError::OffsetOutOfRange { earliest, latest, .. } = &e {
                        slot.data.high_watermark = *latest as i64;
                        slot.data.last_stable_offset = *latest as i64;
                        slot.data.log_start_offset = *earliest as i64;
                    }
                    slot.data.error_code = partition_error(&e);
                    slot.pending = false;
                }
            }
        }
        total
    }

    async fn fill_offsets(&self, topic: &str, partition: u32, slot: &mut Slot) {
        if let Ok(offsets) = self.ctx.store.offsets(topic, partition).await {
            slot.data.high_watermark = offsets.latest as i64;
            slot.data.last_stable_offset = offsets.latest as i64;
            slot.data.log_start_offset = offsets.earliest as i64;
        }
    }

    /// Waits until any pending partition has a record at its fetch offset, or `timeout` passes.
    async fn wait_for_any(
        &self,
        topics: &[fetch_request::FetchTopic],
        slots: &[Slot],
        timeout: Duration,
    ) -> bool {
        let mut waits = JoinSet::new();
        for slot in slots.iter().filter(|s| s.pending) {
            let (Ok(partition), Ok(offset)) = (u32::try_from(slot.partition), u64::try_from(slot.offset))
            else {
                continue;
            };
            let store = std::sync::Arc::clone(&self.ctx.store);
            let topic = topics[slot.topic_index].topic.0.to_string();
            waits.spawn(async move { store.wait_for(&topic, partition, offset, timeout).await });
        }
        let first_ready = async {
            while let Some(done) = waits.join_next().await {
                if matches!(done, Ok(Ok(true))) {
                    return true;
                }
            }
            false
        };
        let ready = tokio::select! {
            ready = tokio::time::timeout(timeout, first_ready) => ready.unwrap_or(false),
            () = self.stopped() => false,
        };
        waits.abort_all();
        ready
    }

    pub(crate) async fn list_offsets(
        &self,
        session: &mut Session,
        version: i16,
        request: ListOffsetsRequest,
    ) -> ListOffsetsResponse {
        let _ = version;
        let mut response = ListOffsetsResponse::default();
        for topic in request.topics {
            let mut topic_response = list_offsets_response::ListOffsetsTopicResponse::default();
            topic_response.name = topic.name.clone();
            for p in topic.partitions {
                let mut answer = list_offsets_response::ListOffsetsPartitionResponse::default();
                answer.partition_index = p.partition_index;
                answer.timestamp = -1;
                answer.offset = -1;
                let answered = if self.may_describe(session, &topic.name.0) {
                    self.offset_at(&topic.name.0, p.partition_index, p.timestamp).await
                } else {
                    Err(errors::topic_denied())
                };
                match answered {
                    Ok((offset, timestamp)) => {
                        answer.offset = offset;
                        answer.timestamp = timestamp;
                    }
                    Err(error) => answer.error_code = error,
                }
                topic_response.partitions.push(answer);
            }
            response.topics.push(topic_response);
        }
        response
    }

    /// ListOffsets for one partition: -2 earliest, -1 latest, else the first record at or after a timestamp.
    async fn offset_at(&self, topic: &str, partition: i32, timestamp: i64) -> Result<(i64, i64), i16> {
        let partition = u32::try_from(partition).map_err(|_| code(ResponseError::UnknownTopicOrPartition))?;
        let offsets = self.ctx.store.offsets(topic, partition).await.map_err(|e| partition_error(&e))?;
        match timestamp {
            -2 => Ok((offsets.earliest as i64, -1)),
            -1 => Ok((offsets.latest as i64, -1)),
            ts if ts < 0 => Err(code(ResponseError::InvalidRequest)),
            ts => match self.ctx.store.offset_for_timestamp(topic, partition, ts).await {
                Ok(Some(offset)) => {
                    let limits = ReadLimits { max_records: 1, max_bytes: 1 };
                    let stamp = match self.ctx.store.read(topic, partition, offset, limits).await {
                        Ok(read) => read.records.first().map_or(ts, |r| r.timestamp_ms),
                        Err(_) => ts,
                    };
                    Ok((offset as i64, stamp))
                }
                Ok(None) => Ok((-1, -1)),
                Err(e) => Err(partition_error(&e)),
            },
        }
    }
}
