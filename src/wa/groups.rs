//! The groups a session's account is in, in whatsd's terms: who is in them,
//! with each member's phone number whenever the client knows it.

use serde::Serialize;
use utoipa::ToSchema;
use whatsapp_rust::wacore::types::message::AddressingMode;
use whatsapp_rust::{
    GroupCreateOptions, GroupError, GroupMetadata, GroupParticipant, GroupParticipantOptions, Jid,
    ParticipantChangeResponse,
};

use super::inbound::lid_and_phone;
use super::{Queries, WaError};

/// A group chat.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Group {
    /// `<digits>@g.us`.
    pub jid: String,
    pub subject: String,
    pub description: Option<String>,
    /// Who created it, when WhatsApp says.
    pub creator: Option<Person>,
    /// Unix seconds.
    pub created_at: Option<u64>,
    /// `lid` when WhatsApp names members by LID (phone numbers hidden
    /// unless known), otherwise `pn`.
    #[schema(value_type = String, example = "pn")]
    pub addressing_mode: &'static str,
    /// Number of participants.
    pub size: usize,
    pub participants: Vec<Participant>,
}

/// One person, by every id known for them.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Person {
    /// The id WhatsApp uses for them in this group.
    pub jid: String,
    /// Digits with country code; `null` while only the LID is known.
    pub phone: Option<String>,
    /// `<digits>@lid`, when known.
    pub lid: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Participant {
    #[serde(flatten)]
    pub person: Person,
    /// An admin (the creator and other super admins included).
    pub admin: bool,
    pub super_admin: bool,
}

impl Queries {
    /// Every group the account is in, by JID.
    pub async fn list(&self) -> Result<Vec<Group>, WaError> {
        let groups = self
            .0
            .groups()
            .get_participating()
            .await
            .map_err(|e| query_error("listing groups", e))?;
        let mut groups: Vec<Group> = groups.values().map(group).collect();
        groups.sort_by(|a, b| a.jid.cmp(&b.jid));
        Ok(groups)
    }

    /// Group `jid` (`<digits>@g.us`), fresh from WhatsApp.
    pub async fn get(&self, jid: &str) -> Result<Group, WaError> {
        let parsed = parse_group_jid(jid)?;
        self.0
            .groups()
            .get_metadata(&parsed)
            .await
            .map(|meta| group(&meta))
            .map_err(|e| match iq_code(&e) {
                Some(404 | 403) => WaError::GroupNotFound(jid.to_owned()),
                _ => query_error("reading the group", e),
            })
    }
}

/// What to do to some of a group's members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MemberAction {
    Add,
    Remove,
    Promote,
    Demote,
}

/// How one person fared in a [`MemberAction`].
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MemberOutcome {
    /// The JID WhatsApp answered for them.
    pub jid: String,
    pub phone: Option<String>,
    /// `null` when done; else WhatsApp's error code (e.g. `403`: their
    /// privacy settings do not allow it, `404`: not on WhatsApp or not in
    /// the group, `409`: already in it).
    pub error: Option<String>,
}

impl Queries {
    /// Creates a group named `subject` with the account (as its super
    /// admin) and `members` (phone-number JIDs).
    pub async fn create(&self, subject: &str, members: &[Jid]) -> Result<Group, WaError> {
        let options = GroupCreateOptions::builder()
            .subject(subject)
            .participants(
                members
                    .iter()
                    .map(|jid| GroupParticipantOptions::new(jid.clone()))
                    .collect(),
            )
            .build();
        self.0
            .groups()
            .create_group(options)
            .await
            .map(|created| group(&created.metadata))
            .map_err(|e| query_error("creating the group", e))
    }

    /// Adds, removes, promotes or demotes `members` of group `jid`.
    pub async fn change(
        &self,
        jid: &str,
        action: MemberAction,
        members: &[Jid],
    ) -> Result<Vec<MemberOutcome>, WaError> {
        let group = parse_group_jid(jid)?;
        let groups = self.0.groups();
        let answered = match action {
            MemberAction::Add => groups.add_participants(group, members).await,
            MemberAction::Remove => groups.remove_participants(group, members).await,
            MemberAction::Promote => groups.promote_participants(group, members).await,
            MemberAction::Demote => groups.demote_participants(group, members).await,
        };
        match answered {
            Ok(list) => Ok(list.iter().map(outcome).collect()),
            Err(e) => Err(match iq_code(&e) {
                Some(404) => WaError::GroupNotFound(jid.to_owned()),
                Some(403 | 401) => WaError::NotAllowed(format!(
                    "WhatsApp refused: the account is not an admin of {jid}"
                )),
                _ => query_error("changing members", e),
            }),
        }
    }

    /// The account leaves group `jid`.
    pub async fn leave(&self, jid: &str) -> Result<(), WaError> {
        let group = parse_group_jid(jid)?;
        self.0
            .groups()
            .leave(group)
            .await
            .map_err(|e| match iq_code(&e) {
                Some(404 | 403) => WaError::GroupNotFound(jid.to_owned()),
                _ => query_error("leaving the group", e),
            })
    }
}

fn outcome(answer: &ParticipantChangeResponse) -> MemberOutcome {
    let (_, phone) = lid_and_phone(std::iter::once(&answer.jid).chain(answer.phone_number.iter()));
    MemberOutcome {
        jid: answer.jid.to_non_ad_string(),
        phone: (!phone.is_empty()).then_some(phone),
        error: answer.error.clone(),
    }
}

/// `<digits>@g.us`.
pub fn parse_group_jid(jid: &str) -> Result<Jid, WaError> {
    let bad = || WaError::BadGroup(jid.to_owned());
    let digits = jid.strip_suffix("@g.us").ok_or_else(bad)?;
    if !(1..=40).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    jid.parse::<Jid>().map_err(|_| bad())
}

fn iq_code(e: &GroupError) -> Option<u16> {
    match e {
        GroupError::Iq(whatsapp_rust::request::IqError::ServerError { code, .. }) => Some(*code),
        _ => None,
    }
}

fn query_error(what: &str, e: GroupError) -> WaError {
    WaError::Query(format!("{what}: {e}"))
}

fn group(meta: &GroupMetadata) -> Group {
    let creator = meta.creator.as_ref().map(|creator| {
        person(
            creator,
            std::iter::once(creator).chain(meta.creator_pn.as_ref()),
        )
    });
    Group {
        jid: meta.id.to_non_ad_string(),
        subject: meta.subject.clone(),
        description: meta.description.clone(),
        creator,
        created_at: meta.creation_time,
        addressing_mode: match meta.addressing_mode {
            AddressingMode::Lid => "lid",
            AddressingMode::Pn => "pn",
        },
        size: meta.participants.len(),
        participants: meta.participants.iter().map(participant).collect(),
    }
}

fn participant(p: &GroupParticipant) -> Participant {
    let ids = std::iter::once(&p.jid)
        .chain(p.phone_number.as_ref())
        .chain(p.lid.as_ref());
    Participant {
        person: person(&p.jid, ids),
        admin: p.is_admin(),
        super_admin: p.is_super_admin(),
    }
}

fn person<'a>(jid: &Jid, ids: impl IntoIterator<Item = &'a Jid>) -> Person {
    let (lid, phone) = lid_and_phone(ids);
    Person {
        jid: jid.to_non_ad_string(),
        phone: (!phone.is_empty()).then_some(phone),
        lid: (!lid.is_empty()).then_some(lid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_jids() {
        assert!(parse_group_jid("120363000000000001@g.us").is_ok());
        for bad in [
            "",
            "@g.us",
            "120363@s.whatsapp.net",
            "12a@g.us",
            "120363000000000001",
            &format!("{}@g.us", "1".repeat(41)),
        ] {
            assert!(
                matches!(parse_group_jid(bad), Err(WaError::BadGroup(_))),
                "{bad}"
            );
        }
    }
}
