//! A minimal HTTP/1.1 JSON client for the control API, so tests and
//! benchmarks (in this process or another) can drive a fakewa by address.
//! One request per connection; no dependencies beyond tokio.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("control API unreachable: {0}")]
    Io(#[from] std::io::Error),
    #[error("control API did not answer within 60 s")]
    Timeout,
    #[error("malformed HTTP response")]
    Malformed,
}

/// Sends one request; returns the status and the JSON body (`Null` when the
/// body is not JSON).
pub async fn request(
    method: &str,
    addr: SocketAddr,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, serde_json::Value), ClientError> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let body = body.unwrap_or("");
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{content_type}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| ClientError::Timeout)??;
    let text = String::from_utf8_lossy(&raw);
    let (head, payload) = text.split_once("\r\n\r\n").ok_or(ClientError::Malformed)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(ClientError::Malformed)?;
    let payload = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(payload)
    } else {
        payload.to_owned()
    };
    Ok((
        status,
        serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
    ))
}

pub async fn post(
    addr: SocketAddr,
    path: &str,
    body: serde_json::Value,
) -> Result<(u16, serde_json::Value), ClientError> {
    request("POST", addr, path, Some(&body.to_string())).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, serde_json::Value), ClientError> {
    request("GET", addr, path, None).await
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest.get(n + 2..).unwrap_or("");
    }
    out
}
