//! Why an upstream request failed, decided once for both engines: [`Failure`] is what went
//! wrong on keygate's own upstream connections (the HTTP/1.1 session's and the HTTP/2 links'),
//! with what may be retried, what is logged and counted, and the refusal the client gets;
//! [`UpstreamFailure`] (the label `metrics` defines) is how an operator reads it, classified
//! from keygate's own I/O errors or from the error chain hyper's pool hands back (HTTP/2
//! upstreams).

use std::error::Error;
use std::fmt::Display;
use std::io;

use super::silence::SilentUpstream;
use super::upstream::DialError;
use crate::metrics::Metrics;
pub use crate::metrics::UpstreamFailure;
use crate::ratelog::UPSTREAM_FAILED;
use crate::reject::Reject;

/// Why no usable response came from the upstream.
#[derive(Debug)]
pub enum Failure {
    /// No connection: refused, unreachable, or the connect timeout.
    Dial(DialError),
    /// Writing the request failed.
    Write(io::Error),
    /// No response head within the upstream timeout.
    Timeout,
    /// Closed or reset before any byte of a response.
    ClosedEarly,
    /// The response broke: malformed, cut within its head, or an I/O error after part of it.
    Broken(UpstreamFailure, String),
    /// The client's body was bad (400 or 413): its fault, not the upstream's.
    Client(Reject),
    /// The client went away while an interim response was relayed to it: nobody to answer,
    /// and nothing the upstream did wrong.
    ClientLeft,
}

impl Failure {
    /// A read while waiting for a response head: the bytes it gave, or why none will come.
    /// `heard`: part of the head came already, so a close is a response cut short, not one
    /// never begun (which, on a reused connection, may be retried).
    pub fn of_head_read(read: io::Result<usize>, heard: bool) -> Result<usize, Self> {
        match read {
            Ok(0) if !heard => Err(Self::ClosedEarly),
            Err(e) if !heard && is_reset(&e) => Err(Self::ClosedEarly),
            Ok(0) => Err(Self::Broken(
                UpstreamFailure::Reset,
                "closed within the response head".into(),
            )),
            Err(e) => Err(Self::Broken(
                UpstreamFailure::of_io(&e, false),
                e.to_string(),
            )),
            Ok(n) => Ok(n),
        }
    }

    /// A response head or body that does not parse.
    pub fn malformed(e: impl Display) -> Self {
        Self::Broken(UpstreamFailure::Protocol, e.to_string())
    }

    /// Whether a request that went out whole on a reused connection may go again on a new
    /// one: when writing it failed (the upstream had closed the idle connection), or when
    /// the connection closed before any response and the request is idempotent (the
    /// upstream may have acted on it).
    pub fn may_retry(&self, idempotent: bool) -> bool {
        match self {
            Self::Write(_) => true,
            Self::ClosedEarly => idempotent,
            _ => false,
        }
    }

    /// Logs it (throttled) and counts it in `keygate_upstream_failures_total`; the refusal
    /// the client gets.
    pub fn report(self, metrics: &Metrics) -> Reject {
        let (kind, reject) = match &self {
            Self::Client(reject) => return reject.clone(),
            Self::ClientLeft => return Reject::UpstreamUnavailable,
            Self::Dial(DialError::Timeout) => {
                (UpstreamFailure::ConnectTimeout, Reject::UpstreamTimeout)
            }
            Self::Dial(DialError::Io(e)) => {
                (UpstreamFailure::of_io(e, true), Reject::UpstreamUnavailable)
            }
            Self::Write(e) => (
                UpstreamFailure::of_io(e, false),
                Reject::UpstreamUnavailable,
            ),
            Self::Timeout => (UpstreamFailure::Timeout, Reject::UpstreamTimeout),
            Self::ClosedEarly => (UpstreamFailure::Reset, Reject::UpstreamUnavailable),
            Self::Broken(kind, _) => (*kind, Reject::UpstreamUnavailable),
        };
        // A time-out says all there is to say in the metric; the rest is worth a line.
        if !matches!(self, Self::Timeout) && UPSTREAM_FAILED.allow() {
            match &self {
                Self::Dial(e) => tracing::warn!(error = %e, "upstream request failed"),
                Self::Write(e) => {
                    tracing::warn!(error = %e, "upstream request failed: writing the request");
                }
                Self::ClosedEarly => {
                    tracing::warn!("upstream request failed: closed before responding");
                }
                Self::Broken(_, why) => tracing::warn!(error = %why, "upstream request failed"),
                _ => {}
            }
        }
        metrics.upstream_failed(kind);
        reject
    }
}

/// A response cut off because the upstream went silent within its body: logged (throttled)
/// and counted as `body_timeout`. The client learns it from the cut itself.
pub fn report_silence(counter: &prometheus::IntCounter, silent: &SilentUpstream) {
    if UPSTREAM_FAILED.allow() {
        tracing::warn!(error = %silent, "upstream response cut off");
    }
    counter.inc();
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

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
    fn head_reads() {
        let reset = || Err(io::Error::from(io::ErrorKind::ConnectionReset));
        let cut = |r: Result<usize, Failure>| match r {
            Err(Failure::Broken(kind, _)) => Some(kind),
            _ => None,
        };
        assert_eq!(Failure::of_head_read(Ok(17), false).ok(), Some(17));
        assert_eq!(Failure::of_head_read(Ok(17), true).ok(), Some(17));
        // Nothing heard yet: the connection died idle (retryable where the caller may).
        assert!(matches!(
            Failure::of_head_read(Ok(0), false),
            Err(Failure::ClosedEarly)
        ));
        assert!(matches!(
            Failure::of_head_read(reset(), false),
            Err(Failure::ClosedEarly)
        ));
        // Part of a head heard: a response cut short, never retried.
        assert_eq!(cut(Failure::of_head_read(Ok(0), true)), Some(Reset));
        assert_eq!(cut(Failure::of_head_read(reset(), true)), Some(Reset));
        let timed_out = Err(io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(cut(Failure::of_head_read(timed_out, false)), Some(Timeout));
        let odd = Err(io::Error::other("odd"));
        assert_eq!(cut(Failure::of_head_read(odd, false)), Some(Other));
    }

    #[test]
    fn retries_and_refusals() {
        let write = || Failure::Write(io::Error::from(io::ErrorKind::BrokenPipe));
        let cases: [(Failure, bool, bool, Reject, Option<UpstreamFailure>); 9] = [
            (
                write(),
                false,
                true,
                Reject::UpstreamUnavailable,
                Some(Reset),
            ),
            (
                Failure::ClosedEarly,
                true,
                true,
                Reject::UpstreamUnavailable,
                Some(Reset),
            ),
            (
                Failure::ClosedEarly,
                false,
                false,
                Reject::UpstreamUnavailable,
                Some(Reset),
            ),
            (
                Failure::Timeout,
                true,
                false,
                Reject::UpstreamTimeout,
                Some(Timeout),
            ),
            (
                Failure::Dial(DialError::Timeout),
                true,
                false,
                Reject::UpstreamTimeout,
                Some(ConnectTimeout),
            ),
            (
                Failure::Dial(DialError::Io(io::ErrorKind::ConnectionRefused.into())),
                true,
                false,
                Reject::UpstreamUnavailable,
                Some(Refused),
            ),
            (
                Failure::malformed("a bad head"),
                true,
                false,
                Reject::UpstreamUnavailable,
                Some(Protocol),
            ),
            (
                Failure::Client(Reject::PayloadTooLarge),
                true,
                false,
                Reject::PayloadTooLarge,
                None,
            ),
            (
                Failure::ClientLeft,
                true,
                false,
                Reject::UpstreamUnavailable,
                None,
            ),
        ];
        for (failure, idempotent, retry, reject, counted) in cases {
            let what = format!("{failure:?}");
            assert_eq!(failure.may_retry(idempotent), retry, "{what}");
            let metrics = Metrics::new();
            assert_eq!(failure.report(&metrics), reject, "{what}");
            let text = metrics.render();
            for kind in UpstreamFailure::ALL {
                let line = format!(
                    "keygate_upstream_failures_total{{kind=\"{}\"}} ",
                    kind.as_str()
                );
                let n = text
                    .lines()
                    .find_map(|l| l.strip_prefix(&line))
                    .unwrap_or_else(|| panic!("{line} in {text}"));
                let want = if counted == Some(kind) { "1" } else { "0" };
                assert_eq!(n, want, "{what}: {line}");
            }
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
