//! A deliberately small HTTP/1.1 client over a plain `TcpStream`: the tests need to send exact
//! bytes, read raw server-sent events, and hang up mid-answer, which a full client hides.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Whether the body ended as HTTP says a body ends (the last chunk, or the whole length),
    /// rather than by the connection breaking.
    pub complete: bool,
}

impl Answer {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `method path` with `headers` and `body`, reads the whole answer.
pub fn request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let stream = send(address, method, path, headers, body);
    read_answer(stream, usize::MAX).0
}

/// The status of `GET path`, or `None` while the server cannot answer (refused, reset, closed
/// before a status line): for waiting until a server starting up is ready.
pub fn probe(address: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let head = format!("GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// POSTs JSON with a bearer key.
pub fn post_json(address: SocketAddr, path: &str, key: &str, body: &serde_json::Value) -> Answer {
    let auth = format!("Bearer {key}");
    request(
        address,
        "POST",
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
}

/// Opens a connection and sends a request; the caller reads.
pub fn send(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> TcpStream {
    let mut stream = TcpStream::connect(address).unwrap();
    // Longer than any wait a test configures (the llama race lets calls wait in the budget's
    // line for 120 s): a client that gave up first would fail a test the gateway passed.
    stream
        .set_read_timeout(Some(Duration::from_secs(150)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before reading a large body and close; that is fine.
    let _ = stream.write_all(body);
    stream
}

/// Reads an answer from `stream`, stopping once `body_bytes_max` body bytes have arrived
/// (the stream is returned still open, for a test that then hangs up).
pub fn read_answer(stream: TcpStream, body_bytes_max: usize) -> (Answer, TcpStream) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        if let Some((name, value)) = trimmed.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let length: Option<usize> = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok());
    let mut body = Vec::new();
    let mut complete = false;
    if chunked {
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let size = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            if size == 0 {
                complete = line.trim() == "0";
                break;
            }
            let mut chunk = vec![0; size + 2];
            if reader.read_exact(&mut chunk).is_err() {
                break;
            }
            chunk.truncate(size);
            body.extend_from_slice(&chunk);
            if body.len() >= body_bytes_max {
                break;
            }
        }
    } else if let Some(length) = length {
        body.resize(length.min(body_bytes_max), 0);
        reader.read_exact(&mut body).unwrap();
        complete = body.len() == length;
    } else {
        let _ = reader.read_to_end(&mut body);
    }
    (
        Answer {
            status,
            headers,
            body,
            complete,
        },
        reader.into_inner(),
    )
}
