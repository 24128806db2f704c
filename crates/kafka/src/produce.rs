//! Produce and InitProducerId: record batches in, one atomic append per partition, with Kafka's idempotent
//! producer semantics (a retried batch is acknowledged with its original offsets and not appended twice).
//!
//! Producer state (epoch and the last five batches per partition, as Kafka keeps) lives in memory only. After a
//! restart of the service, a producer id it no longer knows is adopted as it is (any sequence accepted for its
//! first batch per partition) rather than failed: a retry that straddles the restart could then be appended
//! twice, which is the price of not persisting producer state.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use esgf_events_auth::{Action, Role};
use esgf_events_engine::NewRecord;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::*;
use tracing::{debug, warn};

use crate::broker::{Broker, Session};
use crate::errors::{self, NONE, code};
use crate::records::{self, Batch, Budget, RecordsError};

/// Batches remembered per producer and partition for duplicate detection (Kafka's number too).
const REMEMBERED_BATCHES: usize = 5;
/// Producers whose state is kept; the least recently used are forgotten beyond this.
const MAX_PRODUCERS: usize = 50_000;
/// Records one produce request may carry.
const MAX_RECORDS_PER_REQUEST: usize = 1_000_000;

#[derive(Debug, Clone, Copy)]
struct BatchMeta {
    first_seq: i32,
    last_seq: i32,
    base_offset: u64,
}

#[derive(Debug, Default)]
struct PartitionSeqs {
    recent: VecDeque<BatchMeta>,
}

#[derive(Debug)]
struct ProducerState {
    epoch: i16,
    /// Not allocated by this process (or forgotten): the first batch of each partition starts anywhere.
    adopted: bool,
    partitions: HashMap<(String, u32), PartitionSeqs>,
    last_used: Instant,
}

/// Idempotent producers known to this process.
pub(crate) struct Producers {
    next_id: AtomicI64,
    states: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<ProducerState>>>>,
}

/// What the sequence check decided for one partition's batches.
#[derive(Debug, PartialEq, Eq)]
enum SeqCheck {
    Append,
    /// Already appended: answer with the original base offset.
    Duplicate(u64),
    Error(i16),
}

impl Producers {
    pub(crate) fn new() -> Self {
        // Ids start from the clock so a restarted service does not hand out the ids of the previous run.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Producers { next_id: AtomicI64::new(now_ms.saturating_mul(1000)), states: Mutex::new(HashMap::new()) }
    }

    fn lock_states(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Arc<tokio::sync::Mutex<ProducerState>>>> {
        self.states.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn allocate(&self) -> (i64, i16) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state =
            ProducerState { epoch: 0, adopted: false, partitions: HashMap::new(), last_used: Instant::now() };
        let mut states = self.lock_states();
        evict_if_full(&mut states);
        states.insert(id, Arc::new(tokio::sync::Mutex::new(state)));
        (id, 0)
    }

    /// KIP-360: a producer re-initialising with its current id and epoch gets the next epoch.
    fn bump(&self, id: i64, epoch: i16) -> Result<(i64, i16), i16> {
        let states = self.lock_states();
        let Some(state) = states.get(&id) else { return Err(code(ResponseError::InvalidProducerIdMapping)) };
        let Ok(mut state) = state.try_lock() else { return Err(code(ResponseError::ConcurrentTransactions)) };
        if state.epoch != epoch {
            return Err(code(ResponseError::InvalidProducerEpoch));
        }
        state.epoch = epoch.checked_add(1).ok_or(code(ResponseError::InvalidProducerEpoch))?;
        state.partitions.clear();
        Ok((id, state.epoch))
    }

    fn state(&self, id: i64, epoch: i16) -> Arc<tokio::sync::Mutex<ProducerState>> {
        let mut states = self.lock_states();
        if let Some(state) = states.get(&id) {
            return Arc::clone(state);
        }
        evict_if_full(&mut states);
        let state =
            ProducerState { epoch, adopted: true, partitions: HashMap::new(), last_used: Instant::now() };
        let state = Arc::new(tokio::sync::Mutex::new(state));
        states.insert(id, Arc::clone(&state));
        state
    }
}

fn evict_if_full(states: &mut HashMap<i64, Arc<tokio::sync::Mutex<ProducerState>>>) {
    if states.len() < MAX_PRODUCERS {
        return;
    }
    let mut ages: Vec<(Instant, i64)> =
        states.iter().filter_map(|(id, s)| s.try_lock().ok().map(|s| (s.last_used, *id))).collect();
    ages.sort_unstable();
    for (_, id) in ages.iter().take(MAX_PRODUCERS / 10) {
        states.remove(id);
    }
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX { 0 } else { seq + 1 }
}

/// Kafka's sequence rules for one partition's batches of one producer.
fn check_sequence(
    state: &mut ProducerState,
    key: &(String, u32),
    epoch: i16,
    first: i32,
    last: i32,
) -> SeqCheck {
    if epoch < state.epoch {
        return SeqCheck::Error(code(ResponseError::InvalidProducerEpoch));
    }
    if epoch > state.epoch {
        // A new epoch restarts every sequence at 0.
        if first != 0 && !state.adopted {
            return SeqCheck::Error(code(ResponseError::OutOfOrderSequenceNumber));
        }
        state.epoch = epoch;
        state.partitions.clear();
    }
    let Some(seqs) = state.partitions.get(key) else {
        return if first == 0 || state.adopted {
            SeqCheck::Append
        } else {
            SeqCheck::Error(code(ResponseError::OutOfOrderSequenceNumber))
        };
    };
    if let Some(original) = seqs.recent.iter().find(|b| b.first_seq == first && b.last_seq == last) {
        return SeqCheck::Duplicate(original.base_offset);
    }
    let Some(latest) = seqs.recent.back() else { return SeqCheck::Append };
    if first == next_seq(latest.last_seq) {
        SeqCheck::Append
    } else if first <= latest.last_seq && latest.last_seq - first < i32::MAX / 2 {
        // Older than what is remembered: written already, offsets unknown.
        SeqCheck::Error(code(ResponseError::DuplicateSequenceNumber))
    } else {
        SeqCheck::Error(code(ResponseError::OutOfOrderSequenceNumber))
    }
}

fn remember(state: &mut ProducerState, key: (String, u32), first: i32, last: i32, base_offset: u64) {
    let seqs = state.partitions.entry(key).or_default();
    seqs.recent.push_back(BatchMeta { first_seq: first, last_seq: last, base_offset });
    while seqs.recent.len() > REMEMBERED_BATCHES {
        seqs.recent.pop_front();
    }
}

/// One partition of a produce request after decoding.
struct Decoded {
    topic_index: usize,
    partition: i32,
    result: Result<Vec<Batch>, i16>,
}

fn records_error_code(e: &RecordsError) -> i16 {
    match e {
        RecordsError::TooLarge(_) | RecordsError::TooManyRecords(_) => errors::record_too_large(),
        _ => errors::invalid_record(),
    }
}

impl Broker {
    pub(crate) async fn produce(
        &self,
        session: &mut Session,
        version: i16,
        request: ProduceRequest,
    ) -> Option<ProduceResponse> {
        let acks = request.acks;
        let mut response = ProduceResponse::default();
        let budget = Budget::new(self.config().max_produce_bytes, MAX_RECORDS_PER_REQUEST);
        let request_error = if !(-1..=1).contains(&acks) {
            Some(code(ResponseError::InvalidRequiredAcks))
        } else if request.transactional_id.is_some() {
            Some(code(ResponseError::TransactionalIdAuthorizationFailed))
        } else {
            None
        };

        let mut decoded = Vec::new();
        for (topic_index, topic) in request.topic_data.iter().enumerate() {
            let mut topic_response = produce_response::TopicProduceResponse::default();
            topic_response.name = topic.name.clone();
            response.responses.push(topic_response);
            let allowed = self.may(session, Action::Publish { topic: &topic.name.0 });
            for partition in &topic.partition_data {
                let result = match (request_error, &partition.records) {
                    (Some(error), _) => Err(error),
                    (None, _) if !allowed => Err(errors::topic_denied()),
                    (None, None) => Err(errors::invalid_record()),
                    (None, Some(data)) => {
                        records::decode_batches(data, &budget).map_err(|e| {
                            debug!(topic = %topic.name.0, partition = partition.index, error = %e, "bad produce batch");
                            records_error_code(&e)
                        })
                    }
                };
                decoded.push(Decoded { topic_index, partition: partition.index, result });
            }
        }

        // The topic catalogue (lifecycle state, validation policy) refuses a partition's records before any
        // append; the message says why (Produce v8+ carries it).
        let mut messages: HashMap<usize, String> = HashMap::new();
        if let Some(catalogue) = &self.ctx.catalogue {
            for (index, item) in decoded.iter_mut().enumerate() {
                let Ok(batches) = &item.result else { continue };
                let topic = &request.topic_data[item.topic_index].name.0;
                let values = batches.iter().flat_map(|b| &b.records).map(|r| r.value.as_ref());
                if let Err(refusal) = catalogue.check_publish(topic, values) {
                    debug!(topic = %topic, partition = item.partition, error = %refusal, "produce refused by the topic catalogue");
                    item.result = Err(errors::publish_refused(&refusal));
                    messages.insert(index, refusal.to_string());
                }
            }
        }

        // The publish rate is charged for the whole request, all or nothing, before anything is appended.
        if let (Some(auth), Some(who)) = (&self.ctx.auth, &session.identity) {
            let (events, bytes) = decoded
                .iter()
                .filter_map(|d| d.result.as_ref().ok())
                .flatten()
                .flat_map(|batch| &batch.records)
                .fold((0u64, 0u64), |(n, b), r| (n + 1, b + r.approx_size() as u64));
            if events > 0
                && let Err(limited) =
                    auth.check_publish_rate(who, u32::try_from(events).unwrap_or(u32::MAX), bytes)
            {
                let (error, throttle_ms) = errors::rate_limited(&limited);
                debug!(principal = %who.name, events, bytes, throttle_ms, "produce refused: publish rate exceeded");
                for item in &mut decoded {
                    if item.result.is_ok() {
                        item.result = Err(error);
                    }
                }
                if version >= 1 {
                    response.throttle_time_ms = throttle_ms;
                }
            }
        }

        for (index, item) in decoded.into_iter().enumerate() {
            let topic = &request.topic_data[item.topic_index].name;
            let (error_code, base_offset) = match item.result {
                Err(error) => (error, -1),
                Ok(batches) => {
                    let records = batches.iter().flat_map(|b| &b.records);
                    let (events, bytes) =
                        records.fold((0u64, 0u64), |(n, b), r| (n + 1, b + r.value.len() as u64));
                    let started = Instant::now();
                    match self.append_partition(session, topic, item.partition, batches).await {
                        Ok(offset) => {
                            esgf_events_ops::metrics::published(
                                &topic.0,
                                "kafka",
                                events,
                                bytes,
                                started.elapsed(),
                            );
                            (NONE, offset)
                        }
                        Err(error) => (error, -1),
                    }
                }
            };
            let mut partition_response = produce_response::PartitionProduceResponse::default();
            partition_response.index = item.partition;
            partition_response.error_code = error_code;
            partition_response.base_offset = base_offset;
            partition_response.log_append_time_ms = -1;
            if version >= 5 {
                partition_response.log_start_offset = -1;
            }
            if version >= 8
                && let Some(message) = messages.remove(&index)
            {
                partition_response.error_message = Some(message.into());
            }
            response.responses[item.topic_index].partition_responses.push(partition_response);
        }
        (acks != 0).then_some(response)
    }

    /// Appends one partition's batches; returns the base offset (the original one for a duplicate).
    async fn append_partition(
        &self,
        _session: &Session,
        topic: &TopicName,
        partition: i32,
        batches: Vec<Batch>,
    ) -> Result<i64, i16> {
        let Ok(partition_index) = u32::try_from(partition) else {
            return Err(code(ResponseError::UnknownTopicOrPartition));
        };
        let Some(first) = batches.first() else { return Ok(-1) };
        let producer_id = first.producer_id;
        let epoch = first.producer_epoch;
        let first_seq = first.base_sequence;
        let mut last_seq = first.last_sequence();
        for pair in batches.windows(2) {
            if pair[1].producer_id != producer_id || pair[1].producer_epoch != epoch {
                return Err(errors::invalid_record());
            }
            if producer_id >= 0 && pair[1].base_sequence != next_seq(pair[0].last_sequence()) {
                return Err(code(ResponseError::OutOfOrderSequenceNumber));
            }
            last_seq = pair[1].last_sequence();
        }
        let records: Vec<NewRecord> = batches.into_iter().flat_map(|b| b.records).collect();
        if records.is_empty() {
            return Ok(-1);
        }

        if producer_id < 0 {
            return self.append(topic, partition_index, records).await;
        }
        let state = self.producers.state(producer_id, epoch);
        let mut state = state.lock().await;
        state.last_used = Instant::now();
        let key = (topic.0.to_string(), partition_index);
        match check_sequence(&mut state, &key, epoch, first_seq, last_seq) {
            SeqCheck::Error(error) => {
                debug!(producer_id, epoch, first_seq, last_seq, error, "produce sequence refused");
                Err(error)
            }
            SeqCheck::Duplicate(base_offset) => {
                debug!(producer_id, first_seq, base_offset, "duplicate batch acknowledged without appending");
                Ok(base_offset as i64)
            }
            SeqCheck::Append => {
                let base_offset = self.append(topic, partition_index, records).await?;
                remember(&mut state, key, first_seq, last_seq, base_offset as u64);
                Ok(base_offset)
            }
        }
    }

    /// Appends, skipping records whose `metadata.event_id` was already published on the topic (see
    /// `esgf_events_catalogue`): if every record is such a duplicate nothing is appended and the answer is the
    /// original offset of the first; otherwise only the new records are appended (the base offset is theirs).
    async fn append(&self, topic: &TopicName, partition: u32, records: Vec<NewRecord>) -> Result<i64, i16> {
        let Some(catalogue) = &self.ctx.catalogue else {
            return self.append_new(topic, partition, records).await;
        };
        let retention = match self.ctx.store.describe_topic(topic).await {
            Ok(info) => info.retention.max_age,
            Err(e) => return Err(errors::store_error(&e)),
        };
        let texts: Vec<&str> = records.iter().map(|r| std::str::from_utf8(&r.value).unwrap_or("")).collect();
        let dedupe = catalogue.find_duplicates(topic, texts, retention).await.map_err(|e| {
            warn!(topic = %topic.0, error = %e, "event-id lookup failed");
            errors::catalogue_unavailable()
        })?;
        if dedupe.iter().all(|d| *d != esgf_events_catalogue::Dedupe::New) {
            let first = dedupe.iter().find_map(|d| match d {
                esgf_events_catalogue::Dedupe::Duplicate(original) => Some(original.offset as i64),
                _ => None,
            });
            debug!(topic = %topic.0, partition, "produce of already-published event ids: nothing appended");
            return Ok(first.unwrap_or(-1));
        }
        let fresh: Vec<NewRecord> = records
            .into_iter()
            .zip(&dedupe)
            .filter(|(_, d)| **d == esgf_events_catalogue::Dedupe::New)
            .map(|(r, _)| r)
            .collect();
        let values: Vec<bytes::Bytes> = fresh.iter().map(|r| r.value.clone()).collect();
        let base = self.append_new(topic, partition, fresh).await?;
        let placed: Vec<(&str, u32, u64)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (std::str::from_utf8(v).unwrap_or(""), partition, base as u64 + i as u64))
            .collect();
        // After the append: a crash in between lets one re-publish of these ids through (documented).
        if let Err(e) = catalogue.record_event_ids(topic, placed).await {
            warn!(topic = %topic.0, error = %e, "records appended but their event ids were not recorded");
        }
        Ok(base)
    }

    async fn append_new(
        &self,
        topic: &TopicName,
        partition: u32,
        records: Vec<NewRecord>,
    ) -> Result<i64, i16> {
        match self.ctx.store.append(topic, partition, records).await {
            Ok(outcome) => Ok(outcome.base_offset as i64),
            Err(e) => {
                warn!(topic = %topic.0, partition, error = %e, "append from a Kafka producer failed");
                Err(errors::store_error(&e))
            }
        }
    }

    pub(crate) fn init_producer_id(
        &self,
        session: &mut Session,
        request: InitProducerIdRequest,
    ) -> InitProducerIdResponse {
        let mut response = InitProducerIdResponse::default();
        response.producer_id = ProducerId(-1);
        response.producer_epoch = -1;
        // Kafka's IdempotentWrite permission: here, being a producer (or an operator).
        if self.ctx.auth.is_some()
            && !session
                .identity
                .as_ref()
                .is_some_and(|who| matches!(who.role, Role::Producer | Role::Operator))
        {
            response.error_code = errors::cluster_denied();
            return response;
        }
        if request.transactional_id.is_some() {
            response.error_code = code(ResponseError::TransactionalIdAuthorizationFailed);
            return response;
        }
        let result = if request.producer_id.0 >= 0 {
            self.producers.bump(request.producer_id.0, request.producer_epoch)
        } else {
            Ok(self.producers.allocate())
        };
        match result {
            Ok((id, epoch)) => {
                response.producer_id = ProducerId(id);
                response.producer_epoch = epoch;
            }
            Err(error) => response.error_code = error,
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> ProducerState {
        ProducerState { epoch: 0, adopted: false, partitions: HashMap::new(), last_used: Instant::now() }
    }

    fn key() -> (String, u32) {
        ("t".to_owned(), 0)
    }

    #[test]
    fn in_order_batches_append_and_a_retry_returns_the_original_offset() {
        let mut state = fresh();
        assert_eq!(check_sequence(&mut state, &key(), 0, 0, 4), SeqCheck::Append);
        remember(&mut state, key(), 0, 4, 100);
        assert_eq!(check_sequence(&mut state, &key(), 0, 5, 9), SeqCheck::Append);
        remember(&mut state, key(), 5, 9, 105);
        assert_eq!(check_sequence(&mut state, &key(), 0, 0, 4), SeqCheck::Duplicate(100));
        assert_eq!(check_sequence(&mut state, &key(), 0, 5, 9), SeqCheck::Duplicate(105));
    }

    #[test]
    fn a_gap_in_sequences_is_out_of_order() {
        let mut state = fresh();
        assert_eq!(check_sequence(&mut state, &key(), 0, 3, 4), SeqCheck::Error(45));
        remember(&mut state, key(), 0, 4, 0);
        assert_eq!(check_sequence(&mut state, &key(), 0, 7, 9), SeqCheck::Error(45));
    }

    #[test]
    fn a_retry_older_than_the_remembered_batches_is_a_duplicate_sequence() {
        let mut state = fresh();
        for i in 0..10 {
            remember(&mut state, key(), i, i, i as u64);
        }
        assert_eq!(check_sequence(&mut state, &key(), 0, 1, 1), SeqCheck::Error(46));
        assert_eq!(check_sequence(&mut state, &key(), 0, 9, 9), SeqCheck::Duplicate(9));
    }

    #[test]
    fn an_old_epoch_is_fenced_and_a_new_epoch_restarts_at_zero() {
        let mut state = fresh();
        state.epoch = 2;
        assert_eq!(check_sequence(&mut state, &key(), 1, 0, 0), SeqCheck::Error(47));
        assert_eq!(check_sequence(&mut state, &key(), 3, 5, 5), SeqCheck::Error(45));
        assert_eq!(check_sequence(&mut state, &key(), 3, 0, 0), SeqCheck::Append);
        assert_eq!(state.epoch, 3);
    }

    #[test]
    fn an_adopted_producer_may_start_anywhere() {
        let mut state = fresh();
        state.adopted = true;
        assert_eq!(check_sequence(&mut state, &key(), 0, 42, 50), SeqCheck::Append);
    }

    #[test]
    fn sequences_wrap_after_i32_max() {
        let mut state = fresh();
        remember(&mut state, key(), i32::MAX - 1, i32::MAX, 0);
        assert_eq!(check_sequence(&mut state, &key(), 0, 0, 3), SeqCheck::Append);
    }

    #[test]
    fn bumping_needs_the_current_epoch() {
        let producers = Producers::new();
        let (id, epoch) = producers.allocate();
        assert_eq!(producers.bump(id, epoch + 1), Err(47));
        assert_eq!(producers.bump(id, epoch), Ok((id, 1)));
        assert_eq!(producers.bump(id + 10_000, 0), Err(49));
    }
}
