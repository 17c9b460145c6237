//! Names from the phone's address book: fakewa's phone syncs its book to
//! the linked device as app state (`contact` actions in
//! `critical_unblock_low`, MAC'd as WhatsApp does), and the session's
//! contacts directory shows each person's name in their one entry.

mod common;

use common::{Daemon, control, create_tenant, pair};
use serde_json::{Value, json};

const PHONE: &str = "15551270001";
const ADA: &str = "15557810001";
const BOB: &str = "15557810002";
const CARL: &str = "15557810003";

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

fn one<'a>(contacts: &'a [Value], phone: &str) -> Option<&'a Value> {
    let found: Vec<&Value> = contacts.iter().filter(|c| c["phone"] == phone).collect();
    assert!(found.len() <= 1, "{phone} twice: {contacts:#?}");
    found.first().copied()
}

fn name_of(contacts: &[Value], phone: &str) -> Option<String> {
    one(contacts, phone).and_then(|c| c["name"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_book_names_people_in_their_one_entry() {
    common::init_tracing();
    let fake = fakewa::FakeWa::start().await.expect("fakewa");
    let (_dir, daemon) = Daemon::start(&fake.ws_url()).await;
    let token = create_tenant(&daemon, "acme").await;
    let other = create_tenant(&daemon, "other").await;
    // WhatsApp knows Carl's LID (he is in a group), and so does the phone's book.
    let r = control(
        fake.control_addr(),
        "/control/groups",
        json!({ "subject": "g", "members": [{ "phone": CARL }, { "phone": ADA }] }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let carl_lid = r.json()["members"][0]["lid"].as_str().unwrap().to_string();
    // The book exists before the device links: the first sync brings it.
    let book = |contacts: Value| {
        let fake = &fake;
        async move {
            let r = control(
                fake.control_addr(),
                "/control/address-book",
                json!({ "phone": PHONE, "contacts": contacts }),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["version"].as_u64().unwrap()
        }
    };
    let v1 = book(json!([
        { "phone": ADA, "full_name": "Ada Lovelace", "first_name": "Ada" },
        { "phone": BOB, "first_name": "Bob" },
        { "phone": CARL, "full_name": "Carl Gauss", "lid": carl_lid },
    ]))
    .await;
    assert_eq!(v1, 1);
    let r = control(
        fake.control_addr(),
        "/control/address-book",
        json!({ "phone": PHONE, "contacts": [{ "phone": ADA }] }),
    )
    .await;
    assert_eq!(r.status, 400, "a contact without a name: {}", r.text());

    pair(&daemon, &fake, "shop-1", Some("acme"), PHONE).await;
    let contacts = directory_until(&daemon, &token, "three names from the book", |c| {
        c.len() == 3 && c.iter().all(|p| p["name"].is_string())
    })
    .await;
    assert_eq!(name_of(&contacts, ADA).as_deref(), Some("Ada Lovelace"));
    assert_eq!(
        name_of(&contacts, BOB).as_deref(),
        Some("Bob"),
        "first name when no full name"
    );
    let carl = one(&contacts, CARL).unwrap();
    assert_eq!(carl["name"], "Carl Gauss");
    assert_eq!(carl["lid"], carl_lid);
    assert!(carl["push_name"].is_null(), "never seen: {carl}");

    // Ada and Carl write: still one entry each, now with a push name too.
    for from in [ADA, CARL] {
        let r = control(
            fake.control_addr(),
            "/control/messages",
            json!({ "to_phone": PHONE, "from_phone": from, "text": "hi" }),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let contacts = directory_until(&daemon, &token, "Ada's and Carl's messages", |c| {
        [ADA, CARL]
            .iter()
            .all(|p| one(c, p).is_some_and(|e| e["push_name"].is_string()))
    })
    .await;
    assert_eq!(contacts.len(), 3, "merged, never split: {contacts:#?}");
    let ada = one(&contacts, ADA).unwrap();
    assert_eq!(ada["name"], "Ada Lovelace");
    assert_eq!(ada["push_name"], format!("Contact {ADA}"));
    let carl = one(&contacts, CARL).unwrap();
    assert_eq!(carl["name"], "Carl Gauss");
    assert_eq!(carl["lid"], carl_lid);
    assert_eq!(carl["push_name"], format!("Contact {CARL}"));

    // `q` matches the name.
    let r = daemon
        .get("/v1/sessions/shop-1/contacts?q=lovelace", Some(&token))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let found = r.json()["contacts"].clone();
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found[0]["phone"], ADA);

    // The phone renames Ada and deletes Bob: the linked device hears of it
    // (server_sync) and Ada's entry takes the new name. WhatsApp tells no
    // removals, so Bob keeps his.
    let v2 = book(json!([
        { "phone": ADA, "full_name": "Ada King" },
        { "phone": CARL, "full_name": "Carl Gauss", "lid": carl_lid },
    ]))
    .await;
    assert_eq!(v2, 2);
    let contacts = directory_until(&daemon, &token, "Ada's new name", |c| {
        name_of(c, ADA).as_deref() == Some("Ada King")
    })
    .await;
    assert_eq!(contacts.len(), 3, "{contacts:#?}");
    assert_eq!(name_of(&contacts, BOB).as_deref(), Some("Bob"));

    // A device offline while the book changes hears of it at its next login.
    let r = daemon
        .post("/v1/sessions/shop-1/stop", Some(common::ADMIN), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v3 = book(json!([
        { "phone": ADA, "full_name": "Ada King" },
        { "phone": CARL, "full_name": "C. F. Gauss", "lid": carl_lid },
    ]))
    .await;
    assert_eq!(v3, 3);
    let r = daemon
        .post("/v1/sessions/shop-1/start", Some(common::ADMIN), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let contacts = directory_until(&daemon, &token, "Carl's new name after a login", |c| {
        name_of(c, CARL).as_deref() == Some("C. F. Gauss")
    })
    .await;
    assert_eq!(contacts.len(), 3, "{contacts:#?}");

    // The CSV has the names (last column).
    let r = daemon
        .get("/v1/sessions/shop-1/contacts.csv", Some(&token))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let csv = r.text();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("phone,lid,push_name,groups,first_seen_ms,last_seen_ms,name")
    );
    let names: std::collections::BTreeMap<String, String> = lines
        .map(|l| {
            let fields: Vec<&str> = l.split(',').collect();
            (fields[0].to_owned(), fields[fields.len() - 1].to_owned())
        })
        .collect();
    assert_eq!(names.get(ADA).map(String::as_str), Some("Ada King"));
    assert_eq!(names.get(BOB).map(String::as_str), Some("Bob"));
    assert_eq!(names.get(CARL).map(String::as_str), Some("C. F. Gauss"));

    // Nothing of it for another tenant.
    for path in [
        "/v1/sessions/shop-1/contacts",
        "/v1/sessions/shop-1/contacts.csv",
    ] {
        let r = daemon.get(path, Some(&other)).await;
        assert_eq!(r.status, 404, "{path}: {}", r.text());
        assert!(!r.text().contains("Ada"), "{}", r.text());
    }
}
