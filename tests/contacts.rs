//! Which numbers are on WhatsApp, asked through a session (fakewa answers
//! the usync query: every number is, but those made unregistered).

mod common;

use common::{ADMIN, Daemon, control, create_tenant, pair};
use serde_json::{Value, json};

const PHONE: &str = "15551260001";
const ADA: &str = "15557800001";
const BOB: &str = "15557800002";
const NOPE: &str = "15557800009";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_are_checked_against_whatsapp_for_their_tenant_only() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;
    let token = create_tenant(&daemon, "acme").await;
    let other = create_tenant(&daemon, "other").await;
    pair(&daemon, &fake, "shop-1", Some("acme"), PHONE).await;
    let r = control(
        fake.control_addr(),
        "/control/unregistered",
        json!({ "phones": [NOPE] }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // ADA is in a group, so WhatsApp knows (and tells) her LID.
    let r = control(
        fake.control_addr(),
        "/control/groups",
        json!({ "subject": "g", "members": [{ "phone": ADA }, { "phone": PHONE }] }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ada_lid = r.json()["members"][0]["lid"].as_str().unwrap().to_string();

    let check = |token: &str, phones: Value| {
        let daemon = &daemon;
        let token = token.to_string();
        async move {
            daemon
                .post(
                    "/v1/sessions/shop-1/contacts/check",
                    Some(&token),
                    Some(json!({ "phones": phones })),
                )
                .await
        }
    };
    let r = check(&token, json!([ADA, "+1 555-780-0002", NOPE, ADA])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let results = r.json()["results"].clone();
    assert_eq!(
        results,
        json!([
            { "phone": ADA, "on_whatsapp": true, "jid": format!("{ADA}@s.whatsapp.net"), "lid": ada_lid },
            { "phone": BOB, "on_whatsapp": true, "jid": format!("{BOB}@s.whatsapp.net"), "lid": null },
            { "phone": NOPE, "on_whatsapp": false, "jid": null, "lid": null },
        ]),
        "one answer per distinct number, in order"
    );

    for (phones, code) in [
        (json!([]), "invalid_body"),
        (json!(["12ab"]), "invalid_phone"),
        (json!(vec![ADA; 501]), "invalid_body"),
    ] {
        let r = check(&token, phones.clone()).await;
        assert_eq!(r.status, 422, "{phones}: {}", r.text());
        assert_eq!(r.error_code(), code);
    }
    let r = check(&other, json!([ADA])).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.error_code(), "not_found");
    let r = daemon
        .post("/v1/sessions/shop-1/stop", Some(ADMIN), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = check(&token, json!([ADA])).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.error_code(), "not_connected");
}
