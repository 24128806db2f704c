//! Fuzzes the decoder of the on-disk batch framing (bytes read back from segment files).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = esgf_events_engine::fuzzing::decode_batch(data);
});
