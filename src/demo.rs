//! `whatsd serve --demo`: the daemon against an embedded fake WhatsApp
//! server (fakewa, the one the tests use), so someone without a spare phone
//! can pair a session and watch a message reach their webhook.
//!
//! Only in builds with the `demo` feature, which also turns off the check of
//! WhatsApp's certificate chain (the fake cannot sign its chain). Such a
//! build refuses to run without `--demo`, and `--demo` points every session
//! at the fake, so it never talks to real WhatsApp.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::Config;

/// The picture a demo contact sends (96×96 PNG, a receipt on green).
const DEMO_IMAGE: &[u8] = include_bytes!("api/admin/demo-image.png");

/// Version announced to the fake (it never asks web.whatsapp.com).
const DEMO_VERSION: &str = "2.3000.1023456789";

/// The embedded fake and what the daemon changes to use it.
pub struct Demo {
    fake: fakewa::FakeWa,
    /// The fake media server's CA certificate (PEM file).
    media_ca: PathBuf,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("ws_url", &self.fake.ws_url())
            .field("control_url", &self.fake.control_url())
            .finish()
    }
}

/// What the fake phone refused, as it said it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DemoError {
    /// `bad_request`, `not_found`, `conflict` or `failed`.
    pub code: &'static str,
    pub message: String,
}

impl From<fakewa::ControlError> for DemoError {
    fn from(e: fakewa::ControlError) -> Self {
        Self {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// `<data_dir>-demo`: demo pairings never mix with real ones.
fn data_dir(config: &Config) -> PathBuf {
    let mut dir = config.data_dir.clone().into_os_string();
    dir.push("-demo");
    dir.into()
}

impl Demo {
    /// Starts the fake on loopback (both of its listeners on free ports).
    /// It keeps its phones and linked devices in `<data_dir>-demo/fakewa`,
    /// so demo sessions stay linked across restarts, as real ones do.
    pub async fn start(config: &Config) -> std::io::Result<Arc<Self>> {
        let fake_config = fakewa::Config {
            state_dir: Some(data_dir(config).join("fakewa")),
            ..fakewa::Config::default()
        };
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let fake = fakewa::FakeWa::start_with(fake_config, loopback, loopback).await?;
        // Sessions fetch media from the fake's HTTPS server: its CA, in a
        // file for `whatsapp.media_ca_file` (a demo build may trust it).
        let media_ca = data_dir(config).join("fakewa").join("media-ca.pem");
        if let Some(dir) = media_ca.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&media_ca, fake.media_ca_pem())?;
        Ok(Arc::new(Self { fake, media_ca }))
    }

    /// Points a configuration at the fake. Applied at start and to every
    /// reloaded configuration: sessions use the fake's WebSocket and a data
    /// dir of their own (`<data_dir>-demo`, so demo pairings never mix with
    /// real ones), and webhooks may target this machine (the walkthrough's
    /// receiver listens on loopback).
    pub fn apply(&self, config: &mut Config) {
        config.whatsapp.ws_url = Some(self.fake.ws_url());
        config.whatsapp.version = Some(DEMO_VERSION.to_string());
        if !config
            .data_dir
            .as_os_str()
            .to_string_lossy()
            .ends_with("-demo")
        {
            let mut data_dir = config.data_dir.clone().into_os_string();
            data_dir.push("-demo");
            config.data_dir = data_dir.into();
        }
        config.webhooks.allow_private_targets = true;
        config.whatsapp.media_ca_file = Some(self.media_ca.clone());
    }

    /// Base URL of the fake's control API (tests/fakewa/README.md).
    pub fn control_url(&self) -> String {
        self.fake.control_url()
    }

    /// The fake phone `phone` scans a QR code; answers the linked JID.
    pub async fn scan(&self, qr: &str, phone: &str) -> Result<fakewa::Paired, DemoError> {
        Ok(self.fake.server.scan(qr, Some(phone)).await?)
    }

    /// Contact `from` sends `text` to `to`; answers the message id.
    pub fn send(&self, to: &str, from: &str, text: &str) -> Result<String, DemoError> {
        Ok(self
            .fake
            .server
            .send_message(to, from, text, fakewa::MessageKind::Dm)?)
    }

    /// Contact `from` sends `to` the built-in demo picture (a PNG), with
    /// `caption` if any, through the fake's media server; answers the
    /// message id.
    pub fn send_image(
        &self,
        to: &str,
        from: &str,
        caption: Option<&str>,
    ) -> Result<String, DemoError> {
        let req = fakewa::MediaSend {
            to_phone: to.to_string(),
            from_phone: from.to_string(),
            kind: "image".to_string(),
            mimetype: "image/png".to_string(),
            data_base64: String::new(),
            caption: caption.map(str::to_string),
            file_name: None,
            seconds: None,
            corrupt_mac: false,
        };
        Ok(self.fake.server.send_media(&req, DEMO_IMAGE)?.id)
    }

    /// The warning printed at start, with what the fake offers; `config`
    /// as read, before [`Demo::apply`].
    pub fn banner(&self, config: &Config) -> String {
        format!(
            "\n\
             ********************************************************************\n\
             *  DEMO MODE: sessions talk to an embedded FAKE WhatsApp server.   *\n\
             *  This build does not verify WhatsApp's certificates: never use   *\n\
             *  it with real WhatsApp.                                          *\n\
             ********************************************************************\n\
             fake WhatsApp:   {ws}\n\
             fake phone API:  {control}\n\
             demo data dir:   {data}\n\
             webhooks may target this machine (allow_private_targets = true)\n\
             \n\
             Pair with the fake phone from the admin page (\"Scan with the demo\n\
             phone\"), or POST /v1/demo/sessions/ID/scan; send a session a message\n\
             from a fake contact with POST /v1/demo/sessions/ID/messages.\n",
            ws = self.fake.ws_url(),
            control = self.fake.control_url(),
            data = data_dir(config).display(),
        )
    }
}
