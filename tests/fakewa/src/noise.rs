//! The responder side of WhatsApp's Noise handshakes (XX, IK, XXfallback)
//! and the transport cipher that follows.
//!
//! The client is the initiator; see `wacore-noise/src/handshake.rs` for its
//! side. The server's certificate chain is structurally valid but carries
//! zero signatures: clients talking to fakewa must be built with
//! `danger-skip-cert-chain-verify`.

use buffa::Message;
use wacore_binary::consts::{
    NOISE_PATTERN_IK, NOISE_PATTERN_XX, NOISE_PATTERN_XXFALLBACK, WA_CONN_HEADER,
};
use wacore_libsignal::protocol::KeyPair;
use wacore_noise::{NoiseCipher, NoiseHandshake};
use waproto::whatsapp::{self as wa, HandshakeMessage, cert_chain::noise_certificate};

/// Certificate validity window: wide, so IK stays selectable for decades.
const CERT_NOT_BEFORE: u64 = 1_600_000_000;
const CERT_NOT_AFTER: u64 = 4_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    #[error("handshake message does not decode: {0}")]
    Decode(String),
    #[error("handshake message is missing {0}")]
    Missing(&'static str),
    #[error("noise crypto failed: {0}")]
    Crypto(String),
}

fn crypto(e: impl std::fmt::Display) -> NoiseError {
    NoiseError::Crypto(e.to_string())
}

/// The server's long-term Noise identity and the chain that names it.
pub struct ServerIdentity {
    static_key: KeyPair,
    static_pub: [u8; 32],
    cert_chain: Vec<u8>,
}

impl ServerIdentity {
    pub fn from_private(private: &[u8; 32]) -> Result<Self, NoiseError> {
        let private =
            wacore_libsignal::protocol::PrivateKey::deserialize(private).map_err(crypto)?;
        let public = private.public_key().map_err(crypto)?;
        let static_key = KeyPair::new(public, private);
        let static_pub: [u8; 32] = static_key
            .public_key
            .public_key_bytes()
            .try_into()
            .map_err(crypto)?;
        Ok(Self {
            cert_chain: cert_chain_bytes(&static_pub),
            static_key,
            static_pub,
        })
    }

    pub fn generate_private() -> [u8; 32] {
        *KeyPair::generate(&mut rand::rng()).private_key.serialize()
    }

    pub fn static_pub(&self) -> &[u8; 32] {
        &self.static_pub
    }

    fn static_priv(&self) -> &[u8] {
        self.static_key.private_key.serialize()
    }
}

/// A structurally valid chain (issuer serial 0, leaf issued by the
/// intermediate, leaf key = server static) with zero signatures.
fn cert_chain_bytes(static_pub: &[u8; 32]) -> Vec<u8> {
    let intermediate = noise_certificate::Details {
        serial: Some(1),
        issuer_serial: Some(0),
        key: Some(vec![0x11; 32]),
        not_before: Some(CERT_NOT_BEFORE),
        not_after: Some(CERT_NOT_AFTER),
    };
    let leaf = noise_certificate::Details {
        serial: Some(2),
        issuer_serial: Some(1),
        key: Some(static_pub.to_vec()),
        not_before: Some(CERT_NOT_BEFORE),
        not_after: Some(CERT_NOT_AFTER),
    };
    wa::CertChain {
        intermediate: buffa::MessageField::some(wa::cert_chain::NoiseCertificate {
            details: Some(intermediate.encode_to_vec()),
            signature: Some(vec![0; 64]),
        }),
        leaf: buffa::MessageField::some(wa::cert_chain::NoiseCertificate {
            details: Some(leaf.encode_to_vec()),
            signature: Some(vec![0; 64]),
        }),
    }
    .encode_to_vec()
}

/// Which handshake the client asked for and what the server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    Xx,
    Ik,
    XxFallback,
}

/// Result of reading the ClientHello.
pub enum HelloOutcome {
    /// IK accepted: the handshake is complete, no ClientFinish follows.
    Done(Box<Established>),
    /// XX or XXfallback: send `server_hello`, then read the ClientFinish.
    AwaitFinish(Box<PendingFinish>),
}

/// A finished handshake: transport ciphers plus what the client told us.
pub struct Established {
    pub pattern: Pattern,
    pub client_static: [u8; 32],
    pub payload: wa::ClientPayload,
    pub cipher: TransportCipher,
    /// Frame payload to send to the client before anything else (IK's ServerHello).
    pub server_hello: Option<Vec<u8>>,
}

pub struct PendingFinish {
    pub pattern: Pattern,
    pub server_hello: Vec<u8>,
    noise: NoiseHandshake,
    ephemeral: KeyPair,
}

fn key32(bytes: &[u8], what: &'static str) -> Result<[u8; 32], NoiseError> {
    bytes.try_into().map_err(|_| NoiseError::Missing(what))
}

/// Reads a ClientHello and answers it. IK is accepted when the client
/// encrypted to our static key; otherwise the server falls back to
/// XXfallback, which the client follows with a normal ClientFinish.
pub fn read_client_hello(
    server: &ServerIdentity,
    frame: &[u8],
) -> Result<HelloOutcome, NoiseError> {
    let msg = HandshakeMessage::decode_from_slice(frame)
        .map_err(|e| NoiseError::Decode(e.to_string()))?;
    let hello = msg
        .client_hello
        .into_option()
        .ok_or(NoiseError::Missing("client_hello"))?;
    let client_eph = key32(
        hello
            .ephemeral
            .as_deref()
            .ok_or(NoiseError::Missing("ephemeral"))?,
        "ephemeral",
    )?;
    match (hello.r#static.as_deref(), hello.payload.as_deref()) {
        (Some(enc_static), Some(enc_payload)) => {
            match try_ik(server, &client_eph, enc_static, enc_payload) {
                Ok(done) => Ok(HelloOutcome::Done(Box::new(done))),
                Err(e) => {
                    tracing::info!("IK hello not acceptable ({e}); answering with XXfallback");
                    xx_server_hello(server, &client_eph, Pattern::XxFallback)
                        .map(|p| HelloOutcome::AwaitFinish(Box::new(p)))
                }
            }
        }
        _ => xx_server_hello(server, &client_eph, Pattern::Xx)
            .map(|p| HelloOutcome::AwaitFinish(Box::new(p))),
    }
}

fn try_ik(
    server: &ServerIdentity,
    client_eph: &[u8; 32],
    enc_static: &[u8],
    enc_payload: &[u8],
) -> Result<Established, NoiseError> {
    let mut noise = NoiseHandshake::new(NOISE_PATTERN_IK, &WA_CONN_HEADER).map_err(crypto)?;
    noise.authenticate(server.static_pub());
    noise.authenticate(client_eph);
    noise
        .mix_shared_secret(server.static_priv(), client_eph)
        .map_err(crypto)?;
    let client_static = key32(&noise.decrypt(enc_static).map_err(crypto)?, "client static")?;
    noise
        .mix_shared_secret(server.static_priv(), &client_static)
        .map_err(crypto)?;
    let payload_bytes = noise.decrypt(enc_payload).map_err(crypto)?;
    let payload = wa::ClientPayload::decode_from_slice(&payload_bytes)
        .map_err(|e| NoiseError::Decode(e.to_string()))?;

    let ephemeral = KeyPair::generate(&mut rand::rng());
    let eph_pub = key32(ephemeral.public_key.public_key_bytes(), "ephemeral")?;
    noise.authenticate(&eph_pub);
    noise
        .mix_shared_secret(ephemeral.private_key.serialize(), client_eph)
        .map_err(crypto)?;
    noise
        .mix_shared_secret(ephemeral.private_key.serialize(), &client_static)
        .map_err(crypto)?;
    let enc_cert = noise.encrypt(&server.cert_chain).map_err(crypto)?;
    let server_hello = HandshakeMessage {
        server_hello: buffa::MessageField::some(wa::handshake_message::ServerHello {
            ephemeral: Some(eph_pub.to_vec()),
            r#static: None,
            payload: Some(enc_cert),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    let (initiator_write, initiator_read) = noise.finish().map_err(crypto)?;
    Ok(Established {
        pattern: Pattern::Ik,
        client_static,
        payload,
        cipher: TransportCipher::new(initiator_read, initiator_write),
        server_hello: Some(server_hello),
    })
}

fn xx_server_hello(
    server: &ServerIdentity,
    client_eph: &[u8; 32],
    pattern: Pattern,
) -> Result<PendingFinish, NoiseError> {
    let name = if pattern == Pattern::Xx {
        NOISE_PATTERN_XX
    } else {
        NOISE_PATTERN_XXFALLBACK
    };
    let mut noise = NoiseHandshake::new(name, &WA_CONN_HEADER).map_err(crypto)?;
    noise.authenticate(client_eph);
    let ephemeral = KeyPair::generate(&mut rand::rng());
    let eph_pub = key32(ephemeral.public_key.public_key_bytes(), "ephemeral")?;
    noise.authenticate(&eph_pub);
    noise
        .mix_shared_secret(ephemeral.private_key.serialize(), client_eph)
        .map_err(crypto)?;
    let enc_static = noise.encrypt(server.static_pub()).map_err(crypto)?;
    noise
        .mix_shared_secret(server.static_priv(), client_eph)
        .map_err(crypto)?;
    let enc_cert = noise.encrypt(&server.cert_chain).map_err(crypto)?;
    let server_hello = HandshakeMessage {
        server_hello: buffa::MessageField::some(wa::handshake_message::ServerHello {
            ephemeral: Some(eph_pub.to_vec()),
            r#static: Some(enc_static),
            payload: Some(enc_cert),
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec();
    Ok(PendingFinish {
        pattern,
        server_hello,
        noise,
        ephemeral,
    })
}

/// Reads the ClientFinish of an XX or XXfallback handshake.
pub fn read_client_finish(pending: PendingFinish, frame: &[u8]) -> Result<Established, NoiseError> {
    let PendingFinish {
        pattern,
        mut noise,
        ephemeral,
        ..
    } = pending;
    let msg = HandshakeMessage::decode_from_slice(frame)
        .map_err(|e| NoiseError::Decode(e.to_string()))?;
    let finish = msg
        .client_finish
        .into_option()
        .ok_or(NoiseError::Missing("client_finish"))?;
    let enc_static = finish
        .r#static
        .as_deref()
        .ok_or(NoiseError::Missing("static"))?;
    let enc_payload = finish
        .payload
        .as_deref()
        .ok_or(NoiseError::Missing("payload"))?;
    let client_static = key32(&noise.decrypt(enc_static).map_err(crypto)?, "client static")?;
    noise
        .mix_shared_secret(ephemeral.private_key.serialize(), &client_static)
        .map_err(crypto)?;
    let payload_bytes = noise.decrypt(enc_payload).map_err(crypto)?;
    let payload = wa::ClientPayload::decode_from_slice(&payload_bytes)
        .map_err(|e| NoiseError::Decode(e.to_string()))?;
    let (initiator_write, initiator_read) = noise.finish().map_err(crypto)?;
    Ok(Established {
        pattern,
        client_static,
        payload,
        cipher: TransportCipher::new(initiator_read, initiator_write),
        server_hello: None,
    })
}

/// Per-direction AES-GCM with frame counters, from the server's side.
pub struct TransportCipher {
    write: NoiseCipher,
    read: NoiseCipher,
    write_counter: u32,
    read_counter: u32,
}

impl TransportCipher {
    fn new(write: NoiseCipher, read: NoiseCipher) -> Self {
        Self {
            write,
            read,
            write_counter: 0,
            read_counter: 0,
        }
    }

    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let out = self
            .write
            .encrypt_with_counter(self.write_counter, plaintext)
            .map_err(crypto)?;
        self.write_counter = self.write_counter.wrapping_add(1);
        Ok(out)
    }

    pub fn decrypt(&mut self, mut frame: Vec<u8>) -> Result<Vec<u8>, NoiseError> {
        self.read
            .decrypt_in_place_with_counter(self.read_counter, &mut frame)
            .map_err(crypto)?;
        self.read_counter = self.read_counter.wrapping_add(1);
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    //! The responder against the client's own initiator state machines
    //! (wacore-noise), for every pattern the client can choose.

    use super::*;
    use wacore_noise::{
        IkHandshakeState, IkServerHelloOutcome, XxFallbackHandshakeState, XxHandshakeState,
    };

    fn server() -> ServerIdentity {
        ServerIdentity::from_private(&ServerIdentity::generate_private()).unwrap()
    }

    fn login_payload() -> (Vec<u8>, wa::ClientPayload) {
        let payload = wa::ClientPayload {
            username: Some(15551234567),
            device: Some(3),
            ..Default::default()
        };
        (payload.encode_to_vec(), payload)
    }

    /// Both sides' transport ciphers agree in both directions.
    fn assert_transport(
        server: &mut TransportCipher,
        client_write: &NoiseCipher,
        client_read: &NoiseCipher,
    ) {
        let from_client = client_write
            .encrypt_with_counter(0, b"client->server")
            .unwrap();
        assert_eq!(server.decrypt(from_client).unwrap(), b"client->server");
        let mut from_server = server.encrypt(b"server->client").unwrap();
        client_read
            .decrypt_in_place_with_counter(0, &mut from_server)
            .unwrap();
        assert_eq!(from_server, b"server->client");
    }

    #[test]
    fn xx_handshake_completes_and_yields_payload_and_static() {
        let server = server();
        let client_static = KeyPair::generate(&mut rand::rng());
        let (payload_bytes, payload) = login_payload();
        let mut client =
            XxHandshakeState::new(client_static.clone(), payload_bytes, &WA_CONN_HEADER).unwrap();
        let HelloOutcome::AwaitFinish(pending) =
            read_client_hello(&server, &client.build_client_hello().unwrap()).unwrap()
        else {
            panic!("an XX hello needs a ClientFinish");
        };
        assert_eq!(pending.pattern, Pattern::Xx);
        let finish = client
            .read_server_hello_and_build_client_finish(&pending.server_hello)
            .unwrap();
        let mut est = read_client_finish(*pending, &finish).unwrap();
        assert_eq!(
            est.client_static,
            client_static.public_key.public_key_bytes()
        );
        assert_eq!(est.payload.username, payload.username);
        assert_eq!(est.payload.device, payload.device);
        let outcome = client.finish().unwrap();
        assert_eq!(
            &outcome.server_cert_chain.leaf_key,
            server.static_pub(),
            "client cached our static"
        );
        assert!(
            outcome.server_cert_chain.leaf_not_after > 3_000_000_000,
            "IK stays selectable for decades"
        );
        assert_transport(&mut est.cipher, &outcome.write_cipher, &outcome.read_cipher);
    }

    #[test]
    fn ik_with_our_static_is_accepted_without_client_finish() {
        let server = server();
        let client_static = KeyPair::generate(&mut rand::rng());
        let (payload_bytes, payload) = login_payload();
        let mut client = IkHandshakeState::new(
            client_static.clone(),
            *server.static_pub(),
            payload_bytes,
            &WA_CONN_HEADER,
        )
        .unwrap();
        let HelloOutcome::Done(mut est) =
            read_client_hello(&server, &client.build_client_hello().unwrap()).unwrap()
        else {
            panic!("IK to our own static must be accepted");
        };
        assert_eq!(est.pattern, Pattern::Ik);
        assert_eq!(est.payload.username, payload.username);
        assert_eq!(
            est.client_static,
            client_static.public_key.public_key_bytes()
        );
        let hello = est.server_hello.clone().unwrap();
        let IkServerHelloOutcome::Continue(out) = client.read_server_hello(&hello).unwrap() else {
            panic!("the client must continue IK");
        };
        assert_transport(&mut est.cipher, &out.write_cipher, &out.read_cipher);
    }

    #[test]
    fn ik_to_another_static_falls_back_to_xxfallback() {
        let server = server();
        let stale = *self::server().static_pub();
        let client_static = KeyPair::generate(&mut rand::rng());
        let (payload_bytes, payload) = login_payload();
        let mut client =
            IkHandshakeState::new(client_static.clone(), stale, payload_bytes, &WA_CONN_HEADER)
                .unwrap();
        let HelloOutcome::AwaitFinish(pending) =
            read_client_hello(&server, &client.build_client_hello().unwrap()).unwrap()
        else {
            panic!("IK to a stale static cannot be accepted");
        };
        assert_eq!(pending.pattern, Pattern::XxFallback);
        let IkServerHelloOutcome::Fallback(inputs) =
            client.read_server_hello(&pending.server_hello).unwrap()
        else {
            panic!("the client must pivot to XXfallback");
        };
        let mut fallback =
            XxFallbackHandshakeState::from_ik_failure(*inputs, &WA_CONN_HEADER).unwrap();
        let finish = fallback.build_client_finish().unwrap();
        let mut est = read_client_finish(*pending, &finish).unwrap();
        assert_eq!(est.pattern, Pattern::XxFallback);
        assert_eq!(est.payload.username, payload.username);
        let outcome = fallback.finish().unwrap();
        assert_eq!(
            &outcome.server_cert_chain.leaf_key,
            server.static_pub(),
            "client re-learns our static"
        );
        assert_transport(&mut est.cipher, &outcome.write_cipher, &outcome.read_cipher);
    }

    #[test]
    fn garbage_hellos_are_errors_not_panics() {
        let server = server();
        for frame in [&b""[..], b"\x00\x01\x02", &[0xff; 64]] {
            assert!(read_client_hello(&server, frame).is_err());
        }
        let hello = HandshakeMessage {
            client_hello: buffa::MessageField::some(wa::handshake_message::ClientHello {
                ephemeral: Some(vec![1; 7]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(read_client_hello(&server, &hello.encode_to_vec()).is_err());
    }
}
