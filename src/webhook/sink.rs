//! The session side: [`Webhooks`] as the sessions' [`EventSink`]. Incoming
//! messages and session events become outbox items (flushed before
//! WhatsApp is acknowledged); a deleted or reassigned session takes its
//! endpoints, queues and dead letters with it.

use std::sync::Arc;

use super::endpoint::{Scope, SessionRef};
use super::payload::{self, Me, WebhookEvent};
use super::{Webhooks, now_ms};
use crate::session::{EventSink, Identity, Owner, SessionEvent};
use crate::wa::InboundMessage;

#[async_trait::async_trait]
impl EventSink for Webhooks {
    async fn messages(
        &self,
        owner: &Owner,
        me: Identity,
        batch: Vec<InboundMessage>,
    ) -> anyhow::Result<()> {
        let (session, tenant) = (owner.session.as_str(), owner.tenant.as_str());
        // Protocol messages (key shares, history-sync notices) are the
        // library's business, not messages anyone sent.
        let sent: Vec<&InboundMessage> = batch
            .iter()
            .filter(|m| m.content.kind != "protocol")
            .collect();
        for _ in &sent {
            crate::metrics::inc_message_received();
        }
        let me = self.me_of(session, me);
        let settings = self.inner.settings();
        let now = now_ms();
        let events: Vec<(WebhookEvent, bool)> = sent
            .into_iter()
            .filter(|m| settings.deliver_status || !m.is_status)
            .map(|m| {
                let mut event = payload::message_event(session, tenant, &me, m, now);
                if let Some(base) = &settings.media_base_url {
                    payload::absolute_media_url(&mut event, base);
                }
                (event, m.from_me)
            })
            .collect();
        let items = self.inner.append(&owner.incarnation, events)?;
        if !items.is_empty() {
            self.inner.store.flush().await?;
            self.inner.after_append(items);
        }
        Ok(())
    }

    fn session_event(&self, event: &SessionEvent) {
        let me = self.me_of(&event.session, Identity::default());
        let Some(webhook) = payload::session_event(event, &me) else {
            return;
        };
        // Written now, in the session's order; flushed right after.
        let items = match self
            .inner
            .append(&event.incarnation, vec![(webhook, false)])
        {
            Ok(items) if !items.is_empty() => items,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(session = %event.session, "webhook outbox: {e}");
                return;
            }
        };
        let inner = Arc::clone(&self.inner);
        // Tracked, not cancelled: the flush makes what is written durable.
        self.inner.scope.spawn(async move {
            if let Err(e) = inner.store.flush().await {
                tracing::error!("flushing the webhook outbox: {e}");
            }
            inner.after_append(items);
        });
    }

    async fn session_deleted(&self, owner: &Owner) -> anyhow::Result<()> {
        let me = SessionRef::new(&owner.session, &owner.incarnation);
        self.delete_session_endpoints(&me).await?;
        // Its queues at every other endpoint (tenant and global) and what
        // died there.
        self.inner
            .purge_session_queues(&owner.session, &owner.incarnation)
            .await?;
        // Every dead letter of this incarnation, at its own endpoints and at
        // the others (one scan; durable on return).
        self.remove_dead_where(|d| {
            d.pending.event.session == owner.session && d.pending.incarnation == owner.incarnation
        })
        .await?;
        Ok(())
    }

    async fn session_reassigned(&self, old: &Owner, _new: &Owner) -> anyhow::Result<()> {
        // Queued deliveries stay in the old tenant's queues and reach the old
        // tenant: they happened while it owned the session.
        let old = SessionRef::new(&old.session, &old.incarnation);
        self.delete_session_endpoints(&old).await?;
        self.remove_dead_where(
            |d| matches!(&d.pending.endpoint.scope, Scope::Session(s) if *s == old),
        )
        .await?;
        Ok(())
    }
}

impl Webhooks {
    pub(super) fn me_of(&self, session: &str, live: Identity) -> Me {
        if !live.phone.is_empty() {
            return live.into();
        }
        match self.inner.store.get_record(session) {
            Ok(Some(r)) => Me {
                phone: r.phone,
                jid: r.jid,
                lid: r.lid,
            },
            _ => live.into(),
        }
    }
}
