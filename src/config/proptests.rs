//! Property tests of the configuration parser: the TOML file, the
//! `WHATSD_…` overlay and the value parsers under them (issue 19: every
//! parser of outside input).

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::sample::select;

use super::*;

/// Parses `text` as the config file with `env` on top. One temp dir per
/// test; the file is rewritten for each case.
struct Loader {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Loader {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("whatsd.toml");
        Self { _dir: dir, path }
    }

    fn load(&self, text: &str, env: &[(String, String)]) -> Result<Config, ConfigError> {
        std::fs::write(&self.path, text).unwrap();
        Config::load_with_env(Some(&self.path), env.iter().cloned())
    }
}

/// Every field, as text: `Config` has no `PartialEq`, and the webhook
/// section's `Debug` hides some fields (and the secret).
fn snapshot(c: &Config) -> String {
    let w = &c.webhooks;
    format!(
        "{c:?} {:?}",
        (
            &w.secret,
            w.timeout,
            w.max_age,
            w.initial_backoff,
            w.max_backoff,
            w.concurrency,
            &w.status_broadcast,
            w.dead_letter_retention,
            w.max_endpoints_per_tenant,
        )
    )
}

/// A generated valid value: what the file and the environment say, and
/// what the parsed config must hold.
#[derive(Clone, Debug)]
enum Valid {
    Duration(String, Duration),
    Size(String, u64),
    Count(u64),
    Text(String),
    Bool(bool),
    List(Vec<String>),
}

impl Valid {
    /// The TOML value.
    fn toml(&self) -> String {
        let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
        match self {
            Self::Duration(text, _) | Self::Size(text, _) => {
                if text.bytes().all(|b| b.is_ascii_digit()) && text.len() < 16 {
                    text.clone()
                } else {
                    quote(text)
                }
            }
            Self::Count(n) => n.to_string(),
            Self::Text(s) => quote(s),
            Self::Bool(b) => b.to_string(),
            Self::List(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(|s| quote(s))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// The environment variable's value.
    fn env(&self) -> String {
        match self {
            Self::Duration(text, _) | Self::Size(text, _) | Self::Text(text) => text.clone(),
            Self::Count(n) => n.to_string(),
            Self::Bool(b) => b.to_string(),
            Self::List(items) => items.join(", "),
        }
    }

    fn duration(&self) -> Duration {
        match self {
            Self::Duration(_, d) => *d,
            other => panic!("not a duration: {other:?}"),
        }
    }

    fn count<T: TryFrom<u64>>(&self) -> T {
        match self {
            Self::Count(n) => T::try_from(*n).ok().unwrap(),
            Self::Size(_, n) => T::try_from(*n).ok().unwrap(),
            other => panic!("not a count: {other:?}"),
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Text(s) => s.clone(),
            other => panic!("not text: {other:?}"),
        }
    }
}

/// A duration in `max_secs` or less, in any of the accepted spellings.
fn duration(max_secs: u64) -> impl Strategy<Value = Valid> {
    prop_oneof![
        (1..=max_secs * 1000)
            .prop_map(|n| Valid::Duration(format!("{n}ms"), Duration::from_millis(n))),
        (1..=max_secs).prop_map(|n| Valid::Duration(format!("{n}s"), Duration::from_secs(n))),
        (1..=max_secs).prop_map(|n| Valid::Duration(n.to_string(), Duration::from_secs(n))),
        (1..=max_secs / 60)
            .prop_map(|n| Valid::Duration(format!("{n}m"), Duration::from_secs(n * 60))),
        (1..=(max_secs / 3600).max(1)).prop_map(move |n| hours_or_days(n, 3600, "h", max_secs)),
        (1..=(max_secs / 86_400).max(1)).prop_map(move |n| hours_or_days(n, 86_400, "d", max_secs)),
    ]
}

/// `n` hours or days, or `max_secs` seconds where that is less.
fn hours_or_days(n: u64, unit_secs: u64, unit: &str, max_secs: u64) -> Valid {
    if n * unit_secs <= max_secs {
        Valid::Duration(format!("{n}{unit}"), Duration::from_secs(n * unit_secs))
    } else {
        Valid::Duration(max_secs.to_string(), Duration::from_secs(max_secs))
    }
}

fn size() -> impl Strategy<Value = Valid> {
    prop_oneof![
        (1024..=u64::from(u32::MAX)).prop_map(|n| Valid::Size(n.to_string(), n)),
        (1024_u64..=1 << 30).prop_map(|n| Valid::Size(format!("{n}B"), n)),
        (1_u64..=1 << 20).prop_map(|n| Valid::Size(format!("{n}KiB"), n << 10)),
        (1..=4096_u64).prop_map(|n| Valid::Size(format!("{n}MiB"), n << 20)),
        (1..=4_u64).prop_map(|n| Valid::Size(format!("{n}GiB"), n << 30)),
    ]
}

fn count(max: u64) -> impl Strategy<Value = Valid> {
    (1..=max).prop_map(Valid::Count)
}

/// Free text that is not blank and holds no NUL (paths, names).
fn text() -> impl Strategy<Value = Valid> {
    "[^\u{0}]{0,24}[^\u{0}\\s,][^\u{0}]{0,8}".prop_map(Valid::Text)
}

fn cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<[u8; 4]>(), proptest::option::of(0..=32_u8)).prop_map(|(ip, prefix)| {
            let ip = std::net::Ipv4Addr::from(ip);
            prefix.map_or_else(|| ip.to_string(), |p| format!("{ip}/{p}"))
        }),
        (any::<[u8; 16]>(), proptest::option::of(0..=128_u8)).prop_map(|(ip, prefix)| {
            let ip = std::net::Ipv6Addr::from(ip);
            // A v4-mapped address is a v4 network: its prefix counts 32 bits.
            let prefix = prefix.filter(|_| ip.to_ipv4_mapped().is_none());
            prefix.map_or_else(|| ip.to_string(), |p| format!("{ip}/{p}"))
        }),
    ]
}

type Setter = fn(&mut Config, &Valid);
type Key = (&'static [&'static str], BoxedStrategy<Valid>, Setter);

fn k(path: &'static [&'static str], strategy: BoxedStrategy<Valid>, set: Setter) -> Key {
    (path, strategy, set)
}

/// Every key, with a strategy for its valid values and where the parsed
/// value lands. The backoff pair and the global webhook endpoint depend
/// on each other; they have a property of their own below.
fn keys() -> Vec<Key> {
    let d = |max| duration(max).boxed();
    vec![
        k(
            &["listen"],
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| Valid::Text(SocketAddr::from((ip, port)).to_string()))
                .boxed(),
            |c, v| c.listen = v.text(),
        ),
        k(&["data_dir"], text().boxed(), |c, v| {
            c.data_dir = PathBuf::from(v.text())
        }),
        k(&["master_key_file"], text().boxed(), |c, v| {
            c.master_key_file = Some(PathBuf::from(v.text()))
        }),
        k(&["auth", "admin_token_file"], text().boxed(), |c, v| {
            c.auth.admin_token_file = Some(PathBuf::from(v.text()))
        }),
        k(
            &["auth", "max_sockets_per_token"],
            count(1 << 20).boxed(),
            |c, v| c.auth.max_sockets_per_token = v.count(),
        ),
        k(&["auth", "ticket_ttl"], d(300), |c, v| {
            c.auth.ticket_ttl = v.duration()
        }),
        k(
            &["auth", "failure_limit"],
            count(u32::MAX.into()).boxed(),
            |c, v| c.auth.failure_limit = v.count(),
        ),
        k(&["auth", "failure_window"], d(86_400 * 30), |c, v| {
            c.auth.failure_window = v.duration()
        }),
        k(
            &["auth", "max_tickets_per_principal"],
            count(1 << 20).boxed(),
            |c, v| c.auth.max_tickets_per_principal = v.count(),
        ),
        k(&["api", "body_limit"], size().boxed(), |c, v| {
            c.api.body_limit = v.count()
        }),
        k(&["api", "request_timeout"], d(86_400), |c, v| {
            c.api.request_timeout = v.duration()
        }),
        k(
            &["api", "max_connections"],
            count(1 << 20).boxed(),
            |c, v| c.api.max_connections = v.count(),
        ),
        k(
            &["api", "max_connections_per_address"],
            count(1 << 20).boxed(),
            |c, v| c.api.max_connections_per_address = v.count(),
        ),
        k(&["api", "header_read_timeout"], d(3600), |c, v| {
            c.api.header_read_timeout = v.duration()
        }),
        k(&["api", "idle_timeout"], d(3600), |c, v| {
            c.api.idle_timeout = v.duration()
        }),
        k(
            &["api", "trusted_proxies"],
            proptest::collection::vec(cidr(), 0..4)
                .prop_map(Valid::List)
                .boxed(),
            |c, v| {
                let Valid::List(items) = v else { panic!() };
                c.api.trusted_proxies = items.iter().map(|s| s.parse().unwrap()).collect();
            },
        ),
        k(&["api", "ws_ping_interval"], d(3600), |c, v| {
            c.api.ws_ping_interval = v.duration()
        }),
        k(&["api", "ws_send_timeout"], d(3600), |c, v| {
            c.api.ws_send_timeout = v.duration()
        }),
        k(
            &["whatsapp", "ws_url"],
            "wss?://[a-z0-9.:/_-]{1,40}".prop_map(Valid::Text).boxed(),
            |c, v| c.whatsapp.ws_url = Some(v.text()),
        ),
        k(
            &["whatsapp", "version"],
            any::<(u32, u32, u32)>()
                .prop_map(|(a, b, c)| Valid::Text(format!("{a}.{b}.{c}")))
                .boxed(),
            |c, v| c.whatsapp.version = Some(v.text()),
        ),
        k(&["whatsapp", "device_os"], text().boxed(), |c, v| {
            c.whatsapp.device_os = Some(v.text())
        }),
        k(&["sessions", "activation_timeout"], d(86_400), |c, v| {
            c.sessions.activation_timeout = v.duration()
        }),
        k(&["sessions", "phone_poll_budget"], d(86_400), |c, v| {
            c.sessions.phone_poll_budget = v.duration()
        }),
        k(
            &["sessions", "start_concurrency"],
            count(1 << 20).boxed(),
            |c, v| c.sessions.start_concurrency = v.count(),
        ),
        k(&["sessions", "health_interval"], d(86_400), |c, v| {
            c.sessions.health_interval = v.duration()
        }),
        k(&["sessions", "stuck_after"], d(86_400), |c, v| {
            c.sessions.stuck_after = v.duration()
        }),
        k(&["sessions", "silent_after"], d(86_400), |c, v| {
            c.sessions.silent_after = v.duration()
        }),
        k(&["sessions", "expiry"], d(86_400 * 400), |c, v| {
            c.sessions.expiry = v.duration()
        }),
        k(
            &["sessions", "send_status_retention"],
            prop_oneof![
                (86_400..=86_400 * 400u64)
                    .prop_map(|n| Valid::Duration(format!("{n}s"), Duration::from_secs(n))),
                (1..=400u64).prop_map(|n| hours_or_days(n, 86_400, "d", 86_400 * 400)),
            ]
            .boxed(),
            |c, v| c.sessions.send_status_retention = v.duration(),
        ),
        k(&["sessions", "shutdown_timeout"], d(3600), |c, v| {
            c.sessions.shutdown_timeout = v.duration()
        }),
        k(
            &["sessions", "max_per_tenant"],
            count(1 << 20).boxed(),
            |c, v| c.sessions.max_per_tenant = v.count(),
        ),
        k(&["webhooks", "secret"], text().boxed(), |c, v| {
            c.webhooks.secret = v.text()
        }),
        k(&["webhooks", "secret_file"], text().boxed(), |c, v| {
            c.webhooks.secret_file = Some(PathBuf::from(v.text()))
        }),
        k(
            &["webhooks", "events"],
            proptest::collection::vec(
                select(crate::webhook::endpoint::EVENT_TYPES).prop_map(str::to_string),
                0..4,
            )
            .prop_map(Valid::List)
            .boxed(),
            |c, v| {
                let Valid::List(items) = v else { panic!() };
                c.webhooks.events = items.clone();
            },
        ),
        k(
            &["webhooks", "format"],
            select(&["whatsd", "cloud_api"][..])
                .prop_map(|s| Valid::Text(s.into()))
                .boxed(),
            |c, v| c.webhooks.format = v.text(),
        ),
        k(
            &["webhooks", "allow_private_targets"],
            any::<bool>().prop_map(Valid::Bool).boxed(),
            |c, v| {
                let Valid::Bool(b) = v else { panic!() };
                c.webhooks.allow_private_targets = *b;
            },
        ),
        k(&["webhooks", "timeout"], d(3600), |c, v| {
            c.webhooks.timeout = v.duration()
        }),
        k(&["webhooks", "max_age"], d(86_400 * 30), |c, v| {
            c.webhooks.max_age = v.duration()
        }),
        k(
            &["webhooks", "concurrency"],
            count(1 << 20).boxed(),
            |c, v| c.webhooks.concurrency = v.count(),
        ),
        k(
            &["webhooks", "status_broadcast"],
            select(&["deliver", "drop"][..])
                .prop_map(|s| Valid::Text(s.into()))
                .boxed(),
            |c, v| c.webhooks.status_broadcast = v.text(),
        ),
        k(
            &["webhooks", "dead_letter_retention"],
            d(86_400 * 400),
            |c, v| c.webhooks.dead_letter_retention = v.duration(),
        ),
        k(
            &["webhooks", "max_endpoints_per_tenant"],
            count(1 << 20).boxed(),
            |c, v| c.webhooks.max_endpoints_per_tenant = v.count(),
        ),
        k(
            &["log", "filter"],
            select(
                &[
                    "info",
                    "debug",
                    "warn",
                    "whatsd=debug,info",
                    "error,whatsd::api=trace",
                ][..],
            )
            .prop_map(|s| Valid::Text(s.into()))
            .boxed(),
            |c, v| c.log.filter = v.text(),
        ),
        k(
            &["log", "format"],
            select(&["auto", "human", "text", "json"][..])
                .prop_map(|s| Valid::Text(s.into()))
                .boxed(),
            |c, v| c.log.format = v.text(),
        ),
    ]
}

/// A valid configuration: some keys set (each with its index in
/// [`keys`]), the others left at their defaults.
fn valid_settings() -> impl Strategy<Value = Vec<(usize, Valid)>> {
    let per_key: Vec<_> = keys()
        .into_iter()
        .enumerate()
        .map(|(i, (_, strategy, _))| {
            proptest::option::weighted(0.3, strategy).prop_map(move |v| v.map(|v| (i, v)))
        })
        .collect();
    per_key.prop_map(|values| values.into_iter().flatten().collect())
}

/// The TOML file that sets `values`, tables in the order given.
fn render_toml(values: &[(usize, Valid)]) -> String {
    let keys = keys();
    let mut tables: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut top = String::new();
    for (i, value) in values {
        match keys[*i].0 {
            [key] => top.push_str(&format!("{key} = {}\n", value.toml())),
            [table, key] => tables
                .entry(table)
                .or_default()
                .push(format!("{key} = {}", value.toml())),
            _ => unreachable!(),
        }
    }
    for (table, lines) in tables {
        top.push_str(&format!("\n[{table}]\n{}\n", lines.join("\n")));
    }
    top
}

fn expected(values: &[(usize, Valid)]) -> Config {
    let keys = keys();
    let mut config = Config::default();
    for (i, value) in values {
        (keys[*i].2)(&mut config, value);
    }
    config
}

/// Text that looks like TOML: known and unknown tables and keys, values of
/// every type (durations and sizes among them), and some plain garbage.
fn tomlish() -> impl Strategy<Value = String> {
    let known_keys: Vec<&str> = ENV_KEYS.iter().map(|(p, _)| *p.last().unwrap()).collect();
    let key = prop_oneof![
        4 => select(known_keys).prop_map(str::to_string),
        1 => "[a-z_]{1,10}",
        1 => "\"[^\"\\\\\n]{0,8}\"",
    ];
    let value = prop_oneof![
        "\"[0-9]{0,22}(ms|s|m|h|d|B|KiB|MiB|GiB|K|k|x| s)?\"",
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        Just("true".to_string()),
        "\"[^\"\\\\\n]{0,16}\"",
        "\\[(\"[^\"\\\\\n]{0,10}\", ?){0,3}\\]",
        "[^\n]{0,16}",
    ];
    let line = prop_oneof![
        4 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => select(&["api", "auth", "whatsapp", "sessions", "webhooks", "log", "x", "api.x", "[log]"][..])
            .prop_map(|t| format!("[{t}]")),
        1 => "[^\n]{0,24}",
    ];
    proptest::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
}

/// A name no section has: not a known key, and not a known table either.
fn unknown_key() -> impl Strategy<Value = String> {
    "[a-z][a-z_]{0,14}".prop_filter("a known key or table", |k| {
        !ENV_KEYS.iter().any(|(path, _)| path.contains(&k.as_str()))
    })
}

proptest! {

    /// Any text: an error or a config that passes its own check, never a
    /// panic (the error path locates the key by slicing the text).
    #[test]
    fn any_text_parses_or_is_refused(text in tomlish()) {
        let loader = Loader::new();
        if let Ok(config) = loader.load(&text, &[]) {
            prop_assert!(config.check().is_ok());
        }
    }

    /// Any `WHATSD_…` environment: an error that names a variable, or a
    /// config that passes its check.
    #[test]
    fn any_environment_overlays_or_is_refused(
        env in proptest::collection::vec(
            (
                prop_oneof![
                    4 => select(ENV_KEYS.iter().map(|(path, _)| env_name(path)).collect::<Vec<_>>()),
                    1 => "WHATSD_[A-Z_]{0,12}",
                    1 => select(NOT_CONFIG_VARS).prop_map(str::to_string),
                    1 => "[A-Z_]{1,12}",
                ],
                prop_oneof![
                    "[0-9]{1,22}(ms|s|m|h|d|KiB|MiB|x)?",
                    "(true|false|yes|no|1|0|maybe)",
                    "[^\u{0}]{0,20}",
                    "( ?[0-9a-f.:/]{1,16},){0,3}",
                ],
            ),
            0..6,
        )
    ) {
        let loader = Loader::new();
        match loader.load("", &env) {
            Ok(config) => prop_assert!(config.check().is_ok()),
            Err(ConfigError::Env { var, .. }) => {
                prop_assert!(env.iter().any(|(k, _)| var.contains(k.as_str())), "{var}");
            }
            Err(ConfigError::Invalid(_)) => {}
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }

    /// A valid configuration written as TOML reads back as the values
    /// written; the same values as environment variables give the same
    /// config.
    #[test]
    fn valid_configs_round_trip_through_toml_and_the_environment(
        values in valid_settings(),
    ) {
        let loader = Loader::new();
        let want = snapshot(&expected(&values));
        let text = render_toml(&values);
        let from_file = loader.load(&text, &[]).map_err(|e| format!("{text}\n{e}"));
        prop_assert_eq!(snapshot(&from_file.unwrap()), want.clone(), "{}", text);
        let keys = keys();
        let env: Vec<(String, String)> = values
            .iter()
            .map(|(i, v)| (env_name(keys[*i].0), v.env()))
            .collect();
        let from_env = loader.load("", &env).map_err(|e| format!("{env:?}\n{e}"));
        prop_assert_eq!(snapshot(&from_env.unwrap()), want, "{:?}", env);
    }

    /// The backoff pair: accepted when initial ≤ max, refused otherwise.
    #[test]
    fn backoffs_are_ordered(initial in duration(86_400), max in duration(86_400)) {
        let loader = Loader::new();
        let text = format!(
            "[webhooks]\ninitial_backoff = {}\nmax_backoff = {}\n",
            initial.toml(),
            max.toml()
        );
        match loader.load(&text, &[]) {
            Ok(c) => {
                prop_assert!(initial.duration() <= max.duration());
                prop_assert_eq!(c.webhooks.initial_backoff, initial.duration());
                prop_assert_eq!(c.webhooks.max_backoff, max.duration());
            }
            Err(e) => {
                prop_assert!(initial.duration() > max.duration(), "{}", e);
                prop_assert!(e.to_string().contains("initial_backoff"), "{}", e);
            }
        }
    }

    /// An unknown key is refused, in the file (named, with its line) and
    /// in the environment (the variable named).
    #[test]
    fn unknown_keys_are_refused(
        key in unknown_key(),
        table in proptest::option::of(select(&["auth", "api", "whatsapp", "sessions", "webhooks", "log"][..])),
    ) {
        let loader = Loader::new();
        let text = match table {
            Some(t) => format!("[{t}]\n{key} = 1\n"),
            None => format!("{key} = 1\n"),
        };
        let err = loader.load(&text, &[]).unwrap_err().to_string();
        prop_assert!(err.contains(&format!("unknown field `{key}`")), "{}", err);
        let var = match table {
            Some(t) => env_name(&[t, &key]),
            None => env_name(&[&key]),
        };
        prop_assume!(!NOT_CONFIG_VARS.contains(&var.as_str()));
        prop_assume!(!ENV_KEYS.iter().any(|(path, _)| env_name(path) == var));
        let err = loader.load("", &[(var.clone(), "1".into())]).unwrap_err();
        prop_assert!(
            matches!(&err, ConfigError::Env { var: v, .. } if *v == var),
            "{}",
            err
        );
    }

    /// The duration and size parsers on any string: never a panic, and
    /// `Ok` only for digits followed by a known unit.
    #[test]
    fn durations_and_sizes_parse_only_numbers_with_units(s in "\\PC{0,12}|[0-9]{1,24} ?(ms|s|m|h|d|B|KiB|MiB|GiB|K|k|M|G)?") {
        let split = |s: &str| {
            let t = s.trim();
            let at = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            (t[..at].to_string(), t[at..].trim().to_string())
        };
        let (digits, unit) = split(&s);
        if let Ok(d) = parse_duration(&s) {
            prop_assert!(!digits.is_empty());
            prop_assert!(["ms", "", "s", "m", "h", "d"].contains(&unit.as_str()));
            let n: u64 = digits.parse().unwrap();
            let want = match unit.as_str() {
                "ms" => Duration::from_millis(n),
                "m" => Duration::from_secs(n * 60),
                "h" => Duration::from_secs(n * 3600),
                "d" => Duration::from_secs(n * 86_400),
                _ => Duration::from_secs(n),
            };
            prop_assert_eq!(d, want);
        }
        if let Ok(n) = parse_size(&s) {
            prop_assert!(!digits.is_empty());
            let mul: u64 = match unit.as_str() {
                "" | "B" => 1,
                "KiB" | "K" | "k" => 1 << 10,
                "MiB" | "M" => 1 << 20,
                "GiB" | "G" => 1 << 30,
                other => return Err(TestCaseError::fail(format!("unit {other:?} accepted"))),
            };
            prop_assert_eq!(n, digits.parse::<u64>().unwrap() * mul);
        }
        let _ = parse_version(&s);
        let _ = s.parse::<Cidr>();
    }

    /// A CIDR written from its parts reads back as those parts, and
    /// contains its own network address.
    #[test]
    fn cidrs_round_trip(text in cidr()) {
        let cidr: Cidr = text.parse().unwrap();
        prop_assert!(cidr.contains(cidr.network));
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u8>().unwrap())),
            None => (text.as_str(), None),
        };
        let ip: IpAddr = addr.parse().unwrap();
        prop_assert_eq!(cidr.network, ip.to_canonical());
        let width = if cidr.network.is_ipv4() { 32 } else { 128 };
        prop_assert_eq!(cidr.prefix, prefix.unwrap_or(width));
    }
}
