//! `authbase healthcheck`: ask a running server's `GET /healthz` on the configured
//! `listen` address. It exists for images without a shell or curl (distroless), whose
//! `HEALTHCHECK` can only run the binary it ships.
//!
//! Plain blocking TCP with one overall deadline: no runtime to start, nothing to
//! configure, and a hung server cannot hold the check past its bound.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The whole check (connect, send, read the status line) ends within this.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// The address to connect to for a server listening on `listen`: a wildcard address
/// accepts on loopback, which is what a check inside the same host or container reaches.
pub fn target(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// `Ok` when `GET /healthz` on the server listening on `listen` answers 200 within
/// `timeout`; otherwise one line saying what went wrong.
pub fn check(listen: SocketAddr, timeout: Duration) -> Result<(), String> {
    if listen.port() == 0 {
        return Err(format!(
            "`listen` is {listen}: port 0 is chosen at start, so there is no port to ask"
        ));
    }
    let addr = target(listen);
    let deadline = Instant::now() + timeout;
    let timed_out = || format!("http://{addr}/healthz did not answer within {timeout:?}");
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };

    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => timed_out(),
        _ => format!("http://{addr}/healthz: {e}"),
    };
    stream
        .set_write_timeout(Some(left().ok_or_else(timed_out)?))
        .map_err(io)?;
    stream
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .map_err(io)?;

    // Only the status line matters; read until its end, at most 1 KiB.
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        stream
            .set_read_timeout(Some(left().ok_or_else(timed_out)?))
            .map_err(io)?;
        match stream.read(&mut buf).map_err(io)? {
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("").trim();
    match status(line) {
        Some(200) => Ok(()),
        Some(_) => Err(format!("http://{addr}/healthz answered `{line}`")),
        None if line.is_empty() => Err(format!(
            "http://{addr}/healthz closed the connection without an answer"
        )),
        None => Err(format!(
            "http://{addr}/healthz answered something that is not HTTP: `{line}`"
        )),
    }
}

/// The status code of an HTTP/1.x status line.
fn status(line: &str) -> Option<u16> {
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_become_loopback() {
        let t = |s: &str| target(s.parse().unwrap()).to_string();
        assert_eq!(t("0.0.0.0:9091"), "127.0.0.1:9091");
        assert_eq!(t("[::]:9091"), "[::1]:9091");
        assert_eq!(t("10.1.2.3:80"), "10.1.2.3:80");
        assert_eq!(t("[fd00::1]:9091"), "[fd00::1]:9091");
    }

    #[test]
    fn status_lines() {
        assert_eq!(status("HTTP/1.1 200 OK"), Some(200));
        assert_eq!(status("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(status("HTTP/1.1 200"), Some(200));
        assert_eq!(status("SSH-2.0-OpenSSH_9.2"), None);
        assert_eq!(status("HTTP/1.1 2000 OK"), None);
        assert_eq!(status(""), None);
    }

    #[test]
    fn port_zero_is_refused_without_connecting() {
        let e = check("127.0.0.1:0".parse().unwrap(), TIMEOUT).unwrap_err();
        assert!(e.contains("port 0"), "{e}");
    }

    #[test]
    fn a_silent_server_is_bounded() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let keep = std::thread::spawn(move || l.accept().map(|(s, _)| s));
        let start = Instant::now();
        let e = check(addr, Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("did not answer within"), "{e}");
        assert!(start.elapsed() < Duration::from_secs(2));
        drop(keep.join());
    }
}
