//! Groups against fakewa: the groups a session's account is in, each with
//! its exact participants (phones hidden by a LID-addressed group stay
//! unknown), and a participant's post arriving as a group message.

mod common;

use common::{
    ADMIN, Daemon, control, create_tenant, pair, put_webhook, wait_for, webhook_receiver,
};
use serde_json::{Value, json};

const PHONE: &str = "15551250001";
const ADA: &str = "15557790001";
const BOB: &str = "15557790002";
const CARL: &str = "15557790003";
const DAVE: &str = "15557790004";

/// Creates a group at fakewa; the first member creates it. Answers its JID
/// and fakewa's view of its members.
async fn group(fake: &fakewa::FakeWa, subject: &str, members: Value) -> (String, Vec<Value>) {
    let r = control(
        fake.control_addr(),
        "/control/groups",
        json!({ "subject": subject, "description": format!("about {subject}"), "members": members }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    let jid = body["jid"].as_str().expect("jid").to_string();
    (jid, body["members"].as_array().expect("members").clone())
}

/// fakewa's LID of member `phone`.
fn lid_of(members: &[Value], phone: &str) -> String {
    members
        .iter()
        .find(|m| m["phone"] == phone)
        .and_then(|m| m["lid"].as_str())
        .expect("member")
        .to_string()
}

/// Participants as `(jid, phone, lid, admin, super_admin)`, sorted.
type Row = (String, Option<String>, Option<String>, bool, bool);

fn participants(group: &Value) -> Vec<Row> {
    let mut list: Vec<_> = group["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .map(|p| {
            (
                p["jid"].as_str().expect("jid").to_string(),
                p["phone"].as_str().map(str::to_owned),
                p["lid"].as_str().map(str::to_owned),
                p["admin"].as_bool().expect("admin"),
                p["super_admin"].as_bool().expect("super_admin"),
            )
        })
        .collect();
    list.sort();
    list
}

fn pn(phone: &str) -> String {
    format!("{phone}@s.whatsapp.net")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_list_their_exact_participants_to_their_tenant_only() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;
    let token = create_tenant(&daemon, "acme").await;
    let other = create_tenant(&daemon, "other").await;
    pair(&daemon, &fake, "shop-1", Some("acme"), PHONE).await;

    // Phone-addressed: every member by phone, with a LID.
    let (team, team_members) = group(
        &fake,
        "Team",
        json!([{ "phone": ADA }, { "phone": PHONE }, { "phone": BOB, "admin": true }]),
    )
    .await;
    // LID-addressed, DAVE's phone hidden.
    let (club, club_members) = group(
        &fake,
        "Club",
        json!([{ "phone": BOB }, { "phone": PHONE }, { "phone": DAVE, "lid_only": true }]),
    )
    .await;
    // The account is not in this one.
    let (elsewhere, _) = group(
        &fake,
        "Elsewhere",
        json!([{ "phone": ADA }, { "phone": CARL }]),
    )
    .await;

    let listed = daemon.get("/v1/sessions/shop-1/groups", Some(&token)).await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let listed = listed.json();
    let groups = listed["groups"].as_array().expect("groups");
    let jids: Vec<&str> = groups.iter().filter_map(|g| g["jid"].as_str()).collect();
    let mut expected = vec![team.as_str(), club.as_str()];
    expected.sort();
    assert_eq!(jids, expected, "exactly the account's groups, by JID");

    let shown = daemon
        .get(&format!("/v1/sessions/shop-1/groups/{team}"), Some(&token))
        .await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    let shown = shown.json();
    assert_eq!(shown["subject"], "Team");
    assert_eq!(shown["description"], "about Team");
    assert_eq!(shown["addressing_mode"], "pn");
    assert_eq!(shown["size"], 3);
    assert_eq!(shown["creator"]["phone"], ADA);
    let lid = |phone: &str| Some(lid_of(&team_members, phone));
    let some = |phone: &str| Some(phone.to_string());
    let mut want: Vec<Row> = vec![
        (pn(ADA), some(ADA), lid(ADA), true, true),
        (pn(PHONE), some(PHONE), lid(PHONE), false, false),
        (pn(BOB), some(BOB), lid(BOB), true, false),
    ];
    want.sort();
    assert_eq!(participants(&shown), want);
    let in_list = groups.iter().find(|g| g["jid"] == team.as_str()).unwrap();
    assert_eq!(participants(in_list), want, "the list carries the same");

    let shown = daemon
        .get(&format!("/v1/sessions/shop-1/groups/{club}"), Some(&token))
        .await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    let shown = shown.json();
    assert_eq!(shown["addressing_mode"], "lid");
    let lid = |phone: &str| lid_of(&club_members, phone);
    let mut want: Vec<Row> = vec![
        (lid(BOB), some(BOB), Some(lid(BOB)), true, true),
        (lid(PHONE), some(PHONE), Some(lid(PHONE)), false, false),
        (lid(DAVE), None, Some(lid(DAVE)), false, false),
    ];
    want.sort();
    assert_eq!(participants(&shown), want, "a hidden phone stays unknown");

    // Groups the account is not in, or that do not exist, are not found;
    // a malformed JID is refused before WhatsApp is asked.
    for jid in [elsewhere.as_str(), "120363999999999999@g.us"] {
        let r = daemon
            .get(&format!("/v1/sessions/shop-1/groups/{jid}"), Some(&token))
            .await;
        assert_eq!(r.status, 404, "{jid}: {}", r.text());
        assert_eq!(r.error_code(), "group_not_found");
    }
    let r = daemon
        .get(
            "/v1/sessions/shop-1/groups/not-a-group@s.whatsapp.net",
            Some(&token),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "invalid_group");

    // Another tenant sees no such session; the admin sees it.
    for path in [
        "/v1/sessions/shop-1/groups".to_string(),
        format!("/v1/sessions/shop-1/groups/{team}"),
    ] {
        let r = daemon.get(&path, Some(&other)).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert_eq!(r.error_code(), "not_found");
        assert_eq!(daemon.get(&path, Some(ADMIN)).await.status, 200, "{path}");
    }

    // Not connected: 409, not a hang.
    let stopped = daemon
        .post("/v1/sessions/shop-1/stop", Some(ADMIN), None)
        .await;
    assert_eq!(stopped.status, 200, "{}", stopped.text());
    let r = daemon.get("/v1/sessions/shop-1/groups", Some(&token)).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.error_code(), "not_connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participants_post_is_a_group_message_with_its_sender() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start_with_local_webhooks(&fake.ws_url()).await;
    let token = create_tenant(&daemon, "acme").await;
    let (url, bodies) = webhook_receiver().await;
    put_webhook(&daemon, &token, "acme", "crm", &url, "whatsd").await;
    pair(&daemon, &fake, "shop-1", Some("acme"), PHONE).await;
    let (team, _) = group(
        &fake,
        "Team",
        json!([{ "phone": ADA }, { "phone": PHONE }, { "phone": BOB }]),
    )
    .await;

    let mut ids = Vec::new();
    for (from, text) in [(BOB, "hello team ✓"), (ADA, "second post")] {
        let posted = control(
            fake.control_addr(),
            "/control/groups/messages",
            json!({ "group": team, "from_phone": from, "text": text }),
        )
        .await;
        assert_eq!(posted.status, 200, "{}", posted.text());
        ids.push(posted.json()["id"].as_str().expect("id").to_string());
    }
    let received = |bodies: &[Value]| -> Vec<Value> {
        bodies
            .iter()
            .filter(|b| b["type"] == "message.received")
            .map(|b| b["data"].clone())
            .collect()
    };
    wait_for(&bodies, "two group messages", |b| {
        (received(b).len() >= 2).then_some(())
    })
    .await;
    let received = received(&bodies.lock().unwrap());
    assert_eq!(received.len(), 2, "{received:#?}");
    for ((data, id), (from, text)) in received
        .iter()
        .zip(&ids)
        .zip([(BOB, "hello team ✓"), (ADA, "second post")])
    {
        assert_eq!(data["message_id"], id.as_str());
        assert_eq!(data["text"], text);
        assert_eq!(data["is_group"], true);
        assert_eq!(data["chat"], team.as_str());
        assert_eq!(data["participant"], pn(from));
        assert_eq!(data["sender"]["phone"], from);
        assert_eq!(data["from_me"], false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_to_a_group_reaches_its_members() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;
    let token = create_tenant(&daemon, "acme").await;
    pair(&daemon, &fake, "shop-1", Some("acme"), PHONE).await;
    let (team, _) = group(
        &fake,
        "Team",
        json!([{ "phone": ADA }, { "phone": PHONE }, { "phone": BOB }]),
    )
    .await;

    let sent = daemon
        .post(
            "/v1/sessions/shop-1/messages?wait=sent",
            Some(&token),
            Some(json!({ "to": team, "text": "hello from the shop ✓" })),
        )
        .await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    let id = sent.json()["id"].as_str().expect("id").to_string();
    let outbox = common::request(fake.control_addr(), "GET", "/control/outbox", None, None).await;
    let outbox = outbox.json();
    let entry = outbox["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not at fakewa: {outbox:#}"))
        .clone();
    assert_eq!(entry["to"], team.as_str());
    assert_eq!(entry["from_phone"], PHONE);
    assert_eq!(
        entry["text"], "hello from the shop ✓",
        "a member decrypts the text with the sender key the session distributed"
    );
}

/// Waits (bounded) until `bodies` holds `n` events of a type starting with
/// `prefix`; answers their `(type, data)` in arrival order.
async fn events_of(
    bodies: &std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
    prefix: &str,
    n: usize,
) -> Vec<(String, Value)> {
    let pick = |bodies: &[Value]| -> Vec<(String, Value)> {
        bodies
            .iter()
            .filter(|b| b["type"].as_str().is_some_and(|t| t.starts_with(prefix)))
            .map(|b| (b["type"].as_str().unwrap().to_string(), b["data"].clone()))
            .collect()
    };
    wait_for(bodies, &format!("{n} {prefix} events"), |b| {
        let got = pick(b);
        (got.len() >= n).then_some(got)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_and_subject_changes_become_group_events_in_order() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start_with_local_webhooks(&fake.ws_url()).await;
    let token = create_tenant(&daemon, "acme").await;
    let (url, bodies) = webhook_receiver().await;
    put_webhook(&daemon, &token, "acme", "crm", &url, "whatsd").await;
    pair(&daemon, &fake, "shop-1", Some("acme"), PHONE).await;
    let (team, _) = group(
        &fake,
        "Team",
        json!([{ "phone": ADA }, { "phone": PHONE }, { "phone": BOB }]),
    )
    .await;

    let members = "/control/groups/participants";
    let info = "/control/groups/info";
    let s = |v: &str| v.to_string();
    // One change at a time, each followed by its event: a burst of
    // notifications is handled concurrently by the library, and its events
    // may come in another order (README).
    let steps = [
        (
            members,
            json!({ "by_phone": ADA, "action": "add", "phones": [CARL, DAVE] }),
            ("group.participants", s("add"), vec![s(CARL), s(DAVE)], ADA),
        ),
        (
            members,
            json!({ "by_phone": ADA, "action": "promote", "phones": [BOB] }),
            ("group.participants", s("promote"), vec![s(BOB)], ADA),
        ),
        (
            members,
            json!({ "by_phone": BOB, "action": "remove", "phones": [CARL] }),
            ("group.participants", s("remove"), vec![s(CARL)], BOB),
        ),
        (
            info,
            json!({ "by_phone": BOB, "subject": "Team ✓" }),
            (
                "group.updated",
                s("subject=\"Team ✓\" description=null"),
                vec![],
                BOB,
            ),
        ),
        (
            info,
            json!({ "by_phone": ADA, "description": "orders only" }),
            (
                "group.updated",
                s("subject=null description=\"orders only\""),
                vec![],
                ADA,
            ),
        ),
        (
            info,
            json!({ "by_phone": ADA, "description": null }),
            (
                "group.updated",
                s("subject=null description=\"\""),
                vec![],
                ADA,
            ),
        ),
    ];
    for (i, (path, mut body, want)) in steps.into_iter().enumerate() {
        body["group"] = team.clone().into();
        let r = control(fake.control_addr(), path, body).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let events = events_of(&bodies, "group.", i + 1).await;
        assert_eq!(events.len(), i + 1, "one event per change: {events:#?}");
        let (kind, data) = &events[i];
        assert_eq!(data["group"], team.as_str(), "{data}");
        let what = match kind.as_str() {
            "group.participants" => data["action"].as_str().unwrap().to_string(),
            _ => format!(
                "subject={} description={}",
                data["subject"], data["description"]
            ),
        };
        let phones: Vec<String> = data["participants"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|p| p["phone"].as_str().expect("phone").to_string())
                    .collect()
            })
            .unwrap_or_default();
        let by = data["by"]["phone"].as_str().unwrap_or("?");
        assert_eq!(
            (kind.as_str(), what, phones, by),
            (want.0, want.1, want.2, want.3),
            "step {i}: {data}"
        );
    }
    // The group as WhatsApp now has it.
    let shown = daemon
        .get(&format!("/v1/sessions/shop-1/groups/{team}"), Some(&token))
        .await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    let shown = shown.json();
    assert_eq!(shown["subject"], "Team ✓");
    let mut now: Vec<(String, bool)> = shown["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["phone"].as_str().unwrap().to_string(),
                p["admin"].as_bool().unwrap(),
            )
        })
        .collect();
    now.sort();
    let mut want = vec![
        (s(ADA), true),
        (s(PHONE), false),
        (s(BOB), true),
        (s(DAVE), false),
    ];
    want.sort();
    assert_eq!(now, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_created_changed_and_left_through_the_api() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;
    let token = create_tenant(&daemon, "acme").await;
    let other = create_tenant(&daemon, "other").await;
    pair(&daemon, &fake, "shop-1", Some("acme"), PHONE).await;
    let s = |v: &str| v.to_string();
    let members = |group: &Value| -> Vec<(String, bool)> {
        let mut list: Vec<(String, bool)> = group["participants"]
            .as_array()
            .expect("participants")
            .iter()
            .map(|p| (s(p["phone"].as_str().expect("phone")), p["admin"] == true))
            .collect();
        list.sort();
        list
    };
    let sorted = |mut v: Vec<(String, bool)>| {
        v.sort();
        v
    };

    let created = daemon
        .post(
            "/v1/sessions/shop-1/groups",
            Some(&token),
            Some(json!({ "subject": "Shop team ✓", "participants": [ADA, "+1 555-779-0002"] })),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let created = created.json();
    let jid = created["jid"].as_str().expect("jid").to_string();
    assert!(jid.ends_with("@g.us"), "{jid}");
    assert_eq!(created["subject"], "Shop team ✓");
    let want = sorted(vec![(s(PHONE), true), (s(ADA), false), (s(BOB), false)]);
    assert_eq!(members(&created), want);
    let shown = daemon
        .get(&format!("/v1/sessions/shop-1/groups/{jid}"), Some(&token))
        .await;
    assert_eq!(shown.status, 200, "{}", shown.text());
    assert_eq!(members(&shown.json()), want, "WhatsApp has it as created");

    let change = |action: &str, phones: Vec<&str>, token: &str| {
        let body = json!({ "action": action, "participants": phones });
        let path = format!("/v1/sessions/shop-1/groups/{jid}/participants");
        let daemon = &daemon;
        let token = token.to_string();
        async move { daemon.post(&path, Some(&token), Some(body)).await }
    };
    let outcomes = |r: &common::Response| -> Vec<(String, Value)> {
        r.json()["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|o| (s(o["phone"].as_str().expect("phone")), o["error"].clone()))
            .collect()
    };
    let r = change("add", vec![CARL, ADA], &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        outcomes(&r),
        vec![(s(CARL), Value::Null), (s(ADA), json!("409"))],
        "a member cannot be added twice"
    );
    let r = change("promote", vec![CARL], &token).await;
    assert_eq!(outcomes(&r), vec![(s(CARL), Value::Null)]);
    let r = change("remove", vec![BOB, DAVE], &token).await;
    assert_eq!(
        outcomes(&r),
        vec![(s(BOB), Value::Null), (s(DAVE), json!("404"))]
    );
    let shown = daemon
        .get(&format!("/v1/sessions/shop-1/groups/{jid}"), Some(&token))
        .await;
    assert_eq!(
        members(&shown.json()),
        sorted(vec![(s(PHONE), true), (s(ADA), false), (s(CARL), true)])
    );

    // Another tenant cannot touch it; bad input is refused before WhatsApp.
    let r = change("add", vec![DAVE], &other).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.error_code(), "not_found");
    for (body, code) in [
        (
            json!({ "subject": "", "participants": [ADA] }),
            "invalid_body",
        ),
        (
            json!({ "subject": "x".repeat(101), "participants": [ADA] }),
            "invalid_body",
        ),
        (
            json!({ "subject": "x", "participants": [] }),
            "invalid_body",
        ),
        (
            json!({ "subject": "x", "participants": ["12ab"] }),
            "invalid_phone",
        ),
    ] {
        let r = daemon
            .post(
                "/v1/sessions/shop-1/groups",
                Some(&token),
                Some(body.clone()),
            )
            .await;
        assert_eq!(r.status, 422, "{body}: {}", r.text());
        assert_eq!(r.error_code(), code, "{body}");
    }
    let r = change("ban", vec![DAVE], &token).await;
    assert_eq!(r.status, 422, "{}", r.text());

    // Where the account is not an admin, WhatsApp refuses.
    let (theirs, _) = group(
        &fake,
        "Theirs",
        json!([{ "phone": ADA }, { "phone": PHONE }]),
    )
    .await;
    let r = daemon
        .post(
            &format!("/v1/sessions/shop-1/groups/{theirs}/participants"),
            Some(&token),
            Some(json!({ "action": "add", "participants": [DAVE] })),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.error_code(), "not_admin");

    // Leaving: the group is gone for the account.
    let r = daemon
        .post(
            &format!("/v1/sessions/shop-1/groups/{jid}/leave"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["left"], true);
    let r = daemon
        .get(&format!("/v1/sessions/shop-1/groups/{jid}"), Some(&token))
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.error_code(), "group_not_found");
    let listed = daemon.get("/v1/sessions/shop-1/groups", Some(&token)).await;
    let listed: Vec<Value> = listed.json()["groups"].as_array().unwrap().clone();
    assert!(
        listed.iter().all(|g| g["jid"] != jid.as_str()),
        "{listed:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_50_lists_hidden_phones_once_the_mapping_is_learned() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start_with_local_webhooks(&fake.ws_url()).await;
    let token = create_tenant(&daemon, "acme").await;
    let (url, bodies) = webhook_receiver().await;
    put_webhook(&daemon, &token, "acme", "crm", &url, "whatsd").await;
    pair(&daemon, &fake, "shop-1", Some("acme"), PHONE).await;
    // ADA creates it; the account and 48 others join; 10 of them show
    // only their LID.
    let others: Vec<String> = (0..48).map(|i| format!("1555780{i:04}")).collect();
    let hidden: Vec<&String> = others.iter().take(10).collect();
    let mut list = vec![json!({ "phone": ADA }), json!({ "phone": PHONE })];
    list.extend(
        others
            .iter()
            .enumerate()
            .map(|(i, phone)| json!({ "phone": phone, "lid_only": i < 10, "admin": i == 47 })),
    );
    let (big, members) = group(&fake, "Fifty", Value::Array(list)).await;
    assert_eq!(members.len(), 50);

    let read = || {
        let daemon = &daemon;
        let path = format!("/v1/sessions/shop-1/groups/{big}");
        let token = token.clone();
        async move {
            let r = daemon.get(&path, Some(&token)).await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()
        }
    };
    // The exact list: every member by LID; a phone for all but the hidden.
    let want = |known: &[&str]| -> Vec<Row> {
        let mut rows: Vec<Row> = members
            .iter()
            .map(|m| {
                let phone = m["phone"].as_str().unwrap();
                let lid = m["lid"].as_str().unwrap().to_string();
                let shown = m["lid_only"] == false || known.contains(&phone);
                let role = m["role"].as_str().unwrap();
                (
                    lid.clone(),
                    shown.then(|| phone.to_string()),
                    Some(lid),
                    role != "member",
                    role == "superadmin",
                )
            })
            .collect();
        rows.sort();
        rows
    };
    let group = read().await;
    assert_eq!(group["size"], 50);
    assert_eq!(participants(&group), want(&[]));
    let unknown = group["participants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["phone"].is_null())
        .count();
    assert_eq!(unknown, 10);

    // One hidden member writes to the account directly: the DM carries
    // their LID, the session learns the mapping, the list shows the phone.
    let dm = control(
        fake.control_addr(),
        "/control/messages",
        json!({ "to_phone": PHONE, "from_phone": hidden[0], "text": "hi, it's me" }),
    )
    .await;
    assert_eq!(dm.status, 200, "{}", dm.text());
    let received = wait_for(&bodies, "the DM", |b| {
        b.iter().find(|b| b["type"] == "message.received").cloned()
    })
    .await;
    assert_eq!(received["data"]["sender"]["phone"], hidden[0].as_str());
    assert_eq!(
        received["data"]["sender"]["lid"].as_str(),
        Some(lid_of(&members, hidden[0]).as_str())
    );
    assert_eq!(participants(&read().await), want(&[hidden[0].as_str()]));
}
