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

/// Polls (bounded) the directory until `done` holds; answers its entries.
async fn directory_until(
    daemon: &Daemon,
    token: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = daemon
            .get("/v1/sessions/shop-1/contacts", Some(token))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let contacts = r.json()["contacts"].as_array().unwrap().clone();
        if done(&contacts) {
            return contacts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} within 30 s; directory: {contacts:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn by_phone<'a>(contacts: &'a [Value], phone: &str) -> Vec<&'a Value> {
    contacts.iter().filter(|c| c["phone"] == phone).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_holds_each_person_once_merging_phone_and_lid() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;
    let token = create_tenant(&daemon, "acme").await;
    let other = create_tenant(&daemon, "other").await;
    pair(&daemon, &fake, "shop-1", Some("acme"), PHONE).await;
    const CARL: &str = "15557800003";
    const DAVE: &str = "15557800004";
    let r = control(
        fake.control_addr(),
        "/control/groups",
        json!({ "subject": "Team", "members": [{ "phone": ADA }, { "phone": PHONE }, { "phone": BOB }] }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let team = r.json()["jid"].as_str().unwrap().to_string();
    let lid = |r: &Value, phone: &str| -> String {
        r["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["phone"] == phone)
            .map(|m| m["lid"].as_str().unwrap().to_string())
            .unwrap()
    };
    let members = r.json();
    let dm = |from: &'static str, text: &'static str| {
        let fake = &fake;
        async move {
            let r = control(
                fake.control_addr(),
                "/control/messages",
                json!({ "to_phone": PHONE, "from_phone": from, "text": text }),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
    };
    // BOB is in two more groups.
    let mut bobs_groups = vec![team.clone()];
    for subject in ["Two", "Three"] {
        let r = control(
            fake.control_addr(),
            "/control/groups",
            json!({ "subject": subject, "members": [{ "phone": BOB }, { "phone": PHONE }] }),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        bobs_groups.push(r.json()["jid"].as_str().unwrap().to_string());
    }
    // BOB posts in all three first: known by phone only (a group post
    // names no LID), in three groups ...
    for group in &bobs_groups {
        let r = control(
            fake.control_addr(),
            "/control/groups/messages",
            json!({ "group": group, "from_phone": BOB, "text": "hello" }),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    directory_until(&daemon, &token, "BOB by phone in three groups", |c| {
        by_phone(c, BOB).len() == 1
            && by_phone(c, BOB)[0]["lid"].is_null()
            && by_phone(c, BOB)[0]["groups"].as_array().unwrap().len() == 3
    })
    .await;
    // ... then writes directly, which names his LID: the two merge.
    dm(BOB, "it's Bob").await;
    dm(ADA, "it's Ada").await;
    dm(CARL, "it's Carl").await;
    let r = control(
        fake.control_addr(),
        "/control/groups/participants",
        json!({ "group": team, "by_phone": ADA, "action": "add", "phones": [DAVE] }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let all = directory_until(&daemon, &token, "four people", |c| {
        c.len() == 4
            && by_phone(c, BOB)
                .first()
                .is_some_and(|b| !b["lid"].is_null())
    })
    .await;
    for phone in [ADA, BOB, CARL, DAVE] {
        assert_eq!(by_phone(&all, phone).len(), 1, "{phone} once: {all:#?}");
    }
    let bob = by_phone(&all, BOB)[0];
    assert_eq!(bob["lid"], lid(&members, BOB).as_str());
    // In the order the posts were handled: the library handles chats
    // concurrently.
    let mut groups: Vec<String> = bob["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap().to_string())
        .collect();
    groups.sort();
    bobs_groups.sort();
    assert_eq!(groups, bobs_groups, "the three groups survive the merge");
    assert_eq!(bob["push_name"], format!("Contact {BOB}"));
    assert_eq!(by_phone(&all, ADA)[0]["lid"], lid(&members, ADA).as_str());
    assert!(
        by_phone(&all, CARL)[0]["lid"].is_null(),
        "no LID was ever named"
    );
    assert_eq!(by_phone(&all, DAVE)[0]["groups"], json!([team]));
    assert!(
        all.iter().all(|c| c["phone"] != PHONE),
        "the account itself is not a contact"
    );

    // Pages of one walk the same four, once each; a query filters.
    let mut walked = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..10 {
        let path = match &next {
            Some(after) => format!("/v1/sessions/shop-1/contacts?limit=1&after={after}"),
            None => "/v1/sessions/shop-1/contacts?limit=1".to_string(),
        };
        let r = daemon.get(&path, Some(&token)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        walked.extend(page["contacts"].as_array().unwrap().iter().cloned());
        match page["next"].as_str() {
            Some(after) => next = Some(after.to_string()),
            None => break,
        }
    }
    let mut phones: Vec<String> = walked
        .iter()
        .map(|c| c["phone"].as_str().unwrap().to_string())
        .collect();
    phones.sort();
    assert_eq!(phones, [ADA, BOB, CARL, DAVE]);
    let r = daemon
        .get("/v1/sessions/shop-1/contacts?q=800003", Some(&token))
        .await;
    let found = r.json()["contacts"].as_array().unwrap().clone();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["phone"], CARL);
    for bad in ["?limit=0", "?limit=501", "?after=zz", "?after=00"] {
        let r = daemon
            .get(&format!("/v1/sessions/shop-1/contacts{bad}"), Some(&token))
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }

    // CSV: Python's csv module reads the same rows.
    let r = daemon
        .get("/v1/sessions/shop-1/contacts.csv", Some(&token))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("text/csv"));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), r.text()).unwrap();
    let parsed = std::process::Command::new("python3")
        .args([
            "-c",
            "import csv, json, sys; print(json.dumps(list(csv.DictReader(open(sys.argv[1], newline='', encoding='utf-8')))))",
        ])
        .arg(file.path())
        .output()
        .expect("python3");
    assert!(
        parsed.status.success(),
        "{}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&parsed.stdout).unwrap();
    let mut csv_rows: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["phone"].as_str().unwrap().to_string(),
                r["lid"].as_str().unwrap().to_string(),
                r["push_name"].as_str().unwrap().to_string(),
                r["groups"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    csv_rows.sort();
    let mut json_rows: Vec<(String, String, String, String)> = all
        .iter()
        .map(|c| {
            (
                c["phone"].as_str().unwrap_or("").to_string(),
                c["lid"].as_str().unwrap_or("").to_string(),
                c["push_name"].as_str().unwrap_or("").to_string(),
                c["groups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|g| g.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })
        .collect();
    json_rows.sort();
    assert_eq!(csv_rows, json_rows);

    // The operator's fields, by import: JSON then CSV, twice over.
    let bob_lid = lid(&members, BOB);
    for _ in 0..2 {
        let r = daemon
            .post(
                "/v1/sessions/shop-1/contacts/import",
                Some(&token),
                Some(json!({ "contacts": [
                    { "phone": ADA, "external_id": "crm-1", "labels": ["vip"] },
                    { "lid": bob_lid, "labels": ["a", "b", "a"] },
                    { "phone": "15550000000", "external_id": "nobody" },
                    { "external_id": "who?" },
                ] })),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let report = r.json();
        assert_eq!(report["updated"], 2, "{report:#}");
        let problems: Vec<(u64, &str)> = report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["row"].as_u64().unwrap(), p["reason"].as_str().unwrap()))
            .collect();
        assert_eq!(problems, [(3, "not_found"), (4, "invalid")]);
        let csv = format!("phone,external_id,labels\r\n{CARL},\"crm,3\",x;y\r\n15550000001,z,\r\n");
        let r = common::request(
            daemon.addr,
            "POST",
            "/v1/sessions/shop-1/contacts/import",
            Some(&token),
            Some(("text/csv", csv.into_bytes())),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["updated"], 1, "{}", r.text());
        assert_eq!(r.json()["problems"][0]["row"], 2);
    }
    let now = directory_until(&daemon, &token, "the imported fields", |_| true).await;
    assert_eq!(now.len(), 4, "an import creates nobody");
    let ada = by_phone(&now, ADA)[0];
    assert_eq!(
        (&ada["external_id"], &ada["labels"]),
        (&json!("crm-1"), &json!(["vip"]))
    );
    assert_eq!(by_phone(&now, BOB)[0]["labels"], json!(["a", "b"]));
    let carl = by_phone(&now, CARL)[0];
    assert_eq!(
        (&carl["external_id"], &carl["labels"]),
        (&json!("crm,3"), &json!(["x", "y"]))
    );
    // A JSON row outside the schema refuses the whole import.
    let r = daemon
        .post(
            "/v1/sessions/shop-1/contacts/import",
            Some(&token),
            Some(json!({ "contacts": [{ "phone": ADA, "labels": ["x"] }, { "phone": "12ab" }] })),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("contacts[1]"), "{}", r.text());
    assert_eq!(
        by_phone(&directory_until(&daemon, &token, "", |_| true).await, ADA)[0]["labels"],
        json!(["vip"]),
        "nothing of a refused import is set"
    );
    let r = common::request(
        daemon.addr,
        "POST",
        "/v1/sessions/shop-1/contacts/import",
        Some(&token),
        Some(("text/csv", b"phone,colour\r\n1,2\r\n".to_vec())),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.error_code(), "malformed_csv");
    let r = daemon
        .post(
            "/v1/sessions/shop-1/contacts/import",
            Some(&other),
            Some(json!({ "contacts": [] })),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text());

    // Another tenant sees nothing; the same id re-created elsewhere starts empty.
    let r = daemon
        .get("/v1/sessions/shop-1/contacts", Some(&other))
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = daemon.delete("/v1/sessions/shop-1", Some(ADMIN)).await;
    assert!(r.status == 200 || r.status == 204, "{}", r.text());
    let r = daemon
        .post(
            "/v1/sessions",
            Some(&other),
            Some(json!({ "id": "shop-1", "start": false })),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = daemon
        .get("/v1/sessions/shop-1/contacts", Some(&other))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["contacts"],
        json!([]),
        "nothing of the old session"
    );
    let r = daemon
        .get("/v1/sessions/shop-1/contacts.csv", Some(&other))
        .await;
    assert_eq!(
        r.text(),
        "phone,lid,push_name,groups,first_seen_ms,last_seen_ms,name\r\n"
    );
}
