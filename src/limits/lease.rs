//! Quota leases: the part of a key's shared long-window quota this sidecar may spend without
//! asking Redis, and the arithmetic that sizes them.
//!
//! A [`Lease`] is three atomics per key and window. The request path takes one request from
//! it with a compare-and-swap; only when it runs low does anything talk to Redis (see
//! [`super::shared`]). The sizing rules are pure functions here so that they can be tested
//! as tables:
//!
//! - [`chunk_size`]: ask for about [`HORIZON_SECS`] of this sidecar's recent rate, never less
//!   than [`MIN_CHUNK`], never more than `1 / (SPLIT × live sidecars)` of the quota that was
//!   left at the last grant. Hot keys far from their limit get big chunks (few round trips);
//!   as a quota runs out the chunks shrink geometrically, so the sidecars still sharing it
//!   split what is left instead of one of them sitting on it.
//! - [`grant`]: what Redis hands out, `min(want, limit - used)`: the sum of all grants in a
//!   window never exceeds the limit (the Lua script in `keys/redis/lease.lua` is the same
//!   rule, run atomically).
//! - [`WindowCounter`]: the store's side, with running totals per sidecar ([`Totals`]) that
//!   make every grant request idempotent: a retried or late request is not counted twice,
//!   and a grant whose reply was lost (Redis paused past the request's timeout, then ran it)
//!   reaches the sidecar with its next reply instead of being lost to the window.
//! - [`fallback_budget`] and [`fallback_limit`]: while Redis does not answer, how many
//!   requests this sidecar may admit on its own: half its share of what its last grant said
//!   was left, or, with no grant yet in the window, a share of the limit. What the first
//!   bounds, the store holds back from every grant for a while after an outage
//!   ([`WindowCounter::answer`], [`Outage`]).

use std::sync::atomic::{AtomicU64, Ordering};

/// Seconds of this sidecar's recent rate a chunk should last.
pub const HORIZON_SECS: u64 = 10;
/// The smallest chunk asked for: a cold key costs one round trip per this many requests.
pub const MIN_CHUNK: u64 = 8;
/// One grant takes at most `1 / (SPLIT × live)` of what is left.
pub const SPLIT: u64 = 4;

/// The number of requests to ask Redis for.
///
/// `left`: the quota not yet handed out, as of the last grant (the limit before the first);
/// `live`: sidecars seen alive (at least 1); `rate_per_sec`: this sidecar's admissions per
/// second for the key since the last grant (0 if unknown).
pub fn chunk_size(left: u64, live: u64, rate_per_sec: f64) -> u64 {
    let wanted = ((rate_per_sec * HORIZON_SECS as f64).ceil() as u64).max(MIN_CHUNK);
    let fair = (left / (SPLIT * live.max(1))).max(1);
    wanted.min(fair)
}

/// Redis's side of a grant (mirrors `lease.lua`): hands out at most what is left.
/// Returns (granted, used after).
pub fn grant(limit: u64, used: u64, want: u64) -> (u64, u64) {
    let granted = want.min(limit.saturating_sub(used));
    (granted, used + granted)
}

/// What one sidecar may admit in a window while Redis is unreachable: `limit × local_share`
/// when a share is configured (below 1), otherwise an equal split between the sidecars last
/// seen alive. At least 1, so a key is never locked out by rounding.
pub fn fallback_limit(limit: u64, local_share: f64, live_last_seen: u64) -> u64 {
    let share = if local_share < 1.0 {
        (limit as f64 * local_share).ceil() as u64
    } else {
        limit / live_last_seen.max(1)
    };
    share.clamp(1, limit.max(1))
}

/// Refill in the background once the lease is down to this part of its last chunk.
pub fn low_water(chunk: u64) -> u64 {
    chunk / 3
}

/// What the store hands one sidecar, as running totals for one window: everything it was
/// granted, admitted on its own while the store did not answer, and handed back unspent.
///
/// Totals, not deltas, make every grant request idempotent: the store adds to `used` only
/// what a total grew by since it last heard it, so a request retried after a lost reply (or
/// one that ran late, after its sender gave up) counts once; and a grant whose reply was lost
/// is not lost, since the next reply carries the sidecar's new granted total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub granted: u64,
    pub fell_back: u64,
    pub returned: u64,
    /// Replies sent to the sidecar in the window; each request acknowledges the last one it
    /// received.
    pub replies: u64,
    /// The most its running total of requests admitted on its own can reach before it next
    /// reports, by the last reply: what it reported plus its [`fallback_budget`].
    pub latest_cap: u64,
    /// The same, by whichever reply the sidecar goes by: the largest over the replies since
    /// the last one it acknowledged (a reply it never received does not change its budget).
    pub cap: u64,
}

/// The store's record of outages, shared by every key: when a sidecar last came back from
/// being cut off (store ms). The hold after an outage runs from there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outage {
    pub back_ms: Option<u64>,
}

/// What a grant request says of its sender beyond its totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    /// The live sidecars the sender counts: its fallback budget is sized by it, and so is
    /// what the store holds back for it.
    pub live: u64,
    /// The sender was cut off from the store since its last reply for this key (or admitted
    /// requests on its own): an outage the other sidecars may have spent quota through too.
    pub recovering: bool,
    /// For how long after a sidecar comes back from an outage the store holds back what
    /// every sidecar may admit on its own (ms).
    pub hold_ms: u64,
    /// The sender admits requests on its own, up to its [`fallback_budget`], while the store
    /// does not answer (`[store] quota_fallback = "budget"`). Otherwise it never does, so the
    /// store records no budget for it and has nothing of its to hold back.
    pub falls_back: bool,
}

impl Sender {
    /// A sidecar that was never cut off, alone: nothing is ever held back.
    pub const STEADY: Sender = Sender {
        live: 1,
        recovering: false,
        hold_ms: 0,
        falls_back: true,
    };
}

/// One window's part of a grant request, as the store reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub limit: u64,
    pub want: u64,
    /// The last reply the sidecar received in this window (0: none).
    pub ack: u64,
    /// Running totals in this window (0 for another window's).
    pub fell_back: u64,
    pub returned: u64,
}

/// The store's answer for one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub granted: u64,
    /// The sidecar's granted total in the window.
    pub total: u64,
    /// Held back for sidecars not heard from since an outage (see [`WindowCounter::answer`]).
    pub held: u64,
    /// How long the hold still lasts (ms; 0: none).
    pub hold_left_ms: u64,
    /// This reply's number, for the sidecar to acknowledge.
    pub reply: u64,
}

/// One window's shared counter as the store keeps it: the rule `keys/redis/lease.lua` runs
/// atomically, in Rust for tests and in-memory stores.
#[derive(Debug, Clone, Default)]
pub struct WindowCounter {
    /// Requests handed out (granted, or admitted by a sidecar on its own), less those handed
    /// back.
    pub used: u64,
    pub sidecars: std::collections::HashMap<String, Totals>,
}

impl WindowCounter {
    /// A grant request from `sidecar`, reporting its running totals of requests admitted on
    /// its own (`fell_back`) and handed back (`returned`).
    ///
    /// For `hold_ms` after a sidecar comes back from being cut off (its request says it is
    /// `recovering`; each one starts the hold over), every grant holds back what every
    /// sidecar may still admit on its own and has not reported: the most its budget lets it
    /// reach ([`Totals::cap`]) less what it reported. Otherwise the first sidecar back could
    /// be granted quota the others admitted without the store knowing, and the window would
    /// end over its limit. A sidecar that has reported is held too, its reply's fresh budget:
    /// the store cannot tell a report from a request that ran late, queued in a paused Redis,
    /// nor whether its sender went on admitting alone after sending it (a decision under way
    /// as the store came back, or a grant answering late right after). What the hold costs is
    /// that grants come from at most about half of what is left until it ends.
    pub fn answer(
        &mut self,
        outage: &mut Outage,
        sidecar: &str,
        sender: Sender,
        now_ms: u64,
        report: Report,
    ) -> Answer {
        let Report {
            limit,
            want,
            ack,
            fell_back,
            returned,
        } = report;
        if sender.recovering {
            outage.back_ms = Some(now_ms);
        }
        let hold_left_ms = outage
            .back_ms
            .map_or(0, |at| (at + sender.hold_ms).saturating_sub(now_ms));
        let totals = self.sidecars.entry(sidecar.to_owned()).or_default();
        if fell_back > totals.fell_back {
            self.used += fell_back - totals.fell_back;
            totals.fell_back = fell_back;
        }
        if returned > totals.returned {
            self.used = self.used.saturating_sub(returned - totals.returned);
            totals.returned = returned;
        }
        if ack == totals.replies {
            // It goes by the last reply.
            totals.cap = totals.latest_cap;
        }
        let held = if hold_left_ms > 0 {
            self.sidecars
                .values()
                .map(|t| t.cap.saturating_sub(t.fell_back))
                .sum()
        } else {
            0
        };
        let (granted, used) = grant(limit.saturating_sub(held), self.used, want);
        self.used = used;
        let totals = self.sidecars.entry(sidecar.to_owned()).or_default();
        totals.granted += granted;
        totals.replies += 1;
        totals.latest_cap = if limit > 0 && sender.falls_back {
            totals.fell_back + fallback_budget(limit.saturating_sub(used + held), sender.live)
        } else {
            totals.fell_back
        };
        totals.cap = totals.cap.max(totals.latest_cap);
        Answer {
            granted,
            total: totals.granted,
            held,
            hold_left_ms,
            reply: totals.replies,
        }
    }

    /// [`Self::answer`] for a sidecar that was never cut off: returns what is granted now and
    /// the sidecar's granted total.
    pub fn grant(
        &mut self,
        sidecar: &str,
        limit: u64,
        want: u64,
        fell_back: u64,
        returned: u64,
    ) -> (u64, u64) {
        let report = Report {
            limit,
            want,
            ack: self.sidecars.get(sidecar).map_or(0, |t| t.replies),
            fell_back,
            returned,
        };
        let answer = self.answer(&mut Outage::default(), sidecar, Sender::STEADY, 0, report);
        (answer.granted, answer.total)
    }
}

/// While the store does not answer, how many requests a sidecar may admit on its own since
/// its last grant, when that grant said `left` were not yet handed out (less what its own
/// unanswered grant requests may still take): a share of it, halved, because the other
/// sidecars may have been granted part of it since, or have requests of their own still
/// queued in a paused Redis. The store records this bound with every grant and holds it back
/// from the others after an outage until the sidecar reports; the rest is granted normally
/// once the store answers.
pub fn fallback_budget(left: u64, live: u64) -> u64 {
    left / (2 * live.max(1))
}

const COUNT_BITS: u32 = 40;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

fn pack(window: u64, count: u64) -> u64 {
    (window << COUNT_BITS) | (count & COUNT_MASK)
}

fn count_in(state: u64, window: u64) -> u64 {
    if state >> COUNT_BITS == window {
        state & COUNT_MASK
    } else {
        0
    }
}

fn unpack(state: u64) -> (u64, u64) {
    (state >> COUNT_BITS, state & COUNT_MASK)
}

/// A grant reply for one window, as [`Lease::settle`] takes it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Granted by this reply.
    pub granted: u64,
    /// Granted to this sidecar in the window so far, by the store's count.
    pub total: u64,
    /// Not yet handed out to anyone.
    pub left: u64,
    /// The running total of requests admitted without a lease that the request reported.
    pub reported: u64,
    /// The reply's number, acknowledged with the next request.
    pub reply: u64,
    /// The live sidecars the request counted: the store sized the budget it recorded for
    /// this reply by it.
    pub live: u64,
    /// While the store holds back part of what is left after an outage, how long to wait
    /// before asking again (ms; 0: nothing is held): a lease that got nothing because the rest
    /// is held back is refused for that moment rather than counted exhausted.
    pub ask_again_in_ms: u64,
}

/// The outcome of [`Lease::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// One request taken; this many are left in the lease.
    Taken { left: u64 },
    /// Nothing left in this window's lease: ask Redis (or the fallback).
    Empty,
    /// Redis said this window's quota is all handed out: refuse without asking again.
    Exhausted,
}

/// One key's lease for one long window. Counts are packed with their window number (top 24
/// bits; 40 bits of count), so a new window starts every one of them at zero.
#[derive(Debug, Default)]
pub struct Lease {
    /// Requests still available.
    available: AtomicU64,
    /// Window number + 1 whose shared quota is all handed out (0: none).
    exhausted: AtomicU64,
    /// The last chunk granted, for the low-water mark.
    chunk: AtomicU64,
    /// `limit - used` in Redis after the last grant: the quota not yet handed out (0 in the
    /// packed count with no grant in the window: see `granted_in`).
    left: AtomicU64,
    /// The window of the last grant + 1 (0: none).
    granted_in: AtomicU64,
    /// The last grant reply received, as (window, number).
    reply_heard: AtomicU64,
    /// Until when (Unix ms) not to ask again: the store holds back the rest of the quota
    /// after an outage.
    held_until_ms: AtomicU64,
    /// Running totals ([`Totals`]): granted as far as this sidecar has heard, admitted on its
    /// own, handed back.
    received: AtomicU64,
    fell_back: AtomicU64,
    returned: AtomicU64,
    /// `fell_back` at the last grant: what was admitted alone since counts against
    /// [`fallback_budget`].
    fell_back_at_grant: AtomicU64,
    /// The live sidecars the last grant's request counted.
    live_at_grant: AtomicU64,
    /// Requests asked for by grant requests whose fate is unknown (they timed out, and Redis
    /// may run them yet): no more is asked for until a reply, which counts them, settles it.
    doubt: AtomicU64,
    /// Requests available right after the last grant, and when it came (Unix ms): the rate
    /// since then sizes the next chunk.
    level: AtomicU64,
    granted_at_ms: AtomicU64,
}

impl Lease {
    pub fn take(&self, window: u64) -> Take {
        let mut state = self.available.load(Ordering::Acquire);
        loop {
            let count = count_in(state, window);
            if count == 0 {
                return if self.exhausted.load(Ordering::Acquire) == window + 1 {
                    Take::Exhausted
                } else {
                    Take::Empty
                };
            }
            let next = pack(window, count - 1);
            match self.available.compare_exchange_weak(
                state,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Take::Taken { left: count - 1 },
                Err(actual) => state = actual,
            }
        }
    }

    /// Gives one request back (another window refused the request), if still `window`.
    pub fn give_back(&self, window: u64) {
        let _ = self
            .available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state >> COUNT_BITS == window).then(|| pack(window, (state & COUNT_MASK) + 1))
            });
    }

    /// Takes in a grant reply for `window`. What the sidecar's granted total grew by beyond
    /// what it had heard of is added to the lease, grants whose replies were lost included. A
    /// grant for a new window replaces the old window's leftovers, which can no longer be
    /// spent.
    pub fn settle(&self, window: u64, reply: Settled, now_ms: u64) {
        let Settled {
            granted,
            total,
            left,
            reported,
            reply,
            live,
            ask_again_in_ms,
        } = reply;
        self.reply_heard
            .store(pack(window, reply), Ordering::Release);
        let heard = count_in(
            self.received.swap(pack(window, total), Ordering::AcqRel),
            window,
        );
        // A total below what we heard: the store lost its counters (emptied, replaced), and
        // only this reply's grant is known to be ours.
        let new = if total >= heard {
            total - heard
        } else {
            granted
        };
        let before = self
            .available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                Some(pack(window, count_in(state, window) + new))
            })
            .unwrap_or_else(|state| state);
        self.level
            .store(count_in(before, window) + new, Ordering::Release);
        self.granted_at_ms.store(now_ms, Ordering::Release);
        if new > 0 {
            self.chunk.store(new, Ordering::Release);
        }
        self.left.store(pack(window, left), Ordering::Release);
        self.granted_in.store(window + 1, Ordering::Release);
        self.fell_back_at_grant
            .store(pack(window, reported), Ordering::Release);
        self.live_at_grant.store(live, Ordering::Release);
        self.doubt.store(0, Ordering::Release);
        // Nothing left to hand out: for the window, or only while the store holds the rest
        // back after an outage.
        let nothing_left = left == 0 && new == 0;
        let held_until = if nothing_left && ask_again_in_ms > 0 {
            now_ms + ask_again_in_ms
        } else {
            0
        };
        self.held_until_ms.store(held_until, Ordering::Release);
        if nothing_left && ask_again_in_ms == 0 {
            self.exhausted.store(window + 1, Ordering::Release);
        }
    }

    /// While the store holds back the rest of `window`'s quota after an outage, how long it
    /// still does (ms).
    pub fn held(&self, window: u64, now_ms: u64) -> Option<u64> {
        let until = self.held_until_ms.load(Ordering::Acquire);
        (self.granted_in.load(Ordering::Acquire) == window + 1 && until > now_ms)
            .then(|| until - now_ms)
    }

    /// A grant request asking for `want` got no reply: Redis may still run it.
    pub fn doubt(&self, window: u64, want: u64) {
        let _ = self
            .doubt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                Some(pack(window, count_in(state, window) + want))
            });
    }

    /// Requests that grant requests without a reply may yet take from what is left.
    pub fn in_doubt(&self, window: u64) -> u64 {
        count_in(self.doubt.load(Ordering::Acquire), window)
    }

    /// Whether requests admitted without a lease in `window` are not known to the store yet.
    pub fn unreported(&self, window: u64) -> bool {
        count_in(self.fell_back.load(Ordering::Acquire), window)
            > count_in(self.fell_back_at_grant.load(Ordering::Acquire), window)
    }

    pub fn available(&self, window: u64) -> u64 {
        count_in(self.available.load(Ordering::Acquire), window)
    }

    /// Requests per second taken from this lease since the last grant (0 before any).
    pub fn rate(&self, window: u64, now_ms: u64) -> f64 {
        let at = self.granted_at_ms.load(Ordering::Acquire);
        if at == 0 {
            return 0.0;
        }
        let taken = self
            .level
            .load(Ordering::Acquire)
            .saturating_sub(self.available(window));
        // A floor on the interval: two grants a moment apart say little about the rate.
        let secs = (now_ms.saturating_sub(at)).max(100) as f64 / 1_000.0;
        taken as f64 / secs
    }

    /// True when the lease should be topped up in the background.
    pub fn is_low(&self, window: u64) -> bool {
        let exhausted = self.exhausted.load(Ordering::Acquire) == window + 1;
        !exhausted && self.available(window) <= low_water(self.chunk.load(Ordering::Acquire))
    }

    /// True when a request would find nothing to take and should wait for a grant.
    pub fn needs_grant(&self, window: u64) -> bool {
        self.available(window) == 0 && self.exhausted.load(Ordering::Acquire) != window + 1
    }

    /// The quota not yet handed out at the last grant in `window`; `None` before any.
    pub fn left(&self, window: u64) -> Option<u64> {
        (self.granted_in.load(Ordering::Acquire) == window + 1)
            .then(|| count_in(self.left.load(Ordering::Acquire), window))
    }

    /// How many requests this sidecar may admit on its own in `window` since the last grant
    /// ([`fallback_budget`] of what it left, less what unanswered grant requests may still
    /// take); `None` before any grant in the window. Sized by the sidecars the grant's request
    /// counted, or more if more are alive now, never fewer: the store recorded that budget
    /// and holds back no more than it, so a sidecar that has since seen others go must not
    /// grow its own.
    pub fn budget(&self, window: u64, live_now: u64) -> Option<u64> {
        let left = self.left(window)?.saturating_sub(self.in_doubt(window));
        let live = live_now.max(self.live_at_grant.load(Ordering::Acquire));
        Some(fallback_budget(left, live))
    }

    /// Admits one request on this sidecar's own authority (the store does not answer) if
    /// fewer than `budget` were admitted so since the last grant; returns how many more may
    /// be.
    pub fn fall_back(&self, window: u64, budget: u64) -> Option<u64> {
        let since = count_in(self.fell_back_at_grant.load(Ordering::Acquire), window);
        let mut admitted = None;
        let _ = self
            .fell_back
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                let total = count_in(state, window);
                let alone = total.saturating_sub(since);
                (alone < budget).then(|| {
                    admitted = Some(budget - alone - 1);
                    pack(window, total + 1)
                })
            });
        admitted
    }

    /// Counts a request admitted without a lease, or (`delta` -1) takes one back.
    pub fn note_fallback(&self, window: u64, delta: i64) {
        let _ = self
            .fell_back
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                let count = count_in(state, window) as i64 + delta;
                Some(pack(window, count.max(0) as u64))
            });
    }

    /// The running total of requests admitted without a lease, as (window, count).
    pub fn fell_back(&self) -> (u64, u64) {
        unpack(self.fell_back.load(Ordering::Acquire))
    }

    /// The last grant reply received, as (window, number).
    pub fn reply_heard(&self) -> (u64, u64) {
        unpack(self.reply_heard.load(Ordering::Acquire))
    }

    /// The running total of requests handed back, as (window, count).
    pub fn returned(&self) -> (u64, u64) {
        unpack(self.returned.load(Ordering::Acquire))
    }

    /// Empties the lease into the handed-back total (the sidecar is stopping); returns the
    /// new total as (window, count), and whether anything was handed back now.
    pub fn surrender(&self) -> ((u64, u64), bool) {
        // The count goes, the window stays.
        let (window, count) = unpack(self.available.fetch_and(!COUNT_MASK, Ordering::AcqRel));
        if count == 0 {
            return (self.returned(), false);
        }
        let mut total = 0;
        let _ = self
            .returned
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                total = count_in(state, window) + count;
                Some(pack(window, total))
            });
        ((window, total), count > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizing() {
        // (left, live, rate/s) -> chunk
        let table: &[(u64, u64, f64, u64)] = &[
            // A cold key asks for the minimum.
            (1_000_000, 1, 0.0, MIN_CHUNK),
            (1_000_000, 3, 0.05, MIN_CHUNK),
            // A hot key far from its limit: ten seconds of its rate.
            (10_000_000, 3, 1_000.0, 10_000),
            (10_000_000, 3, 999.2, 9_992),
            // …but never more than 1/(4 × live) of what is left.
            (1_000, 3, 1_000.0, 83),
            (1_000, 1, 1_000.0, 250),
            (100, 3, 50.0, 8),
            // Near the end, one at a time, never zero.
            (20, 3, 100.0, 1),
            (1, 5, 100.0, 1),
            (0, 5, 100.0, 1),
            // Live sidecars never counted as zero.
            (1_000, 0, 1_000.0, 250),
        ];
        for &(left, live, rate, want) in table {
            assert_eq!(chunk_size(left, live, rate), want, "{left} {live} {rate}");
        }
    }

    #[test]
    fn grants_never_exceed_the_limit() {
        let table: &[(u64, u64, u64, u64, u64)] = &[
            // (limit, used, want) -> (granted, used after)
            (1_000, 0, 83, 83, 83),
            (1_000, 990, 83, 10, 1_000),
            (1_000, 1_000, 5, 0, 1_000),
            // Fallback admissions reported late can push `used` past the limit.
            (1_000, 1_200, 5, 0, 1_200),
            (5, 0, 0, 0, 0),
        ];
        for &(limit, used, want, granted, after) in table {
            assert_eq!(grant(limit, used, want), (granted, after), "{limit} {used}");
        }
        // Any interleaving of asks from any number of sidecars: the total stays ≤ limit.
        for sidecars in 1..6u64 {
            let limit = 1_000;
            let mut used = 0;
            let mut total = 0;
            let mut left = vec![limit; sidecars as usize];
            for round in 0..10_000u64 {
                let s = (round * 7 % sidecars) as usize;
                let want = chunk_size(left[s], sidecars, (round % 300) as f64);
                let (g, u) = grant(limit, used, want);
                used = u;
                total += g;
                left[s] = limit - used;
            }
            assert_eq!(total, limit, "{sidecars} sidecars hand out the whole quota");
        }
    }

    #[test]
    fn fallback_shares() {
        let table: &[(u64, f64, u64, u64)] = &[
            // (limit, local_share, live last seen) -> local limit
            (1_000, 1.0, 1, 1_000),
            (1_000, 1.0, 3, 333),
            (1_000, 1.0, 0, 1_000),
            (1_000, 0.25, 3, 250),
            (1_000, 0.3333, 7, 334),
            (2, 1.0, 5, 1),
            (1, 0.1, 1, 1),
        ];
        for &(limit, share, live, want) in table {
            assert_eq!(
                fallback_limit(limit, share, live),
                want,
                "{limit} {share} {live}"
            );
        }
    }

    /// A grant of `n` on top of what was heard before: the total grows by `n`.
    fn grant_on(lease: &Lease, window: u64, n: u64, left: u64, now_ms: u64) {
        let heard = count_in(lease.received.load(Ordering::Acquire), window);
        let reported = count_in(lease.fell_back.load(Ordering::Acquire), window);
        lease.settle(window, settled(n, heard + n, left, reported), now_ms);
    }

    fn settled(granted: u64, total: u64, left: u64, reported: u64) -> Settled {
        Settled {
            granted,
            total,
            left,
            reported,
            reply: 0,
            live: 1,
            ask_again_in_ms: 0,
        }
    }

    #[test]
    fn a_lease_spends_what_it_was_granted_in_its_window_only() {
        let lease = Lease::default();
        assert_eq!(lease.take(7), Take::Empty);
        assert!(lease.needs_grant(7));
        assert_eq!(lease.left(7), None);
        grant_on(&lease, 7, 3, 900, 1);
        assert_eq!(lease.left(7), Some(900));
        assert_eq!(lease.left(8), None, "what was left is per window");
        assert_eq!(lease.take(7), Take::Taken { left: 2 });
        assert!(!lease.is_low(7));
        assert_eq!(lease.take(7), Take::Taken { left: 1 });
        assert!(lease.is_low(7), "1 of a 3-chunk is below a third");
        lease.give_back(7);
        assert_eq!(lease.available(7), 2);
        // The next window starts empty: leftovers are not carried over.
        assert_eq!(lease.take(8), Take::Empty);
        lease.give_back(8);
        assert_eq!(lease.available(8), 0, "no give-back into another window");
        grant_on(&lease, 8, 2, 0, 1);
        assert_eq!(lease.available(8), 2);
        assert_eq!(lease.available(7), 0);
    }

    #[test]
    fn the_rate_since_the_last_grant() {
        let lease = Lease::default();
        assert_eq!(lease.rate(1, 5_000), 0.0, "unknown before the first grant");
        grant_on(&lease, 1, 100, 900, 10_000);
        for _ in 0..40 {
            lease.take(1);
        }
        assert_eq!(lease.rate(1, 12_000), 20.0, "40 in 2 s");
        assert_eq!(
            lease.rate(1, 10_001),
            400.0,
            "40 in under 100 ms counts as 100 ms"
        );
    }

    #[test]
    fn an_exhausted_window_refuses_without_asking_again() {
        let lease = Lease::default();
        grant_on(&lease, 3, 1, 0, 1);
        assert_eq!(lease.take(3), Take::Taken { left: 0 });
        assert_eq!(
            lease.take(3),
            Take::Empty,
            "used up, but Redis may have more"
        );
        grant_on(&lease, 3, 0, 0, 1);
        assert_eq!(lease.take(3), Take::Exhausted);
        assert!(!lease.is_low(3) && !lease.needs_grant(3));
        assert_eq!(lease.take(4), Take::Empty, "a new window asks again");
    }

    #[test]
    fn a_grant_whose_reply_was_lost_arrives_with_the_next_reply() {
        let mut store = WindowCounter::default();
        let lease = Lease::default();
        let (g, total) = store.grant("a", 1_000, 10, 0, 0);
        lease.settle(1, settled(g, total, 1_000 - store.used, 0), 1);
        // Two requests time out on the sidecar's side, but Redis runs them later.
        store.grant("a", 1_000, 10, 0, 0);
        store.grant("a", 1_000, 10, 0, 0);
        assert_eq!(store.used, 30);
        let (g, total) = store.grant("a", 1_000, 10, 0, 0);
        lease.settle(1, settled(g, total, 1_000 - store.used, 0), 2);
        assert_eq!(
            lease.available(1),
            40,
            "everything Redis counted is spendable"
        );
        // The quota runs out: a reply that brings nothing new marks the window exhausted, and
        // what the lease holds is still spent first.
        let (g, total) = store.grant("a", 40, 10, 0, 0);
        assert_eq!((g, total), (0, 40));
        lease.settle(1, settled(g, total, 0, 0), 3);
        assert_eq!(lease.available(1), 40);
        for _ in 0..40 {
            assert!(matches!(lease.take(1), Take::Taken { .. }));
        }
        assert_eq!(lease.take(1), Take::Exhausted);
    }

    #[test]
    fn reports_and_hand_backs_count_once_however_often_they_are_sent() {
        let mut store = WindowCounter::default();
        // (fell back, returned) totals sent with each request, and `used` after it.
        let table: &[(u64, u64, u64)] = &[
            (5, 0, 5),
            // Retried after a lost reply, or run late: nothing new.
            (5, 0, 5),
            (5, 0, 5),
            (8, 0, 8),
            // An older request arriving after a newer one changes nothing either.
            (5, 0, 8),
            (8, 3, 5),
            (8, 3, 5),
        ];
        for &(fell_back, returned, used) in table {
            store.grant("a", 1_000, 0, fell_back, returned);
            assert_eq!(store.used, used, "{fell_back} {returned}");
        }
        // Another sidecar's totals are its own.
        store.grant("b", 1_000, 0, 4, 0);
        assert_eq!(store.used, 9);
    }

    #[test]
    fn after_an_outage_the_first_sidecar_back_cannot_spend_what_the_others_spent_alone() {
        let sender = |recovering| Sender {
            live: 3,
            recovering,
            hold_ms: 3_000,
            falls_back: true,
        };
        // (want, the last reply received, fell back)
        let ask = |want, ack, fell_back| Report {
            limit: 3_000,
            want,
            ack,
            fell_back,
            returned: 0,
        };
        let before_the_outage = || {
            let (mut store, mut outage) = (WindowCounter::default(), Outage::default());
            for who in ["a", "b", "c"] {
                store.answer(&mut outage, who, sender(false), 1_000, ask(500, 0, 0));
            }
            (store, outage)
        };
        let (mut store, mut outage) = before_the_outage();
        assert_eq!(store.used, 1_500);
        // Each may admit alone half its share of what its last grant left.
        assert_eq!(
            ["a", "b", "c"].map(|who| store.sidecars[who].cap),
            [416, 333, 250]
        );
        // Redis pauses; each spends its lease, then its whole budget alone: 2,499 admitted.
        // `a` reports first: what `b` and `c` may have admitted is held back for 3 s.
        let a = store.answer(&mut outage, "a", sender(true), 5_000, ask(1_000, 1, 416));
        assert_eq!((a.granted, a.held, a.hold_left_ms), (501, 583, 3_000));
        // A request `b` sent while cut off, run late by the paused Redis, reports nothing
        // new: `b` stays held.
        let stale = store.answer(&mut outage, "b", sender(false), 5_200, ask(100, 1, 0));
        assert_eq!((stale.granted, stale.held), (0, 583));
        // `b` and `c` report at their next sync; each one back starts the hold over.
        let b = store.answer(&mut outage, "b", sender(true), 5_500, ask(1_000, 1, 333));
        assert_eq!((b.granted, b.held, b.hold_left_ms), (0, 250, 3_000));
        let c = store.answer(&mut outage, "c", sender(true), 6_000, ask(1_000, 1, 250));
        assert_eq!((c.granted, c.held), (0, 0));
        assert_eq!(store.used, 3_000, "exactly the limit, never over");

        // Without the hold, `a` would have been granted what the others had spent.
        let (mut store, mut outage) = before_the_outage();
        let a = store.answer(&mut outage, "a", Sender::STEADY, 5_000, ask(1_000, 1, 416));
        assert_eq!(a.granted, 1_000);
        store.answer(&mut outage, "b", Sender::STEADY, 5_500, ask(0, 1, 333));
        store.answer(&mut outage, "c", Sender::STEADY, 6_000, ask(0, 1, 250));
        assert_eq!(store.used, 3_499);

        // Sidecars that never report hold nothing back once the hold ends.
        let (mut store, mut outage) = before_the_outage();
        store.answer(&mut outage, "a", sender(true), 5_000, ask(0, 1, 416));
        let a = store.answer(&mut outage, "a", sender(false), 8_000, ask(1_000, 2, 416));
        assert_eq!((a.granted, a.held, a.hold_left_ms), (1_000, 0, 0));
    }

    /// A sidecar that has reported may still admit alone by its reply's fresh budget: a
    /// decision under way as the store came back, or its next grant answering late. Within
    /// the hold that budget is held back from the others too.
    #[test]
    fn a_sidecar_that_reported_is_held_to_its_fresh_budget_until_the_hold_ends() {
        let sender = |recovering| Sender {
            live: 2,
            recovering,
            hold_ms: 3_000,
            falls_back: true,
        };
        let ask = |want, ack, fell_back| Report {
            limit: 1_000,
            want,
            ack,
            fell_back,
            returned: 0,
        };
        let (mut store, mut outage) = (WindowCounter::default(), Outage::default());
        store.answer(&mut outage, "a", sender(false), 0, ask(100, 0, 0));
        store.answer(&mut outage, "b", sender(false), 0, ask(100, 0, 0));
        assert_eq!(
            [store.sidecars["a"].cap, store.sidecars["b"].cap],
            [225, 200]
        );
        // An outage: each spends its budget alone. `a` reports first; its reply leaves it
        // 93 more to admit alone (a quarter of the 375 neither spent nor held).
        let a = store.answer(&mut outage, "a", sender(true), 1_000, ask(0, 1, 225));
        assert_eq!((a.granted, a.held), (0, 200));
        assert_eq!(store.sidecars["a"].cap, 318);
        // `b` reports and asks for everything: `a`'s 93 stay held.
        let b = store.answer(&mut outage, "b", sender(true), 1_500, ask(1_000, 1, 200));
        assert_eq!((b.granted, b.held), (282, 93));
        // `a`, cut off again right after its report, admitted those 93 alone.
        store.answer(&mut outage, "a", sender(true), 2_000, ask(0, 2, 318));
        assert_eq!(store.used, 1_000, "exactly the limit");
    }

    #[test]
    fn a_sidecar_is_held_to_the_budget_of_the_reply_it_goes_by() {
        let (mut store, mut outage) = (WindowCounter::default(), Outage::default());
        let steady = Sender {
            live: 2,
            ..Sender::STEADY
        };
        let ask = |want, ack| Report {
            limit: 1_000,
            want,
            ack,
            fell_back: 0,
            returned: 0,
        };
        // Reply 1 leaves 900: `a` may admit 225 alone.
        store.answer(&mut outage, "a", steady, 0, ask(100, 0));
        assert_eq!(store.sidecars["a"].cap, 225);
        // Reply 2 (600 left, 150 alone) is lost: `a` still goes by reply 1.
        store.answer(&mut outage, "a", steady, 1, ask(300, 1));
        assert_eq!(store.sidecars["a"].latest_cap, 150);
        assert_eq!(store.sidecars["a"].cap, 225);
        // Reply 3 (500 left) arrives, but the request did not acknowledge reply 2 either.
        store.answer(&mut outage, "a", steady, 2, ask(100, 1));
        assert_eq!(store.sidecars["a"].cap, 225);
        // Acknowledged: only reply 3's budget, or the next one's, can be in use.
        store.answer(&mut outage, "a", steady, 3, ask(0, 3));
        assert_eq!(store.sidecars["a"].cap, 125);
    }

    /// A sidecar that refuses instead of falling back (`quota_fallback = "refuse"`) has no
    /// budget recorded, so an outage it went through holds nothing of its back from others.
    #[test]
    fn a_sidecar_that_never_falls_back_has_nothing_held_back_for_it() {
        let (mut store, mut outage) = (WindowCounter::default(), Outage::default());
        let sender = |falls_back, recovering| Sender {
            live: 2,
            recovering,
            hold_ms: 3_000,
            falls_back,
        };
        let ask = |want, ack| Report {
            limit: 1_000,
            want,
            ack,
            fell_back: 0,
            returned: 0,
        };
        // (falls back, the budget recorded for it after 100 of 1,000 granted)
        for (who, falls_back, cap) in [("a", true, 225), ("b", false, 0)] {
            store.answer(&mut outage, who, sender(falls_back, false), 0, ask(100, 0));
            assert_eq!(store.sidecars[who].cap, cap, "{who}");
        }
        // An outage: `b` reports first. What `a` may have admitted alone is held back; `b`
        // itself could have admitted nothing alone.
        let b = store.answer(&mut outage, "b", sender(false, true), 10, ask(900, 1));
        assert_eq!((b.granted, b.held), (575, 225));
        // Refusing sidecars only: nothing is held.
        let (mut store, mut outage) = (WindowCounter::default(), Outage::default());
        for who in ["a", "b"] {
            store.answer(&mut outage, who, sender(false, false), 0, ask(100, 0));
        }
        let b = store.answer(&mut outage, "b", sender(false, true), 10, ask(900, 1));
        assert_eq!((b.granted, b.held), (800, 0));
    }

    #[test]
    fn a_held_lease_is_refused_for_a_moment_not_the_window() {
        let lease = Lease::default();
        let held = Settled {
            ask_again_in_ms: 2_000,
            ..settled(0, 0, 0, 0)
        };
        lease.settle(4, held, 10_000);
        assert_eq!(lease.take(4), Take::Empty, "not exhausted while held");
        assert_eq!(lease.held(4, 10_500), Some(1_500));
        assert_eq!(lease.held(4, 12_000), None);
        assert_eq!(lease.held(5, 10_500), None, "per window");
        lease.settle(4, settled(0, 0, 0, 0), 12_000);
        assert_eq!(lease.held(4, 12_001), None);
        assert_eq!(lease.take(4), Take::Exhausted);
    }

    #[test]
    fn a_store_that_lost_its_counters_hands_over_only_this_grant() {
        let lease = Lease::default();
        grant_on(&lease, 1, 50, 900, 1);
        // Redis came back empty: its total for us restarts at this grant.
        lease.settle(1, settled(8, 8, 992, 0), 2);
        assert_eq!(lease.available(1), 58);
        grant_on(&lease, 1, 8, 984, 3);
        assert_eq!(lease.available(1), 66);
    }

    #[test]
    fn falling_back_is_bounded_by_what_the_last_grant_left() {
        let lease = Lease::default();
        // Before any grant in the window there is nothing to go by here.
        assert_eq!(lease.left(5), None);
        grant_on(&lease, 5, 10, 600, 1);
        let budget = fallback_budget(600, 3);
        assert_eq!(budget, 100);
        let admitted = (0..150).filter_map(|_| lease.fall_back(5, budget)).count();
        assert_eq!(admitted, 100);
        assert_eq!(lease.fell_back(), (5, 100));
        assert!(lease.unreported(5));
        // The next grant reports them and starts a new budget.
        grant_on(&lease, 5, 10, 300, 2);
        assert!(!lease.unreported(5));
        assert_eq!(lease.fall_back(5, fallback_budget(300, 3)), Some(49));
        assert_eq!(lease.fell_back(), (5, 101));
        lease.note_fallback(5, -1);
        assert_eq!(lease.fell_back(), (5, 100));
        // A new window counts from zero.
        lease.note_fallback(6, 1);
        assert_eq!(lease.fell_back(), (6, 1));
    }

    /// The store recorded the budget sized by the sidecars the grant's request counted, and
    /// holds back no more: a sidecar that has since seen others go keeps that budget.
    #[test]
    fn the_budget_is_never_larger_than_the_one_the_store_recorded() {
        let lease = Lease::default();
        assert_eq!(lease.budget(5, 3), None, "no grant in the window yet");
        let three = Settled {
            live: 3,
            ..settled(10, 10, 600, 0)
        };
        lease.settle(5, three, 1);
        // (live sidecars now) -> budget
        for (live, budget) in [(3, 100), (1, 100), (2, 100), (5, 60)] {
            assert_eq!(lease.budget(5, live), Some(budget), "{live} live");
        }
        // What an unanswered grant request may still take is not there to spend.
        lease.doubt(5, 60);
        assert_eq!(lease.budget(5, 3), Some(90));
        assert_eq!(lease.budget(6, 3), None, "per window");
    }

    #[test]
    fn an_unanswered_grant_request_is_in_doubt_until_the_next_reply() {
        let lease = Lease::default();
        grant_on(&lease, 4, 10, 900, 1);
        lease.doubt(4, 75);
        lease.doubt(4, 0);
        assert_eq!(lease.in_doubt(4), 75);
        assert_eq!(lease.in_doubt(5), 0, "per window");
        grant_on(&lease, 4, 75, 825, 2);
        assert_eq!(
            lease.in_doubt(4),
            0,
            "the reply counted it, whatever became of it"
        );
    }

    #[test]
    fn handing_back_adds_to_a_running_total() {
        let lease = Lease::default();
        grant_on(&lease, 2, 10, 900, 1);
        lease.take(2);
        assert_eq!(lease.surrender(), ((2, 9), true));
        assert_eq!(lease.surrender(), ((2, 9), false), "nothing more");
        grant_on(&lease, 2, 4, 890, 2);
        assert_eq!(lease.surrender(), ((2, 13), true));
        assert_eq!(lease.returned(), (2, 13));
    }

    #[test]
    fn concurrent_takes_never_exceed_the_grant() {
        let lease = std::sync::Arc::new(Lease::default());
        lease.settle(1, settled(1_000, 1_000, 0, 0), 1);
        let taken: u64 = std::thread::scope(|s| {
            (0..8)
                .map(|_| {
                    let lease = lease.clone();
                    s.spawn(move || {
                        (0..500)
                            .filter(|_| matches!(lease.take(1), Take::Taken { .. }))
                            .count() as u64
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .sum()
        });
        assert_eq!(taken, 1_000);
    }
}
