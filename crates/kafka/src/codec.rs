//! Request decoding and response encoding: bytes of one frame in, typed messages out, and back. No I/O, so the
//! decoder can be fuzzed (`fuzz/fuzz_targets/kafka_request.rs`) and property-tested.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};

use crate::precheck;

/// The APIs this endpoint serves, with the version ranges it advertises in ApiVersions. Nothing else is
/// advertised or accepted. The ranges stop before versions that need topic ids (Produce 13, Fetch 13) or the
/// new consumer-group protocol (OffsetCommit 9, OffsetFetch 9), which the log does not model.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// The advertised version range of `key`, if it is served at all.
pub fn supported_range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED.iter().find(|(k, _, _)| *k == key).map(|&(_, min, max)| (min, max))
}

/// A decoded request of one of the [`SUPPORTED`] APIs.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    Metadata(MetadataRequest),
    OffsetCommit(OffsetCommitRequest),
    OffsetFetch(OffsetFetchRequest),
    FindCoordinator(FindCoordinatorRequest),
    JoinGroup(JoinGroupRequest),
    Heartbeat(HeartbeatRequest),
    LeaveGroup(LeaveGroupRequest),
    SyncGroup(SyncGroupRequest),
    SaslHandshake(SaslHandshakeRequest),
    ApiVersions(ApiVersionsRequest),
    CreateTopics(CreateTopicsRequest),
    InitProducerId(InitProducerIdRequest),
    DescribeConfigs(DescribeConfigsRequest),
    SaslAuthenticate(SaslAuthenticateRequest),
}

/// A response to one of the [`SUPPORTED`] APIs.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Produce(ProduceResponse),
    Fetch(FetchResponse),
    ListOffsets(ListOffsetsResponse),
    Metadata(MetadataResponse),
    OffsetCommit(OffsetCommitResponse),
    OffsetFetch(OffsetFetchResponse),
    FindCoordinator(FindCoordinatorResponse),
    JoinGroup(JoinGroupResponse),
    Heartbeat(HeartbeatResponse),
    LeaveGroup(LeaveGroupResponse),
    SyncGroup(SyncGroupResponse),
    SaslHandshake(SaslHandshakeResponse),
    ApiVersions(ApiVersionsResponse),
    CreateTopics(CreateTopicsResponse),
    InitProducerId(InitProducerIdResponse),
    DescribeConfigs(DescribeConfigsResponse),
    SaslAuthenticate(SaslAuthenticateResponse),
}

impl Request {
    pub fn api_key(&self) -> ApiKey {
        match self {
            Request::Produce(_) => ApiKey::Produce,
            Request::Fetch(_) => ApiKey::Fetch,
            Request::ListOffsets(_) => ApiKey::ListOffsets,
            Request::Metadata(_) => ApiKey::Metadata,
            Request::OffsetCommit(_) => ApiKey::OffsetCommit,
            Request::OffsetFetch(_) => ApiKey::OffsetFetch,
            Request::FindCoordinator(_) => ApiKey::FindCoordinator,
            Request::JoinGroup(_) => ApiKey::JoinGroup,
            Request::Heartbeat(_) => ApiKey::Heartbeat,
            Request::LeaveGroup(_) => ApiKey::LeaveGroup,
            Request::SyncGroup(_) => ApiKey::SyncGroup,
            Request::SaslHandshake(_) => ApiKey::SaslHandshake,
            Request::ApiVersions(_) => ApiKey::ApiVersions,
            Request::CreateTopics(_) => ApiKey::CreateTopics,
            Request::InitProducerId(_) => ApiKey::InitProducerId,
            Request::DescribeConfigs(_) => ApiKey::DescribeConfigs,
            Request::SaslAuthenticate(_) => ApiKey::SaslAuthenticate,
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {0} bytes is too short for a request header")]
    TooShort(usize),
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("API {key:?} is not served")]
    UnsupportedApi { key: ApiKey, header: RequestHeader },
    /// The header is known, so the caller may answer (ApiVersions does; Kafka closes the connection otherwise).
    #[error("version {} of API {key:?} is not supported", header.request_api_version)]
    UnsupportedVersion { key: ApiKey, header: RequestHeader },
    #[error("malformed request header: {0}")]
    MalformedHeader(String),
    #[error("malformed {key:?} v{version} request: {detail}")]
    MalformedBody { key: ApiKey, version: i16, detail: String, header: RequestHeader },
}

impl DecodeError {
    /// The header, when it was decoded before the failure.
    pub fn header(&self) -> Option<&RequestHeader> {
        match self {
            DecodeError::UnsupportedApi { header, .. }
            | DecodeError::UnsupportedVersion { header, .. }
            | DecodeError::MalformedBody { header, .. } => Some(header),
            _ => None,
        }
    }
}

/// Decodes one frame (without its 4-byte length prefix) into its header and request.
pub fn decode_request(frame: Bytes) -> Result<(RequestHeader, Request), DecodeError> {
    if frame.len() < 8 {
        return Err(DecodeError::TooShort(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let key = ApiKey::try_from(raw_key).map_err(|()| DecodeError::UnknownApiKey(raw_key))?;
    let mut buf = frame;
    let header = RequestHeader::decode(&mut buf, key.request_header_version(version))
        .map_err(|e| DecodeError::MalformedHeader(format!("{e:#}")))?;
    let Some((min, max)) = supported_range(key) else {
        return Err(DecodeError::UnsupportedApi { key, header });
    };
    if version < min || version > max {
        return Err(DecodeError::UnsupportedVersion { key, header });
    }
    let malformed =
        |header: RequestHeader, detail: String| DecodeError::MalformedBody { key, version, detail, header };
    if let Err(e) = precheck::check(key, version, &buf) {
        return Err(malformed(header, e.to_string()));
    }
    let request = decode_body(key, version, &mut buf);
    match request {
        Ok(request) => Ok((header, request)),
        Err(e) => Err(malformed(header, format!("{e:#}"))),
    }
}

fn decode_body(key: ApiKey, version: i16, buf: &mut Bytes) -> Result<Request, String> {
    fn d<T: Decodable>(buf: &mut Bytes, version: i16) -> Result<T, String> {
        T::decode(buf, version).map_err(|e| format!("{e:#}"))
    }
    Ok(match key {
        ApiKey::Produce => Request::Produce(d(buf, version)?),
        ApiKey::Fetch => Request::Fetch(d(buf, version)?),
        ApiKey::ListOffsets => Request::ListOffsets(d(buf, version)?),
        ApiKey::Metadata => Request::Metadata(d(buf, version)?),
        ApiKey::OffsetCommit => Request::OffsetCommit(d(buf, version)?),
        ApiKey::OffsetFetch => Request::OffsetFetch(d(buf, version)?),
        ApiKey::FindCoordinator => Request::FindCoordinator(d(buf, version)?),
        ApiKey::JoinGroup => Request::JoinGroup(d(buf, version)?),
        ApiKey::Heartbeat => Request::Heartbeat(d(buf, version)?),
        ApiKey::LeaveGroup => Request::LeaveGroup(d(buf, version)?),
        ApiKey::SyncGroup => Request::SyncGroup(d(buf, version)?),
        ApiKey::SaslHandshake => Request::SaslHandshake(d(buf, version)?),
        ApiKey::ApiVersions => Request::ApiVersions(d(buf, version)?),
        ApiKey::CreateTopics => Request::CreateTopics(d(buf, version)?),
        ApiKey::InitProducerId => Request::InitProducerId(d(buf, version)?),
        ApiKey::DescribeConfigs => Request::DescribeConfigs(d(buf, version)?),
        ApiKey::SaslAuthenticate => Request::SaslAuthenticate(d(buf, version)?),
        other => return Err(format!("API {other:?} is not served")),
    })
}

#[derive(Debug, thiserror::Error)]
#[error("cannot encode {key:?} v{version} response: {detail}")]
pub struct EncodeError {
    pub key: ApiKey,
    pub version: i16,
    pub detail: String,
}

/// Encodes a response as a complete frame: 4-byte length, header, body.
pub fn encode_response(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    response: &Response,
) -> Result<Bytes, EncodeError> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let err = |detail: String| EncodeError { key, version, detail };
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header.encode(&mut buf, response_header_version(key, version)).map_err(|e| err(format!("{e:#}")))?;
    let body = match response {
        Response::Produce(r) => r.encode(&mut buf, version),
        Response::Fetch(r) => r.encode(&mut buf, version),
        Response::ListOffsets(r) => r.encode(&mut buf, version),
        Response::Metadata(r) => r.encode(&mut buf, version),
        Response::OffsetCommit(r) => r.encode(&mut buf, version),
        Response::OffsetFetch(r) => r.encode(&mut buf, version),
        Response::FindCoordinator(r) => r.encode(&mut buf, version),
        Response::JoinGroup(r) => r.encode(&mut buf, version),
        Response::Heartbeat(r) => r.encode(&mut buf, version),
        Response::LeaveGroup(r) => r.encode(&mut buf, version),
        Response::SyncGroup(r) => r.encode(&mut buf, version),
        Response::SaslHandshake(r) => r.encode(&mut buf, version),
        Response::ApiVersions(r) => r.encode(&mut buf, version),
        Response::CreateTopics(r) => r.encode(&mut buf, version),
        Response::InitProducerId(r) => r.encode(&mut buf, version),
        Response::DescribeConfigs(r) => r.encode(&mut buf, version),
        Response::SaslAuthenticate(r) => r.encode(&mut buf, version),
    };
    body.map_err(|e| err(format!("{e:#}")))?;
    let len = i32::try_from(buf.len() - 4).map_err(|_| err("response larger than 2 GiB".to_owned()))?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// ApiVersions' response header is always version 0 (so a client that asked with too new a version can
/// still read it); every other API follows its own schema.
pub fn response_header_version(key: ApiKey, version: i16) -> i16 {
    match key {
        ApiKey::ApiVersions => ApiVersionsResponse::header_version(version),
        _ => key.response_header_version(version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::StrBytes;

    fn frame(key: ApiKey, version: i16, body: &impl Encodable) -> Bytes {
        let mut header = RequestHeader::default();
        header.request_api_key = key as i16;
        header.request_api_version = version;
        header.correlation_id = 7;
        header.client_id = Some(StrBytes::from_static_str("test"));
        let mut buf = BytesMut::new();
        header.encode(&mut buf, key.request_header_version(version)).unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn every_advertised_range_is_within_what_the_codec_knows() {
        for &(key, min, max) in SUPPORTED {
            let known = key.valid_versions();
            assert!(min >= known.min && max <= known.max, "{key:?} {min}..={max} vs {known}");
        }
    }

    #[test]
    fn metadata_request_round_trips_through_the_decoder() {
        let request = MetadataRequest::default();
        let (header, decoded) = decode_request(frame(ApiKey::Metadata, 12, &request)).unwrap();
        assert_eq!(header.correlation_id, 7);
        assert_eq!(decoded, Request::Metadata(request));
    }

    #[test]
    fn unsupported_version_keeps_the_header_for_an_answer() {
        let request = ApiVersionsRequest::default();
        let mut raw = BytesMut::from(&frame(ApiKey::ApiVersions, 3, &request)[..]);
        raw[2..4].copy_from_slice(&9i16.to_be_bytes());
        match decode_request(raw.freeze()) {
            Err(DecodeError::UnsupportedVersion { header, .. }) => assert_eq!(header.correlation_id, 7),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn short_and_unknown_frames_are_errors_not_panics() {
        for bytes in [&b""[..], b"\x00", b"\x00\x03\x00\x01\x00", b"\x7f\x7f\x00\x00\x00\x00\x00\x01"] {
            assert!(decode_request(Bytes::copy_from_slice(bytes)).is_err());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Arbitrary bytes are an error or a request, never a panic or an abort.
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_request(Bytes::from(bytes));
        }

        /// A valid header of every served API and version, then arbitrary body bytes.
        #[test]
        fn arbitrary_bodies_of_every_api_never_panic(
            api in 0..SUPPORTED.len(),
            pick in proptest::num::i16::ANY,
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        ) {
            let (key, min, max) = SUPPORTED[api];
            let version = min + pick.rem_euclid(max - min + 1);
            let mut buf = BytesMut::new();
            let mut header = RequestHeader::default();
            header.request_api_key = key as i16;
            header.request_api_version = version;
            header.encode(&mut buf, key.request_header_version(version)).unwrap();
            buf.extend_from_slice(&body);
            let _ = decode_request(buf.freeze());
        }
    }

    #[test]
    fn api_versions_response_header_is_always_v0() {
        assert_eq!(response_header_version(ApiKey::ApiVersions, 3), 0);
        assert_eq!(response_header_version(ApiKey::Metadata, 12), 1);
    }
}
