//! Property tests of the device keyspace's own row and key layouts
//! (issue 19: store codecs): encode then decode is the identity; a row
//! with an unknown format byte, of the wrong length or truncated is
//! refused, never a panic.

use proptest::prelude::*;

use super::msg_secret::{MSG_SECRET_LEN, MsgSecretRow};
use super::protocol::{split_timestamped, timestamped};
use super::{ROW_FORMAT_V1, composite, named, split_named, split_part};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

proptest! {
    /// Message-secret rows: fixed layout, read back exactly; any other
    /// length or format byte is refused.
    #[test]
    fn msg_secret_rows_round_trip(
        secret in proptest::collection::vec(any::<u8>(), MSG_SECRET_LEN),
        expires_at in any::<i64>(),
        message_ts in any::<i64>(),
        format in any::<u8>(),
        cut in any::<prop::sample::Index>(),
        garbage in bytes(2 * (MSG_SECRET_LEN + 17)),
    ) {
        let row = MsgSecretRow {
            secret: secret.clone().try_into().unwrap(),
            expires_at,
            message_ts,
        }
        .encode();
        let back = MsgSecretRow::decode(&row).unwrap();
        prop_assert_eq!(
            (back.secret.to_vec(), back.expires_at, back.message_ts),
            (secret, expires_at, message_ts)
        );
        let mut other = row.clone();
        other[0] = format;
        prop_assert_eq!(MsgSecretRow::decode(&other).is_some(), format == ROW_FORMAT_V1);
        prop_assert!(MsgSecretRow::decode(&row[..cut.index(row.len())]).is_none());
        let mut longer = row.clone();
        longer.push(0);
        prop_assert!(MsgSecretRow::decode(&longer).is_none());
        if let Some(read) = MsgSecretRow::decode(&garbage) {
            prop_assert_eq!(read.encode(), garbage);
        }
    }

    /// Timestamped rows (sent messages, pending inbound).
    #[test]
    fn timestamped_rows_round_trip(
        ts in any::<i64>(),
        payload in bytes(64),
        format in any::<u8>(),
        cut in 0..9_usize,
        garbage in bytes(24),
    ) {
        let row = timestamped(ts, &payload);
        prop_assert_eq!(split_timestamped(&row), Some((ts, payload.as_slice())));
        let mut other = row.clone();
        other[0] = format;
        prop_assert_eq!(split_timestamped(&other).is_some(), format == ROW_FORMAT_V1);
        prop_assert_eq!(split_timestamped(&row[..cut]), None);
        if let Some((ts, rest)) = split_timestamped(&garbage) {
            prop_assert_eq!(timestamped(ts, rest), garbage);
        }
    }

    /// Named rows (tc tokens) and length-prefixed key parts: the name
    /// and the rest come back; a truncated prefix or part is refused.
    #[test]
    fn named_rows_and_key_parts_round_trip(
        name in "\\PC{0,40}",
        payload in bytes(64),
        parts in proptest::collection::vec("\\PC{0,12}", 0..4),
        last in bytes(16),
        garbage in bytes(40),
    ) {
        let row = named(&name, &payload).unwrap();
        prop_assert_eq!(split_named(&row), Some((name.as_bytes(), payload.as_slice())));
        // One byte short of the name, or of the length prefix.
        if !name.is_empty() {
            prop_assert_eq!(split_named(&row[..1 + name.len()]), None);
        }
        prop_assert_eq!(split_named(&row[..1]), None);

        let key = composite(0x26, &parts.iter().map(String::as_str).collect::<Vec<_>>(), &last).unwrap();
        prop_assert_eq!(key[0], 0x26);
        let mut rest = &key[1..];
        for part in &parts {
            let (got, after) = split_part(rest).unwrap();
            prop_assert_eq!(got, part.as_bytes());
            rest = after;
        }
        prop_assert_eq!(rest, last.as_slice());
        let _ = split_part(&garbage);
    }
}
