//! Token-bucket rate limits per session: sends per minute, hour and day,
//! and pairing attempts (QR pairings started, pairing codes asked for,
//! resets) per hour. Keeping a number under WhatsApp's radar is the point:
//! a new number that sends hundreds of messages at once gets banned.
//!
//! The math is GCRA, the integer form of a token bucket: a bucket of `limit`
//! tokens over `window` refills one token every `window / limit` (rounded
//! up, so never faster than the limit) and keeps one instant, the
//! "theoretical arrival time" (`tat`): the bucket is full when `tat <= now`
//! and each token taken pushes `tat` one period on. Every function takes
//! the time as an argument (the clock is the caller's), so the math is
//! tested without waiting; [`now_ms`] is the daemon's clock.
//!
//! What is limited, in what order: defaults from the config
//! ([`Limits::default`] is the documented default), then a tenant's
//! override, then a session's ([`LimitOverride`]), each field by field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The largest limit an override may set (per window).
pub const MAX_LIMIT: u32 = 1_000_000;

/// One kind of bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Bucket {
    SendsPerMinute,
    SendsPerHour,
    SendsPerDay,
    QrPerHour,
    PairCodesPerHour,
    ResetsPerHour,
}

impl Bucket {
    pub const ALL: [Bucket; 6] = [
        Bucket::SendsPerMinute,
        Bucket::SendsPerHour,
        Bucket::SendsPerDay,
        Bucket::QrPerHour,
        Bucket::PairCodesPerHour,
        Bucket::ResetsPerHour,
    ];

    /// The buckets every send takes a token from.
    pub const SENDS: [Bucket; 3] = [
        Bucket::SendsPerMinute,
        Bucket::SendsPerHour,
        Bucket::SendsPerDay,
    ];

    /// Its name in the API, the config, metrics and the store.
    pub const fn as_str(self) -> &'static str {
        match self {
            Bucket::SendsPerMinute => "sends_per_minute",
            Bucket::SendsPerHour => "sends_per_hour",
            Bucket::SendsPerDay => "sends_per_day",
            Bucket::QrPerHour => "qr_per_hour",
            Bucket::PairCodesPerHour => "pair_codes_per_hour",
            Bucket::ResetsPerHour => "resets_per_hour",
        }
    }

    pub const fn window_ms(self) -> i64 {
        match self {
            Bucket::SendsPerMinute => 60_000,
            Bucket::SendsPerDay => 86_400_000,
            _ => 3_600_000,
        }
    }
}

/// The limits in force: tokens per window for each bucket (also the
/// config's `[limits]` section).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub sends_per_minute: u32,
    pub sends_per_hour: u32,
    pub sends_per_day: u32,
    pub qr_per_hour: u32,
    pub pair_codes_per_hour: u32,
    pub resets_per_hour: u32,
    /// Queued sends look typed by a person: "typing…" for a random 1–3 s
    /// before each, and a random 0.5–2 s gap after.
    pub human_pacing: bool,
}

impl Default for Limits {
    /// Conservative, for a number new to sending.
    fn default() -> Self {
        Self {
            sends_per_minute: 20,
            sends_per_hour: 200,
            sends_per_day: 1_000,
            qr_per_hour: 10,
            pair_codes_per_hour: 5,
            resets_per_hour: 5,
            human_pacing: false,
        }
    }
}

impl Limits {
    pub fn get(&self, bucket: Bucket) -> u32 {
        match bucket {
            Bucket::SendsPerMinute => self.sends_per_minute,
            Bucket::SendsPerHour => self.sends_per_hour,
            Bucket::SendsPerDay => self.sends_per_day,
            Bucket::QrPerHour => self.qr_per_hour,
            Bucket::PairCodesPerHour => self.pair_codes_per_hour,
            Bucket::ResetsPerHour => self.resets_per_hour,
        }
    }

    /// These limits with `over`'s fields in place of theirs.
    pub fn with(mut self, over: &LimitOverride) -> Self {
        let pick = |o: Option<u32>, v: u32| o.unwrap_or(v);
        self.sends_per_minute = pick(over.sends_per_minute, self.sends_per_minute);
        self.sends_per_hour = pick(over.sends_per_hour, self.sends_per_hour);
        self.sends_per_day = pick(over.sends_per_day, self.sends_per_day);
        self.qr_per_hour = pick(over.qr_per_hour, self.qr_per_hour);
        self.pair_codes_per_hour = pick(over.pair_codes_per_hour, self.pair_codes_per_hour);
        self.resets_per_hour = pick(over.resets_per_hour, self.resets_per_hour);
        self.human_pacing = over.human_pacing.unwrap_or(self.human_pacing);
        self
    }

    /// Whether every limit is in `1..=MAX_LIMIT`; the error names the first
    /// one that is not.
    pub fn check(&self) -> Result<(), String> {
        for bucket in Bucket::ALL {
            let v = self.get(bucket);
            if !(1..=MAX_LIMIT).contains(&v) {
                return Err(format!(
                    "{} = {v}: a limit is a whole number from 1 to {MAX_LIMIT}",
                    bucket.as_str()
                ));
            }
        }
        Ok(())
    }
}

/// Limits set for a tenant or a session through the API; a field left out
/// (or `null`) keeps the limit below it (tenant's, then the config's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub sends_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub sends_per_hour: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub sends_per_day: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub qr_per_hour: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub pair_codes_per_hour: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub resets_per_hour: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub human_pacing: Option<bool>,
}

impl LimitOverride {
    /// Every field set is in `1..=MAX_LIMIT`.
    pub fn check(&self) -> Result<(), String> {
        Limits::default().with(self).check()
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The state of a session's buckets: each one's theoretical arrival time
/// (ms since the epoch); a bucket not named is full.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Levels {
    #[serde(default)]
    tat_ms: BTreeMap<String, i64>,
}

/// One bucket as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BucketView {
    /// `sends_per_minute`, `sends_per_hour`, `sends_per_day`,
    /// `qr_per_hour`, `pair_codes_per_hour` or `resets_per_hour`.
    pub name: String,
    /// Tokens per window.
    pub limit: u32,
    pub window_seconds: u64,
    /// Tokens left now.
    pub remaining: u32,
    /// Seconds until the next token (0 when full).
    pub next_token_seconds: u64,
    /// Seconds until the bucket is full again.
    pub full_seconds: u64,
}

/// A refusal: the bucket that is empty and when it has a token again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exhausted {
    pub bucket: Bucket,
    pub limit: u32,
    /// Milliseconds until a token is there.
    pub retry_after_ms: i64,
    /// Milliseconds until the bucket is full again.
    pub full_ms: i64,
}

impl Exhausted {
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after_ms).max(1)
    }

    pub fn full_secs(&self) -> u64 {
        ceil_secs(self.full_ms).max(1)
    }
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rate limit {} ({} per {} s) reached; next token in {} s",
            self.bucket.as_str(),
            self.limit,
            self.bucket.window_ms() / 1000,
            self.retry_after_secs()
        )
    }
}

/// A session's limits as `GET /v1/sessions/{id}/limits` shows them.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct LimitsView {
    pub session: String,
    pub tenant: String,
    /// The limits in force: the config's, then the tenant's override, then
    /// the session's.
    pub limits: Limits,
    /// The tenant's limits (the config's with the tenant's override): a
    /// tenant token may set its session's limits up to these, not above.
    pub tenant_limits: Limits,
    /// Set for the tenant (`PUT /v1/tenants/{id}/limits`).
    pub tenant_override: Option<LimitOverride>,
    /// Set for this session (`PUT /v1/sessions/{id}/limits`).
    pub session_override: Option<LimitOverride>,
    /// Each bucket now.
    pub buckets: Vec<BucketView>,
}

fn ceil_secs(ms: i64) -> u64 {
    (ms.max(0) as u64).div_ceil(1000)
}

/// Milliseconds between two tokens of a bucket (never 0).
fn period_ms(bucket: Bucket, limit: u32) -> i64 {
    let limit = i64::from(limit.max(1));
    (bucket.window_ms() + limit - 1) / limit
}

impl Levels {
    fn tat(&self, bucket: Bucket) -> i64 {
        self.tat_ms.get(bucket.as_str()).copied().unwrap_or(0)
    }

    /// Tokens left in `bucket` at `now`.
    pub fn remaining(&self, bucket: Bucket, limit: u32, now: i64) -> u32 {
        let period = period_ms(bucket, limit);
        let owed = (self.tat(bucket) - now).max(0);
        let used = (owed + period - 1) / period;
        (i64::from(limit) - used).clamp(0, i64::from(limit)) as u32
    }

    /// How `bucket` looks at `now` under `limit`.
    pub fn view(&self, bucket: Bucket, limit: u32, now: i64) -> BucketView {
        let period = period_ms(bucket, limit);
        let owed = (self.tat(bucket) - now).max(0);
        let remaining = self.remaining(bucket, limit, now);
        let next = if owed == 0 {
            0
        } else if remaining == 0 {
            self.wait_ms(bucket, limit, now)
        } else {
            (owed - 1) % period + 1
        };
        BucketView {
            name: bucket.as_str().to_owned(),
            limit,
            window_seconds: (bucket.window_ms() / 1000) as u64,
            remaining,
            next_token_seconds: ceil_secs(next),
            full_seconds: ceil_secs(owed),
        }
    }

    /// Milliseconds until `bucket` has a token (0: it has one now).
    fn wait_ms(&self, bucket: Bucket, limit: u32, now: i64) -> i64 {
        let period = period_ms(bucket, limit);
        let burst = period * (i64::from(limit) - 1);
        (self.tat(bucket) - now - burst).max(0)
    }

    /// Whether each of `buckets` has a token at `now`; the refusal names
    /// the one that waits longest.
    pub fn check(&self, buckets: &[Bucket], limits: &Limits, now: i64) -> Result<(), Exhausted> {
        let worst = buckets
            .iter()
            .map(|&b| (b, self.wait_ms(b, limits.get(b), now)))
            .max_by_key(|&(_, wait)| wait);
        match worst {
            Some((bucket, wait)) if wait > 0 => Err(Exhausted {
                bucket,
                limit: limits.get(bucket),
                retry_after_ms: wait,
                full_ms: (self.tat(bucket) - now).max(0),
            }),
            _ => Ok(()),
        }
    }

    /// Takes a token from each of `buckets` if all have one.
    pub fn take(&mut self, buckets: &[Bucket], limits: &Limits, now: i64) -> Result<(), Exhausted> {
        self.check(buckets, limits, now)?;
        for &bucket in buckets {
            let tat = self.tat(bucket).max(now) + period_ms(bucket, limits.get(bucket));
            self.tat_ms.insert(bucket.as_str().to_owned(), tat);
        }
        Ok(())
    }

    /// How full `bucket` is at `now`, from 0 (empty) to 1 (full).
    pub fn ratio(&self, bucket: Bucket, limit: u32, now: i64) -> f64 {
        f64::from(self.remaining(bucket, limit, now)) / f64::from(limit.max(1))
    }
}

/// The daemon's clock for limits: milliseconds since the epoch. In debug
/// builds the `limits.clock_skew_file` fault adds the number of
/// milliseconds written in that file, so a test moves time on without
/// waiting (see [`crate::fault`]).
pub fn now_ms() -> i64 {
    super::now_ms() + crate::fault::skew_ms("limits.clock_skew_file")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn limits(per_minute: u32) -> Limits {
        Limits {
            sends_per_minute: per_minute,
            ..Limits::default()
        }
    }

    #[test]
    fn a_full_bucket_gives_its_limit_then_refuses() {
        let l = limits(5);
        let mut levels = Levels::default();
        let now = 1_000_000;
        for i in 0..5 {
            assert_eq!(levels.remaining(Bucket::SendsPerMinute, 5, now), 5 - i);
            levels.take(&Bucket::SENDS, &l, now).unwrap();
        }
        let refused = levels.take(&Bucket::SENDS, &l, now).unwrap_err();
        assert_eq!(refused.bucket, Bucket::SendsPerMinute);
        assert_eq!(refused.retry_after_ms, MIN / 5);
        assert_eq!(refused.full_ms, MIN);
        assert_eq!(levels.remaining(Bucket::SendsPerHour, 200, now), 195);
        let view = levels.view(Bucket::SendsPerMinute, 5, now);
        assert_eq!(
            (view.remaining, view.next_token_seconds, view.full_seconds),
            (0, 12, 60)
        );
    }

    #[test]
    fn tokens_come_back_one_period_at_a_time() {
        let l = limits(5);
        let mut levels = Levels::default();
        let now = 0;
        for _ in 0..5 {
            levels.take(&Bucket::SENDS, &l, now).unwrap();
        }
        assert!(levels.check(&Bucket::SENDS, &l, now + 11_999).is_err());
        assert!(levels.check(&Bucket::SENDS, &l, now + 12_000).is_ok());
        assert_eq!(levels.remaining(Bucket::SendsPerMinute, 5, now + 12_000), 1);
        let view = levels.view(Bucket::SendsPerMinute, 5, now + 13_000);
        assert_eq!((view.remaining, view.next_token_seconds), (1, 11));
        assert_eq!(levels.remaining(Bucket::SendsPerMinute, 5, now + MIN), 5);
        assert_eq!(
            levels.remaining(Bucket::SendsPerMinute, 5, now + 10 * MIN),
            5
        );
    }

    #[test]
    fn never_faster_than_the_limit_over_a_window() {
        // 7 per minute does not divide the minute: the period rounds up.
        let l = limits(7);
        let mut levels = Levels::default();
        let mut sent = 0;
        let mut now = 0;
        while now < 10 * MIN {
            if levels.take(&[Bucket::SendsPerMinute], &l, now).is_ok() {
                sent += 1;
            }
            now += 250;
        }
        assert!(sent <= 7 * 10 + 7, "{sent} sends in ten minutes");
        assert!(sent >= 7 * 10, "{sent} sends in ten minutes");
    }

    #[test]
    fn the_longest_wait_is_named() {
        let l = Limits {
            sends_per_minute: 100,
            sends_per_hour: 2,
            ..Limits::default()
        };
        let mut levels = Levels::default();
        levels.take(&Bucket::SENDS, &l, 0).unwrap();
        levels.take(&Bucket::SENDS, &l, 0).unwrap();
        let refused = levels.check(&Bucket::SENDS, &l, 0).unwrap_err();
        assert_eq!(refused.bucket, Bucket::SendsPerHour);
        assert_eq!(refused.retry_after_secs(), 1800);
    }

    #[test]
    fn a_lowered_limit_does_not_underflow() {
        let mut levels = Levels::default();
        for _ in 0..20 {
            levels.take(&Bucket::SENDS, &Limits::default(), 0).unwrap();
        }
        assert_eq!(levels.remaining(Bucket::SendsPerMinute, 2, 0), 0);
        assert!(levels.check(&Bucket::SENDS, &limits(2), 0).is_err());
        assert_eq!(levels.remaining(Bucket::SendsPerMinute, 2, 10 * MIN), 2);
    }

    #[test]
    fn overrides_apply_field_by_field_and_are_checked() {
        let tenant = LimitOverride {
            sends_per_minute: Some(5),
            sends_per_day: Some(50),
            ..Default::default()
        };
        let session = LimitOverride {
            sends_per_day: Some(40),
            ..Default::default()
        };
        let l = Limits::default().with(&tenant).with(&session);
        assert_eq!(
            (l.sends_per_minute, l.sends_per_hour, l.sends_per_day),
            (5, 200, 40)
        );
        assert!(tenant.check().is_ok());
        let zero = LimitOverride {
            qr_per_hour: Some(0),
            ..Default::default()
        };
        assert!(zero.check().unwrap_err().contains("qr_per_hour"));
        let huge = LimitOverride {
            sends_per_day: Some(MAX_LIMIT + 1),
            ..Default::default()
        };
        assert!(huge.check().is_err());
        assert!(LimitOverride::default().is_empty());
    }

    #[test]
    fn levels_round_trip_and_tolerate_unknown_buckets() {
        let mut levels = Levels::default();
        levels.take(&Bucket::SENDS, &Limits::default(), 5).unwrap();
        let raw = serde_json::to_vec(&levels).unwrap();
        assert_eq!(serde_json::from_slice::<Levels>(&raw).unwrap(), levels);
        let old: Levels = serde_json::from_str(r#"{"tat_ms":{"gone":9}}"#).unwrap();
        assert_eq!(old.remaining(Bucket::SendsPerDay, 1000, 0), 1000);
    }
}
