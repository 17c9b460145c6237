//! Property tests of what fakewa parses from a client (issue 19): the
//! connection header, the Noise frame decoder, the binary nodes and the
//! ClientHello. Arbitrary bytes never panic; what is encoded decodes back.

use std::borrow::Cow;

use proptest::prelude::*;
use wacore_binary::node::{Attrs, Node, NodeContent, NodeValue};
use wacore_noise::framing::{FRAME_MAX_SIZE, FrameDecoder, encode_frame};

use super::{Header, decode_node, strip_header};
use crate::noise::{ServerIdentity, read_client_hello};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

/// Bytes that start like a header now and then.
fn intro_like() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(40),
        (bytes(12)).prop_map(|rest| [b"WA".as_slice(), &rest].concat()),
        (bytes(12)).prop_map(|rest| [b"ED\x00\x01".as_slice(), &rest].concat()),
    ]
}

/// A node with plain (non-JID) attributes, bytes or child nodes.
fn node() -> impl Strategy<Value = Node> {
    let attrs = proptest::collection::vec(("[a-z]{1,8}", "[a-zA-Z0-9 ]{0,12}"), 0..4);
    let leaf = (
        "[a-z]{1,10}",
        attrs.clone(),
        proptest::option::of(bytes(64)),
    )
        .prop_map(|(tag, attrs, content)| make(tag, attrs, content.map(NodeContent::Bytes)));
    leaf.prop_recursive(3, 16, 4, move |inner| {
        (
            "[a-z]{1,10}",
            attrs.clone(),
            proptest::collection::vec(inner, 1..4),
        )
            .prop_map(|(tag, attrs, children)| make(tag, attrs, Some(NodeContent::Nodes(children))))
    })
}

fn make(tag: String, attrs: Vec<(String, String)>, content: Option<NodeContent>) -> Node {
    let mut seen = std::collections::HashSet::new();
    Node {
        tag: Cow::Owned(tag),
        attrs: Attrs(
            attrs
                .into_iter()
                .filter(|(k, _)| seen.insert(k.clone()))
                .map(|(k, v)| (Cow::Owned(k), NodeValue::String(v.into())))
                .collect(),
        ),
        content,
    }
}

proptest! {
    /// Any first bytes: complete, incomplete, invalid or another
    /// dictionary, never a panic; a header (with or without an
    /// edge-routing pre-intro) followed by anything is complete, with
    /// exactly what followed, and any cut inside it is incomplete.
    #[test]
    fn connection_headers(
        garbage in intro_like(),
        routing in proptest::option::of(bytes(300)),
        rest in bytes(32),
        cut in any::<prop::sample::Index>(),
    ) {
        let _ = strip_header(&garbage);
        let (mut intro, _) = wacore_noise::build_handshake_header(routing.as_deref());
        let header_len = intro.len();
        intro.extend_from_slice(&rest);
        prop_assert_eq!(strip_header(&intro), Header::Complete(&rest));
        let at = cut.index(header_len);
        prop_assert_eq!(strip_header(&intro[..at]), Header::Incomplete);
    }

    /// Frames encoded and fed in any chunks decode to the same payloads,
    /// in order, with nothing left over.
    #[test]
    fn frames_round_trip_in_any_chunks(
        payloads in proptest::collection::vec(bytes(300), 0..6),
        chunk in 1..64_usize,
    ) {
        let stream: Vec<u8> = payloads
            .iter()
            .flat_map(|p| encode_frame(p, None).unwrap())
            .collect();
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();
        for piece in stream.chunks(chunk) {
            decoder.feed(piece);
            while let Some(frame) = decoder.decode_frame() {
                got.push(frame.to_vec());
            }
        }
        prop_assert_eq!(got, payloads);
        prop_assert!(decoder.decode_frame().is_none());
    }

    /// Any bytes as frames: frames no larger than the maximum, never a
    /// panic.
    #[test]
    fn any_bytes_as_frames(data in bytes(512), chunk in 1..64_usize) {
        let mut decoder = FrameDecoder::new();
        for piece in data.chunks(chunk) {
            decoder.feed(piece);
            while let Some(frame) = decoder.decode_frame() {
                prop_assert!(frame.len() < FRAME_MAX_SIZE);
            }
        }
    }

    /// Nodes marshalled as the client does decode back to themselves;
    /// any bytes as a (decrypted) node are a node or an error.
    #[test]
    fn nodes_round_trip(node in node(), garbage in bytes(128)) {
        let plain = wacore_binary::marshal::marshal(&node).unwrap();
        prop_assert_eq!(decode_node(&plain).unwrap(), node);
        let _ = decode_node(&garbage);
        let mut flagged = vec![0];
        flagged.extend_from_slice(&garbage);
        let _ = decode_node(&flagged);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any bytes as a ClientHello: an answer or an error, never a panic.
    #[test]
    fn any_bytes_as_a_client_hello(frame in prop_oneof![
        bytes(120),
        // A HandshakeMessage with a client_hello (field 2) of any contents.
        bytes(100).prop_map(|inner| {
            let mut m = vec![0x12, inner.len() as u8];
            m.extend_from_slice(&inner);
            m
        }),
    ]) {
        let server = ServerIdentity::from_private(&ServerIdentity::generate_private()).unwrap();
        let _ = read_client_hello(&server, &frame);
    }
}
