//! Fuzzes the Kafka endpoint's request decoder (header + body of one frame, as read off a socket): it must
//! return an error or a request, never panic, abort or allocate without bound.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = esgf_events_kafka::codec::decode_request(bytes::Bytes::copy_from_slice(data));
});
