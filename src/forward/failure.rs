//! Why an upstream request failed, as an operator reads it ([`UpstreamFailure`], the label
//! `metrics` defines): both engines classify here, keygate's HTTP/1.1 from its own I/O errors,
//! hyper's pool (HTTP/2) from the error chain hyper hands back.

use std::error::Error;
use std::io;

pub use crate::metrics::UpstreamFailure;

impl UpstreamFailure {
    /// An I/O error on an upstream connection. `connecting`: while opening it (where a
    /// time-out is the connect timeout's).
    pub fn of_io(e: &io::Error, connecting: bool) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
            return Self::Tls;
        }
        match e.kind() {
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::NotFound => Self::Refused,
            io::ErrorKind::TimedOut if connecting => Self::ConnectTimeout,
            io::ErrorKind::TimedOut => Self::Timeout,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Self::Reset,
            io::ErrorKind::InvalidData => Self::Protocol,
            _ => Self::Other,
        }
    }

    /// An error from hyper's client: the first cause in the chain that says what happened.
    pub fn of_error(e: &(dyn Error + 'static)) -> Self {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(io) = err.downcast_ref::<io::Error>() {
                let connecting = e
                    .downcast_ref::<hyper_util::client::legacy::Error>()
                    .is_some_and(|c| c.is_connect());
                return Self::of_io(io, connecting);
            }
            if err.is::<rustls::Error>() {
                return Self::Tls;
            }
            if let Some(h) = err.downcast_ref::<hyper::Error>() {
                if h.is_parse() || h.is_parse_status() {
                    return Self::Protocol;
                }
                if h.is_timeout() {
                    return Self::Timeout;
                }
                if h.is_incomplete_message() || h.is_closed() || h.is_canceled() {
                    return Self::Reset;
                }
            }
            if err.is::<h2::Error>() {
                // A stream or connection reset by the upstream's HTTP/2 side.
                return Self::Reset;
            }
            cur = err.source();
        }
        Self::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use UpstreamFailure::*;

    #[test]
    fn io_errors() {
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
        );
        let cases = [
            (
                io::Error::from(io::ErrorKind::ConnectionRefused),
                true,
                Refused,
            ),
            (io::Error::from(io::ErrorKind::NotFound), true, Refused),
            (
                io::Error::from(io::ErrorKind::TimedOut),
                true,
                ConnectTimeout,
            ),
            (io::Error::from(io::ErrorKind::TimedOut), false, Timeout),
            (
                io::Error::from(io::ErrorKind::ConnectionReset),
                false,
                Reset,
            ),
            (io::Error::from(io::ErrorKind::BrokenPipe), false, Reset),
            (io::Error::from(io::ErrorKind::UnexpectedEof), false, Reset),
            (io::Error::from(io::ErrorKind::InvalidData), false, Protocol),
            (tls, true, Tls),
            (io::Error::other("strange"), false, Other),
        ];
        for (e, connecting, want) in cases {
            assert_eq!(UpstreamFailure::of_io(&e, connecting), want, "{e:?}");
        }
    }

    #[test]
    fn chains() {
        #[derive(Debug)]
        struct Wrap(Box<dyn Error + Send + Sync>);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl Error for Wrap {
            fn source(&self) -> Option<&(dyn Error + 'static)> {
                Some(&*self.0)
            }
        }
        let refused = Wrap(Box::new(io::Error::from(io::ErrorKind::ConnectionRefused)));
        assert_eq!(UpstreamFailure::of_error(&refused), Refused);
        let tls = Wrap(Box::new(rustls::Error::NoCertificatesPresented));
        assert_eq!(UpstreamFailure::of_error(&tls), Tls);
        let reset = Wrap(Box::new(h2::Error::from(h2::Reason::CANCEL)));
        assert_eq!(UpstreamFailure::of_error(&reset), Reset);
        assert_eq!(UpstreamFailure::of_error(&io::Error::other("x")), Other);
        let names: std::collections::HashSet<_> =
            UpstreamFailure::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), UpstreamFailure::ALL.len());
    }
}
