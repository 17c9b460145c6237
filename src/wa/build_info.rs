//! Facts about how this binary was built that operators (and CI) must be
//! able to check from the outside.

use whatsapp_rust::waproto::buffa::{Message, MessageField};
use whatsapp_rust::waproto::whatsapp::{self as wa, cert_chain::noise_certificate};

/// Whether the client checks the signatures of WhatsApp's Noise certificate
/// chain. `false` only in test and `demo` builds (feature
/// `danger-skip-cert-chain-verify`), which exist to talk to a fake server.
///
/// Probed, not assumed from a cfg flag: a structurally valid chain with zero
/// signatures is offered to the library's own verifier, exactly as a server
/// would present it. Cargo feature unification decides what is compiled in,
/// and this sees the result.
pub fn cert_chain_verification_enforced() -> bool {
    let key = [7u8; 32];
    let details = |serial, issuer, key: Vec<u8>| noise_certificate::Details {
        serial: Some(serial),
        issuer_serial: Some(issuer),
        key: Some(key),
        not_before: Some(0),
        not_after: Some(u64::MAX),
    };
    let cert = |d: noise_certificate::Details| wa::cert_chain::NoiseCertificate {
        details: Some(d.encode_to_vec()),
        signature: Some(vec![0; 64]),
    };
    let chain = wa::CertChain {
        intermediate: MessageField::some(cert(details(1, 0, vec![9; 32]))),
        leaf: MessageField::some(cert(details(2, 1, key.to_vec()))),
    };
    whatsapp_rust::wacore::noise::HandshakeUtils::verify_server_cert(&chain.encode_to_vec(), &key)
        .is_err()
}

#[cfg(test)]
mod tests {
    /// Test builds turn the bypass on (dev-dependency feature); the probe
    /// must see it, or it could not see it in a release build either.
    #[test]
    fn test_builds_skip_the_signature_check() {
        assert!(!super::cert_chain_verification_enforced());
    }
}
