//! The session's rate limits, as its actor applies them: which limits are
//! in force (config, tenant, session), the state of its buckets (kept in
//! memory, written to the store after each token taken), and taking tokens
//! for sends and pairing attempts.

use super::Actor;
use crate::session::SupervisorError;
use crate::session::limits::{self, Bucket, Exhausted, Levels, LimitOverride, Limits, LimitsView};

const OVERRIDE: &[u8] = b"override";
const LEVELS: &[u8] = b"levels";

impl Actor {
    fn limits_key(&self, what: &[u8]) -> Vec<u8> {
        [self.outbound_prefix().as_slice(), what].concat()
    }

    fn read_override(&self, key: &[u8]) -> Result<Option<LimitOverride>, SupervisorError> {
        Ok(self
            .shared
            .store
            .send_limits(key)?
            .and_then(|raw| serde_json::from_slice(&raw).ok()))
    }

    /// The tenant's and the session's overrides.
    fn overrides(&self) -> Result<(Option<LimitOverride>, Option<LimitOverride>), SupervisorError> {
        let tenant_key = self.shared.store.tenant_limits_key(&self.record.tenant);
        Ok((
            self.read_override(&tenant_key)?,
            self.read_override(&self.limits_key(OVERRIDE))?,
        ))
    }

    /// The limits in force; the config's alone when the store cannot say.
    pub(super) fn limits(&self) -> Limits {
        let base = self.config().limits;
        match self.overrides() {
            Ok((tenant, session)) => base
                .with(&tenant.unwrap_or_default())
                .with(&session.unwrap_or_default()),
            Err(e) => {
                tracing::warn!(session = %self.record.id, "reading the rate limits: {e}");
                base
            }
        }
    }

    /// The bucket state, read from the store the first time.
    fn levels(&mut self) -> &mut Levels {
        if self.levels.is_none() {
            let stored = match self.shared.store.send_limits(&self.limits_key(LEVELS)) {
                Ok(raw) => raw.and_then(|raw| serde_json::from_slice(&raw).ok()),
                Err(e) => {
                    tracing::warn!(session = %self.record.id, "reading the rate-limit buckets: {e}");
                    None
                }
            };
            self.levels = Some(stored.unwrap_or_default());
        }
        self.levels.get_or_insert_with(Levels::default)
    }

    /// Whether each of `buckets` has a token now.
    pub(super) fn check_tokens(&mut self, buckets: &[Bucket]) -> Result<(), Exhausted> {
        let limits = self.limits();
        let now = limits::now_ms();
        self.levels().check(buckets, &limits, now)
    }

    /// Takes a token from each of `buckets`, or refuses (`rate_limited`)
    /// when one is empty.
    pub(super) async fn take_tokens(&mut self, buckets: &[Bucket]) -> Result<(), SupervisorError> {
        let limits = self.limits();
        let now = limits::now_ms();
        if let Err(exhausted) = self.levels().take(buckets, &limits, now) {
            tracing::info!(session = %self.record.id, "{exhausted}");
            crate::metrics::inc_rate_limited(exhausted.bucket.as_str(), "refused");
            return Err(SupervisorError::RateLimited(exhausted));
        }
        self.store_levels(&limits).await;
        Ok(())
    }

    async fn store_levels(&mut self, limits: &Limits) {
        let key = self.limits_key(LEVELS);
        let levels = self.levels().clone();
        crate::metrics::set_session_buckets(&self.record.id, limits, &levels);
        if let Ok(raw) = serde_json::to_vec(&levels)
            && let Err(e) = self
                .shared
                .store
                .send_limits_put(&key, Some(&raw), false)
                .await
        {
            tracing::warn!(session = %self.record.id, "recording the rate-limit buckets: {e}");
        }
    }

    /// The limits and each bucket now. A look also re-plans a queue that
    /// waits for tokens (the limits or the clock may have moved).
    pub(super) fn limits_view(&mut self) -> Result<LimitsView, SupervisorError> {
        let (tenant_override, session_override) = self.overrides()?;
        let tenant_limits = self
            .config()
            .limits
            .with(&tenant_override.unwrap_or_default());
        let limits = tenant_limits.with(&session_override.unwrap_or_default());
        let now = limits::now_ms();
        let levels = self.levels().clone();
        crate::metrics::set_session_buckets(&self.record.id, &limits, &levels);
        if self.drain_at.is_some() {
            self.drain_at = Some(tokio::time::Instant::now());
        }
        Ok(LimitsView {
            session: self.record.id.clone(),
            tenant: self.record.tenant.clone(),
            limits,
            tenant_limits,
            tenant_override,
            session_override,
            buckets: Bucket::ALL
                .iter()
                .map(|&b| levels.view(b, limits.get(b), now))
                .collect(),
        })
    }

    /// Sets (or with `None` removes) this session's own limits.
    pub(super) async fn set_limits(
        &mut self,
        over: Option<LimitOverride>,
    ) -> Result<LimitsView, SupervisorError> {
        if let Some(over) = &over {
            over.check().map_err(SupervisorError::BadRequest)?;
        }
        let raw = over
            .filter(|o| !o.is_empty())
            .map(|o| serde_json::to_vec(&o))
            .transpose()
            .map_err(|e| SupervisorError::BadRequest(e.to_string()))?;
        self.shared
            .store
            .send_limits_put(&self.limits_key(OVERRIDE), raw.as_deref(), true)
            .await?;
        // New limits may let the queue go on now.
        if self.state() == crate::session::SessionState::Connected {
            self.drain_at = Some(tokio::time::Instant::now());
        }
        self.limits_view()
    }
}
