//! The systemd notification protocol (`sd_notify`), for `Type=notify`:
//! `READY=1` once the daemon serves, `WATCHDOG=1` while it is healthy,
//! `STOPPING=1` when it starts shutting down.
//!
//! A datagram to the socket named by `$NOTIFY_SOCKET`: a path, or an
//! abstract name written with a leading `@`. Without the variable (not
//! started by systemd) every call does nothing. Written here rather than
//! pulled in as a crate: it is one `sendto`.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

/// Where systemd listens for our notifications.
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: Option<NotifySocket>,
    watchdog: Option<Duration>,
}

#[derive(Debug, Clone)]
enum NotifySocket {
    Path(PathBuf),
    /// Linux abstract namespace (`@name` in `$NOTIFY_SOCKET`).
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`.
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|raw| {
            use std::os::unix::ffi::OsStrExt;
            let bytes = raw.as_bytes();
            match bytes.first() {
                None => None,
                Some(b'@') => Some(NotifySocket::Abstract(bytes[1..].to_vec())),
                Some(_) => Some(NotifySocket::Path(PathBuf::from(raw))),
            }
        });
        let watchdog = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        Self { socket, watchdog }
    }

    /// A notifier that never sends anything.
    pub fn disabled() -> Self {
        Self {
            socket: None,
            watchdog: None,
        }
    }

    /// The watchdog timeout systemd enforces (`WatchdogSec=`), if any. Ping
    /// at half of it.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `state` (e.g. `"READY=1"`). Failures are logged, never fatal:
    /// a daemon must not die because its supervisor's socket went away.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.send(state) {
            tracing::warn!(error = %e, state, "sd_notify failed");
        }
    }

    fn send(&self, state: &str) -> io::Result<()> {
        let Some(socket) = &self.socket else {
            return Ok(());
        };
        let sender = UnixDatagram::unbound()?;
        let sent = match socket {
            NotifySocket::Path(path) => sender.send_to(state.as_bytes(), path)?,
            NotifySocket::Abstract(name) => send_abstract(&sender, name, state.as_bytes())?,
        };
        if sent != state.len() {
            return Err(io::Error::other("short write to NOTIFY_SOCKET"));
        }
        Ok(())
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn send_abstract(sender: &UnixDatagram, name: &[u8], data: &[u8]) -> io::Result<usize> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sender.send_to_addr(data, &addr)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &[u8]) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract NOTIFY_SOCKET names exist only on Linux",
    ))
}

/// `WATCHDOG_USEC` as a duration, if it is meant for this process
/// (`WATCHDOG_PID` unset or equal to our pid) and positive.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_only_for_this_process() {
        assert_eq!(
            watchdog_interval(Some("200000"), None, 7),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            watchdog_interval(Some("200000"), Some("7"), 7),
            Some(Duration::from_millis(200))
        );
        assert_eq!(watchdog_interval(Some("200000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    #[test]
    fn datagrams_reach_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            socket: Some(NotifySocket::Path(path)),
            watchdog: None,
        };
        notifier.send("READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn datagrams_reach_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("whatsd-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier {
            socket: Some(NotifySocket::Abstract(name.into_bytes())),
            watchdog: None,
        };
        notifier.send("STOPPING=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
