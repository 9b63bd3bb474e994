//! Postgres frontend messages built by hand and backend messages read raw:
//! for tests that send what no client library would (pipelines cut where a
//! test needs them, stalls mid-login, malformed messages) and read exactly
//! what the gateway answered.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Stack;

/// A message: its tag, its length and `body`.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&(i32::try_from(body.len() + 4).unwrap()).to_be_bytes());
    m.extend_from_slice(body);
    m
}

pub fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// A StartupMessage (protocol 3.0) for `user` and `database`.
pub fn startup_message(user: &str, database: &str) -> Vec<u8> {
    let mut startup = 196_608_i32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", database)] {
        cstr(&mut startup, k);
        cstr(&mut startup, v);
    }
    startup.push(0);
    let mut first = i32::try_from(startup.len() + 4).unwrap().to_be_bytes().to_vec();
    first.extend_from_slice(&startup);
    first
}

/// A PasswordMessage.
pub fn password(secret: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, secret);
    message(b'p', &body)
}

pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&0i16.to_be_bytes());
    message(b'P', &b)
}

/// Bind with text parameters and text results.
pub fn bind(portal: &str, statement: &str, params: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, statement);
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&(i16::try_from(params.len()).unwrap()).to_be_bytes());
    for p in params {
        b.extend_from_slice(&(i32::try_from(p.len()).unwrap()).to_be_bytes());
        b.extend_from_slice(p.as_bytes());
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    message(b'B', &b)
}

/// A simple query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut q = Vec::new();
    cstr(&mut q, sql);
    message(b'Q', &q)
}

/// A Bind of statement `statement` into the unnamed portal, every result
/// column in binary format.
pub fn bind_binary_of(statement: &str) -> Vec<u8> {
    bind_binary("", statement)
}

/// A Bind of statement `statement` into `portal`, every result column in
/// binary format.
pub fn bind_binary(portal: &str, statement: &str) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, portal);
    cstr(&mut body, statement);
    body.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0, 1]);
    message(b'B', &body)
}

pub fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&max_rows.to_be_bytes());
    message(b'E', &b)
}

/// Parse, Bind and Execute of one statement, then Sync.
pub fn run_named(name: &str, sql: &str) -> Vec<u8> {
    [parse(name, sql), bind("", name, &[]), execute("", 0), message(b'S', &[])].concat()
}

/// Writes `messages` in one write, as a pipelining client does.
pub async fn send(stream: &mut TcpStream, messages: &[Vec<u8>]) {
    stream.write_all(&messages.concat()).await.unwrap();
}

/// Reads one backend message: its tag and body.
pub async fn read_message(stream: &mut (impl AsyncRead + Unpin)) -> (u8, Vec<u8>) {
    try_read_message(stream).await.expect("the gateway closed the connection")
}

/// `read_message`, or `None` when the connection is closed before a whole message.
async fn try_read_message(stream: &mut (impl AsyncRead + Unpin)) -> Option<(u8, Vec<u8>)> {
    let tag = stream.read_u8().await.ok()?;
    let len = stream.read_i32().await.ok()?;
    let mut body = vec![0; usize::try_from(len - 4).unwrap()];
    stream.read_exact(&mut body).await.ok()?;
    Some((tag, body))
}

/// Reads backend messages up to ReadyForQuery, as `tag:first column` strings
/// (`D:NULL` for a row whose first column is NULL).
pub async fn read_until_ready(stream: &mut TcpStream) -> (Vec<String>, u8) {
    let mut seen = Vec::new();
    // The last error's message, for a connection closed before ReadyForQuery.
    let mut said = String::new();
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), try_read_message(stream)).await.unwrap();
        let Some((tag, body)) = read else {
            panic!("the gateway closed the connection after {seen:?} (last error: {said:?})");
        };
        if tag == b'E' {
            let message = body.split(|b| *b == 0).find_map(|f| f.strip_prefix(b"M")).unwrap_or_default();
            said = String::from_utf8_lossy(message).into_owned();
        }
        match tag {
            b'Z' => return (seen, body[0]),
            b'D' => match usize::try_from(i32::from_be_bytes(body[2..6].try_into().unwrap())) {
                Ok(len) => seen.push(format!("D:{}", String::from_utf8_lossy(&body[6..6 + len]))),
                Err(_) => seen.push("D:NULL".to_owned()),
            },
            b'E' => {
                let code = body.split(|b| *b == 0).find_map(|f| f.strip_prefix(b"C")).unwrap();
                seen.push(format!("E:{}", String::from_utf8_lossy(code)));
            }
            b'C' => seen.push(format!("C:{}", String::from_utf8_lossy(&body[..body.len() - 1]))),
            b'N' | b'S' => {}
            other => seen.push((other as char).to_string()),
        }
    }
}

/// Sends a startup message as `user` and reads the password request that
/// answers it: a login that waits for its password.
pub async fn prompted_login(s: &Stack, user: &str) -> TcpStream {
    let mut stream = TcpStream::connect(s.pg).await.unwrap();
    stream.write_all(&startup_message(user, s.db.name())).await.unwrap();
    let (tag, body) = tokio::time::timeout(Duration::from_secs(10), read_message(&mut stream)).await.unwrap();
    assert_eq!((tag, body), (b'R', 3i32.to_be_bytes().to_vec()), "a cleartext password request");
    stream
}

/// A raw session as `user`, logged in and ready for query.
pub async fn raw_login(s: &Stack, user: &str, token: &str) -> TcpStream {
    let mut stream = prompted_login(s, user).await;
    stream.write_all(&password(token)).await.unwrap();
    let (_, status) = read_until_ready(&mut stream).await;
    assert_eq!(status, b'I');
    stream
}

/// Reads backend messages until a FATAL, which must be the last thing sent;
/// returns its SQLSTATE and message, once the gateway has closed the
/// connection.
pub async fn read_fatal(stream: &mut TcpStream) -> (String, String) {
    let (_, code, message) = read_to_fatal(stream).await;
    (code, message)
}

/// `read_fatal`, with the tags of the messages that came before the FATAL.
pub async fn read_to_fatal(stream: &mut TcpStream) -> (Vec<u8>, String, String) {
    let mut before = Vec::new();
    loop {
        let (tag, body) = tokio::time::timeout(Duration::from_secs(10), read_message(stream)).await.unwrap();
        let field = |name: u8| {
            body.split(|b| *b == 0)
                .find_map(|f| f.strip_prefix(&[name]))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        if tag == b'E' && field(b'V') == "FATAL" {
            let mut after = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut after)).await.unwrap().unwrap();
            assert!(after.is_empty());
            return (before, field(b'C'), field(b'M'));
        }
        before.push(tag);
    }
}
