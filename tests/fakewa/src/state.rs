//! What fakewa remembers: its Noise key, the accounts ("phones") and the
//! devices linked to them, with the Signal bundle each device uploaded.
//!
//! With a state dir, everything here is written to disk on every change
//! (one file for the server, one per device, each replaced atomically), so a
//! restarted fakewa still knows its devices.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::peer::DeviceBundle;
use crate::phone::AccountKey;

/// First phone number handed out when a scan names none.
const FIRST_PHONE: u64 = 15_550_100_000;
/// First LID user handed out.
const FIRST_LID: u64 = 100_000_000_000_001;

#[derive(Serialize, Deserialize)]
pub struct ServerState {
    pub server_private: [u8; 32],
    pub next_phone: u64,
    pub next_lid: u64,
    pub accounts: BTreeMap<String, Account>,
    /// Groups by their id (the user part of `<id>@g.us`).
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
    #[serde(default = "first_group")]
    pub next_group: u64,
    /// LIDs handed to contacts that are not accounts (group members).
    #[serde(default)]
    pub contact_lids: BTreeMap<String, String>,
    /// Each phone's address book, synced to its devices as app state.
    #[serde(default)]
    pub address_books: BTreeMap<String, crate::appstate::StoredBook>,
}

/// First group id handed out (real ones look like `120363…`).
const FIRST_GROUP: u64 = 120_363_000_000_000_001;

fn first_group() -> u64 {
    FIRST_GROUP
}

/// A group chat.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Group {
    /// The user part of the group's JID (`<id>@g.us`).
    pub id: String,
    pub subject: String,
    pub description: Option<String>,
    /// The creator's phone.
    pub creator: String,
    pub created: u64,
    pub members: Vec<Member>,
}

impl Group {
    pub fn jid(&self) -> String {
        format!("{}@g.us", self.id)
    }

    /// A group with a member known only by LID is LID-addressed, as real
    /// groups with hidden phone numbers are.
    pub fn lid_addressed(&self) -> bool {
        self.members.iter().any(|m| m.lid_only)
    }

    pub fn member(&self, phone: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.phone == phone)
    }
}

/// A group member: a fakewa contact or account, by phone.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Member {
    pub phone: String,
    pub lid: String,
    pub role: MemberRole,
    /// The group shows this member's LID but not its phone number.
    #[serde(default)]
    pub lid_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    Member,
    Admin,
    Superadmin,
}

impl MemberRole {
    /// The participant's `type` attribute (a plain member has none).
    pub fn wire_type(self) -> Option<&'static str> {
        match self {
            Self::Member => None,
            Self::Admin => Some("admin"),
            Self::Superadmin => Some("superadmin"),
        }
    }
}

/// A WhatsApp account: the primary phone and its identity.
#[derive(Clone, Serialize, Deserialize)]
pub struct Account {
    pub phone: String,
    pub lid: String,
    /// The phone's ADV account key; also its Signal identity as device 0.
    pub account_key: AccountKey,
    pub next_device_id: u16,
}

/// A linked (companion) device.
#[derive(Clone, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub phone: String,
    pub device_id: u16,
    pub noise_pub: [u8; 32],
    pub bundle: DeviceBundle,
    pub removed: bool,
    pub push_name: String,
    pub paired_at: u64,
    /// Messages for this device the client has not acknowledged with a receipt.
    #[serde(default)]
    pub queue: VecDeque<QueuedMessage>,
}

impl DeviceRecord {
    pub fn key(&self) -> DeviceKey {
        DeviceKey {
            phone: self.phone.clone(),
            device: self.device_id,
        }
    }

    pub fn jid(&self) -> String {
        format!("{}:{}@s.whatsapp.net", self.phone, self.device_id)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceKey {
    pub phone: String,
    pub device: u16,
}

impl std::fmt::Display for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.phone, self.device)
    }
}

/// What kind of inbound message a test asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A direct message from a contact.
    Dm,
    /// A message the account's own phone sent to a contact.
    FromMe,
    /// A `status@broadcast` post by a contact.
    Status,
    /// A message a contact posted in a group (`QueuedMessage::group`).
    Group,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueuedMessage {
    pub id: String,
    pub kind: MessageKind,
    /// The contact: the sender for `dm`/`status`, the recipient for `from_me`.
    pub contact: String,
    pub text: String,
    pub timestamp: u64,
    /// Set when this entry is not a text but the app-state sync key the
    /// account's own phone shares with a newly linked device (`contact` is
    /// then the account's own number). Queued like any message, so it is
    /// resent on every login until the device acknowledges it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_state_key: Option<AppStateKey>,
    /// Set when this entry is not a message but a contact's receipt for a
    /// message the account sent (`contact` sent it). Queued like a message,
    /// so a device offline when the contact read gets it on its next login,
    /// until the device acknowledges it (`<ack class="receipt">`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<QueuedReceipt>,
    /// The group's id for a `group` message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Set when this entry is a `w:gp2` notification about a group (not
    /// encrypted; dequeued by the device's `<ack class="notification">`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<GroupNotice>,
    /// Set for a contact's DM that is not a plain text (media): the
    /// encoded `waproto` Message to send instead of `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<Vec<u8>>,
}

/// A change to a group, told to its members' devices.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupNotice {
    /// The group as it is after the change (for its addressing mode).
    pub group: Group,
    /// Who made the change.
    pub by: Member,
    pub change: GroupChange,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupChange {
    /// `add`, `remove`, `promote` or `demote`.
    Participants {
        action: String,
        members: Vec<Member>,
    },
    Subject(String),
    Description(Option<String>),
}

/// A receipt a contact sends for a message the account sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedReceipt {
    pub message_id: String,
    pub status: ReceiptStatus,
}

/// What a receipt says about a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    Delivered,
    Read,
    Played,
}

impl ReceiptStatus {
    /// The receipt's `type` attribute (a delivery receipt has none).
    pub fn wire_type(self) -> Option<&'static str> {
        match self {
            Self::Delivered => None,
            Self::Read => Some("read"),
            Self::Played => Some("played"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Played => "played",
        }
    }
}

impl QueuedMessage {
    /// `contact`'s receipt for message `message_id` of the account.
    pub fn receipt(contact: &str, message_id: &str, status: ReceiptStatus, timestamp: u64) -> Self {
        Self {
            id: format!("receipt-{}-{message_id}", status.name()),
            kind: MessageKind::Dm,
            contact: contact.to_owned(),
            text: String::new(),
            timestamp,
            app_state_key: None,
            receipt: Some(QueuedReceipt {
                message_id: message_id.to_owned(),
                status,
            }),
            group: None,
            notice: None,
            proto: None,
        }
    }
}

/// An app-state sync key, fixed when queued so every resend carries the same key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AppStateKey {
    pub key_id: [u8; 6],
    pub key_data: [u8; 32],
}

impl QueuedMessage {
    /// The phone's app-state key share (`key`) for a device of `phone`.
    pub fn app_state_key_share(id: String, phone: &str, key: AppStateKey, timestamp: u64) -> Self {
        Self {
            id,
            kind: MessageKind::FromMe,
            contact: phone.to_owned(),
            text: String::new(),
            timestamp,
            app_state_key: Some(key),
            receipt: None,
            group: None,
            notice: None,
            proto: None,
        }
    }
}

pub struct State {
    pub server: ServerState,
    pub devices: BTreeMap<DeviceKey, DeviceRecord>,
    dir: Option<PathBuf>,
}

impl State {
    /// Loads the state from `dir` (creating it on first use), or starts an
    /// in-memory state when `dir` is `None`.
    pub fn open(dir: Option<&Path>, new_private: impl FnOnce() -> [u8; 32]) -> io::Result<Self> {
        let fresh = |private| ServerState {
            server_private: private,
            next_phone: FIRST_PHONE,
            next_lid: FIRST_LID,
            accounts: BTreeMap::new(),
            groups: BTreeMap::new(),
            next_group: FIRST_GROUP,
            contact_lids: BTreeMap::new(),
            address_books: BTreeMap::new(),
        };
        let Some(dir) = dir else {
            return Ok(Self {
                server: fresh(new_private()),
                devices: BTreeMap::new(),
                dir: None,
            });
        };
        std::fs::create_dir_all(dir.join("devices"))?;
        let server_path = dir.join("server.json");
        let server = match std::fs::read(&server_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let server = fresh(new_private());
                write_atomic(&server_path, &serde_json::to_vec_pretty(&server)?)?;
                server
            }
            Err(e) => return Err(e),
        };
        let mut devices = BTreeMap::new();
        for entry in std::fs::read_dir(dir.join("devices"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let record: DeviceRecord =
                    serde_json::from_slice(&std::fs::read(&path)?).map_err(io::Error::other)?;
                devices.insert(record.key(), record);
            }
        }
        Ok(Self {
            server,
            devices,
            dir: Some(dir.to_owned()),
        })
    }

    pub fn save_server(&self) -> io::Result<()> {
        match &self.dir {
            Some(dir) => write_atomic(
                &dir.join("server.json"),
                &serde_json::to_vec_pretty(&self.server)?,
            ),
            None => Ok(()),
        }
    }

    pub fn save_device(&self, key: &DeviceKey) -> io::Result<()> {
        let (Some(dir), Some(record)) = (&self.dir, self.devices.get(key)) else {
            return Ok(());
        };
        let path = dir
            .join("devices")
            .join(format!("{}.{}.json", key.phone, key.device));
        write_atomic(&path, &serde_json::to_vec(record)?)
    }

    /// The account for `phone`, created when it does not exist yet.
    pub fn account(
        &mut self,
        phone: Option<&str>,
        new_key: impl FnOnce() -> AccountKey,
    ) -> io::Result<Account> {
        let phone = match phone {
            Some(p) => p.to_owned(),
            None => loop {
                let candidate = self.server.next_phone.to_string();
                self.server.next_phone += 1;
                if !self.server.accounts.contains_key(&candidate) {
                    break candidate;
                }
            },
        };
        if let Some(account) = self.server.accounts.get(&phone) {
            return Ok(account.clone());
        }
        let account = Account {
            phone: phone.clone(),
            lid: self.server.next_lid.to_string(),
            account_key: new_key(),
            next_device_id: 1,
        };
        self.server.next_lid += 1;
        self.server.accounts.insert(phone, account.clone());
        self.save_server()?;
        Ok(account)
    }

    pub fn allocate_device_id(&mut self, phone: &str) -> io::Result<u16> {
        let account = self
            .server
            .accounts
            .get_mut(phone)
            .ok_or_else(|| io::Error::other(format!("no account {phone}")))?;
        let id = account.next_device_id;
        account.next_device_id = account.next_device_id.checked_add(1).unwrap_or(1).max(1);
        self.save_server()?;
        Ok(id)
    }

    pub fn lid_of(&self, phone: &str) -> Option<String> {
        self.server.accounts.get(phone).map(|a| a.lid.clone())
    }

    /// `phone`'s LID: the account's, or one handed to the contact once.
    pub fn contact_lid(&mut self, phone: &str) -> String {
        if let Some(lid) = self.lid_of(phone) {
            return lid;
        }
        if let Some(lid) = self.server.contact_lids.get(phone) {
            return lid.clone();
        }
        let lid = self.server.next_lid.to_string();
        self.server.next_lid += 1;
        self.server
            .contact_lids
            .insert(phone.to_owned(), lid.clone());
        lid
    }

    /// Creates a group and saves the server state.
    pub fn create_group(
        &mut self,
        subject: String,
        description: Option<String>,
        creator: &str,
        members: Vec<(String, MemberRole, bool)>,
        created: u64,
    ) -> io::Result<Group> {
        let id = self.server.next_group.to_string();
        self.server.next_group += 1;
        let members = members
            .into_iter()
            .map(|(phone, role, lid_only)| Member {
                lid: self.contact_lid(&phone),
                phone,
                role,
                lid_only,
            })
            .collect();
        let group = Group {
            id: id.clone(),
            subject,
            description,
            creator: creator.to_owned(),
            created,
            members,
        };
        self.server.groups.insert(id, group.clone());
        self.save_server()?;
        Ok(group)
    }

    /// The live (not unlinked) devices of an account.
    pub fn devices_of(&self, phone: &str) -> Vec<DeviceKey> {
        self.devices
            .values()
            .filter(|d| d.phone == phone && !d.removed)
            .map(DeviceRecord::key)
            .collect()
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
