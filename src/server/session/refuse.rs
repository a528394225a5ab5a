//! Refusals on an HTTP/1.1 connection: the JSON response, and what becomes of a request body
//! that will not be forwarded (skipped when cheap, else the connection closes).

use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::{Facts, Next, Session, Transport};
use crate::keys::rotation::Due;
use crate::metrics::{Decision, Outcome};
use crate::proxy::{Audit, Ended};
use crate::reject::Reject;
use crate::wire::response::{self, Limit};
use crate::wire::{self, Decoder, Encoding, Framing};

/// A refused request's body up to this size is read and dropped, so the connection stays
/// open; a larger one closes it.
const DRAIN_MAX: u64 = 64 * 1024;

/// How far the request body was read when a refusal is written.
#[derive(Debug, Clone, Copy)]
pub(super) enum Body {
    /// Not at all: the refusal came before forwarding.
    Untouched,
    Consumed,
    /// Partly: what is left cannot be told from the next request.
    Partial,
}

/// What is left of a refused request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Leftover {
    None,
    /// This many bytes, few enough to read and drop.
    Drain(u64),
    /// Too much, or unknown: the connection closes.
    Unknown,
}

impl<IO: Transport> Session<'_, IO> {
    /// The response to a refusal; what is left of the request body is skipped when that is
    /// cheap, or the connection closes after the response.
    pub(super) async fn refuse(
        &mut self,
        reject: Reject,
        audit: &Audit<'_>,
        facts: &Facts,
        body: Body,
    ) -> (Outcome, Next) {
        let status = refused(&reject);
        let leftover = match body {
            Body::Untouched => self.skip_body(facts),
            Body::Consumed => Leftover::None,
            Body::Partial => Leftover::Unknown,
        };
        let keep_alive = facts.keep_alive && leftover != Leftover::Unknown && !self.closing.check();
        let limit = audit.limit.as_ref().map(|window| Limit {
            window,
            now_secs: audit.now_secs,
            style: self.proxy.limiter().reset_style(),
        });
        self.down.clear();
        // CORS's headers, so a page can read why; a due key's rotation reminder, as on its
        // forwarded responses (a refusal after authorization is a rate limit's). Neither: no
        // allocation.
        let cors = audit.cors.as_deref().unwrap_or_default();
        let rotation = audit.rotation.as_ref().map(Due::headers);
        let extra: Vec<_> = (cors.iter().cloned())
            .chain(rotation.into_iter().flatten())
            .collect();
        response::refusal(
            &mut self.down,
            &reject,
            limit,
            &extra,
            keep_alive,
            facts.http11,
        );
        if self.send_down_scratch().await.is_err() {
            return (status, Next::Gone);
        }
        let next = match leftover {
            // Closing with body bytes still coming: read them a while, so the response is read.
            Leftover::Unknown | Leftover::Drain(_) if !keep_alive => Next::Linger,
            Leftover::Drain(n) if keep_alive => self.drain(n).await,
            _ if keep_alive => Next::KeepAlive,
            _ => Next::Close,
        };
        (status, next)
    }

    /// keygate's own answer to a CORS preflight (`crate::cors`): never forwarded; what is
    /// left of its body (a preflight has none, as a rule) is skipped as after a refusal.
    pub(super) async fn preflight(&mut self, audit: &Audit<'_>, facts: &Facts) -> (Outcome, Next) {
        let outcome = Outcome {
            status: 204,
            decision: Decision::Allowed,
        };
        let leftover = self.skip_body(facts);
        let keep_alive = facts.keep_alive && leftover != Leftover::Unknown && !self.closing.check();
        self.down.clear();
        let cors = audit.cors.as_deref().unwrap_or_default();
        response::preflight(&mut self.down, cors, keep_alive, facts.http11);
        if self.send_down_scratch().await.is_err() {
            return (outcome, Next::Gone);
        }
        let next = match leftover {
            Leftover::Unknown | Leftover::Drain(_) if !keep_alive => Next::Linger,
            Leftover::Drain(n) => self.drain(n).await,
            _ if keep_alive => Next::KeepAlive,
            _ => Next::Close,
        };
        (outcome, next)
    }

    /// A head refused before it was parsed whole (too large, malformed).
    pub(super) async fn refuse_unread(&mut self, reject: Reject) -> Next {
        self.down.clear();
        response::refusal(&mut self.down, &reject, None, &[], false, true);
        let started = std::time::Instant::now();
        if self.send_down_scratch().await.is_err() {
            return Next::Gone;
        }
        let current = self.proxy.current();
        self.proxy.finish(
            &current.config,
            &Ended {
                started,
                method: None,
                path: None,
                audit: &Audit::default(),
                outcome: refused(&reject),
            },
        );
        Next::Linger
    }

    /// What is left of a refused request's body, taking what is already buffered.
    pub(super) fn skip_body(&mut self, facts: &Facts) -> Leftover {
        let mut decoder = Decoder::new(facts.framing);
        let mut scratch = Vec::new();
        match facts.framing {
            Framing::Empty => Leftover::None,
            // The client waits for a 100 before it sends: whether it then sends the body
            // anyway cannot be known, so the connection closes.
            _ if facts.expect_continue => Leftover::Unknown,
            Framing::Length(n) => {
                let here = (self.buf.len() as u64).min(n);
                self.buf.consume(here as usize);
                match n - here {
                    0 => Leftover::None,
                    left if left <= DRAIN_MAX => Leftover::Drain(left),
                    _ => Leftover::Unknown,
                }
            }
            Framing::Chunked => {
                let taken = wire::body::take_buffered(
                    &mut decoder,
                    Encoding::Raw,
                    &mut self.buf,
                    &mut scratch,
                );
                match (taken, decoder.is_done()) {
                    (Ok(_), true) => Leftover::None,
                    _ => Leftover::Unknown,
                }
            }
            Framing::Close => Leftover::Unknown,
        }
    }

    /// Reads and drops `n` body bytes, within a header timeout.
    pub(super) async fn drain(&mut self, mut n: u64) -> Next {
        let deadline = Instant::now() + self.timing.header;
        while n > 0 {
            let read = tokio::time::timeout_at(deadline, self.io.read(self.buf.spare())).await;
            match read {
                Ok(Ok(got)) if got > 0 => {
                    self.buf.filled_by(got);
                    let here = (self.buf.len() as u64).min(n);
                    self.buf.consume(here as usize);
                    n -= here;
                }
                _ => return Next::Close,
            }
        }
        Next::KeepAlive
    }
}

/// The outcome of a refusal, as logged and counted.
pub(super) fn refused(reject: &Reject) -> Outcome {
    Outcome {
        status: reject.status().as_u16(),
        decision: Decision::Refused(reject.code()),
    }
}
