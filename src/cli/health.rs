//! `keygate health`: one HTTP/1.1 GET to a running keygate's admin listener, for container
//! health checks. A distroless image has no curl or wget, and a health check that needs a
//! second binary in the image is one more thing to patch; the proxy's own binary can ask.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What to ask: `host:port` to connect to, and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    authority: String,
    path: String,
}

impl Target {
    /// The admin listener's `path`. A listener on every address (`0.0.0.0:9090`, as in a pod)
    /// is asked on loopback, where it answers too.
    pub fn admin(listen: SocketAddr, path: &str) -> Self {
        let ip = match listen.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        Self {
            authority: SocketAddr::new(ip, listen.port()).to_string(),
            path,
        }
    }

    /// An `http://host:port/path` URL.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("--url {url:?}: {e}; use http://HOST:PORT/PATH"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!("--url {url:?}: only http:// URLs can be checked"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("--url {url:?}: no host"))?;
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        Ok(Self { authority, path })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// `Ok` if `target` answers 200 within `timeout`; otherwise why not.
pub async fn check(target: &Target, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, ask(target)).await {
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(200)) => Ok(()),
        Ok(Ok(status)) => Err(format!("status {status}")),
    }
}

async fn ask(target: &Target) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(target.authority.as_str()).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: keygate-health\r\nConnection: close\r\n\r\n",
        target.path, target.authority
    );
    stream.write_all(request.as_bytes()).await?;
    // Only the status line matters; a head larger than this is not a health answer.
    let mut buf = vec![0u8; 4096];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(invalid("closed before a response head"));
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf[..filled]) {
            Ok(httparse::Status::Complete(_)) => {
                return response.code.ok_or_else(|| invalid("no status code"));
            }
            Ok(httparse::Status::Partial) if filled < buf.len() => {}
            Ok(httparse::Status::Partial) => return Err(invalid("response head too large")),
            Err(e) => return Err(invalid(&format!("not an HTTP response: {e}"))),
        }
    }
}

fn invalid(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let cases: &[(&str, &str, &str)] = &[
            ("0.0.0.0:9090", "/healthz", "http://127.0.0.1:9090/healthz"),
            ("[::]:9090", "readyz", "http://[::1]:9090/readyz"),
            ("10.1.2.3:9091", "/readyz", "http://10.1.2.3:9091/readyz"),
        ];
        for (listen, path, want) in cases {
            let got = Target::admin(listen.parse().unwrap(), path).to_string();
            assert_eq!(&got, want, "{listen} {path}");
        }
        let urls: &[(&str, Result<&str, ()>)] = &[
            (
                "http://upstream:3000/healthz",
                Ok("http://upstream:3000/healthz"),
            ),
            ("http://localhost", Ok("http://localhost:80/")),
            ("http://h:1/a?b=c", Ok("http://h:1/a?b=c")),
            ("https://h:1/", Err(())),
            ("/healthz", Err(())),
            ("not a url", Err(())),
        ];
        for (url, want) in urls {
            let got = Target::from_url(url).map(|t| t.to_string()).map_err(|_| ());
            assert_eq!(got.as_deref().map_err(|_| ()), *want, "{url}");
        }
    }

    #[tokio::test]
    async fn answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let replies = [
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
            "garbage\r\n\r\n",
        ];
        tokio::spawn(async move {
            for reply in replies {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply.as_bytes()).await;
            }
        });
        let target = Target::admin(addr, "/healthz");
        let second = Duration::from_secs(5);
        assert_eq!(check(&target, second).await, Ok(()));
        assert_eq!(check(&target, second).await, Err("status 503".into()));
        assert!(check(&target, second).await.is_err());
        // Nothing answers any more (refused, or accepted by a closing listener and unanswered).
        assert!(check(&target, Duration::from_millis(500)).await.is_err());
    }
}
