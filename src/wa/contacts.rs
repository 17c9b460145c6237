//! Which phone numbers are on WhatsApp.

use serde::Serialize;
use utoipa::ToSchema;
use whatsapp_rust::Jid;

use super::inbound::lid_and_phone;
use super::{Queries, WaError};

/// One number's answer.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct NumberCheck {
    /// Digits with country code, as asked.
    pub phone: String,
    pub on_whatsapp: bool,
    /// `<digits>@s.whatsapp.net` when on WhatsApp.
    pub jid: Option<String>,
    /// `<digits>@lid` when WhatsApp told it.
    pub lid: Option<String>,
}

impl Queries {
    /// Asks WhatsApp which of `phones` (digits with country code) are on it;
    /// one answer per phone, in the order asked.
    pub async fn on_whatsapp(&self, phones: &[String]) -> Result<Vec<NumberCheck>, WaError> {
        let jids: Vec<Jid> = phones.iter().map(Jid::pn).collect();
        let answers = self
            .0
            .contacts()
            .is_on_whatsapp(&jids)
            .await
            .map_err(|e| WaError::Query(format!("checking numbers: {e}")))?;
        Ok(phones
            .iter()
            .map(|phone| {
                let answer = answers.iter().find(|a| {
                    let (_, p) = lid_and_phone(std::iter::once(&a.jid).chain(a.pn_jid.iter()));
                    p == *phone
                });
                match answer {
                    Some(a) if a.is_registered => NumberCheck {
                        phone: phone.clone(),
                        on_whatsapp: true,
                        jid: Some(Jid::pn(phone).to_string()),
                        lid: a.lid.as_ref().map(Jid::to_non_ad_string),
                    },
                    _ => NumberCheck {
                        phone: phone.clone(),
                        on_whatsapp: false,
                        jid: None,
                        lid: None,
                    },
                }
            })
            .collect())
    }
}
