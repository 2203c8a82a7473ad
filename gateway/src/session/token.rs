//! The connection's token over time: a `token_expiring` notice before `exp`, the end of what
//! the token allows at `exp` (plus the verification leeway), and the close after the grace.

use roomcast_schemas::now_ms;
use std::time::Duration;
use tokio::time::Instant;

/// Where a connection's token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenPhase {
    /// Valid, and the notice is not due yet.
    Valid,
    /// Valid; `token_expiring` was sent.
    Notified,
    /// Past `exp` and the leeway: only `refresh` is accepted until the grace ends.
    Expired,
}

/// What the token's timer asks of the session when it fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenEvent {
    /// Send `token_expiring { exp }`.
    Notice,
    /// The token no longer allows anything but `refresh`.
    Expired,
    /// The grace is over: close with 4001.
    Close,
}

/// A connection's token clock. Instants are taken from tokio's clock (so that tests can pause
/// it), converted from `exp` once when the token is set.
#[derive(Debug, Clone)]
pub(crate) struct TokenClock {
    /// The token's `exp`, seconds since the Unix epoch.
    exp: u64,
    notice_at: Instant,
    expires_at: Instant,
    close_at: Instant,
    phase: TokenPhase,
}

/// Settings of the token clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenTimes {
    /// How long before `exp` the notice is sent.
    pub(crate) notice: Duration,
    /// Verification leeway: the token allows frames until `exp` plus this.
    pub(crate) leeway: Duration,
    /// After expiry, how long `refresh` is still accepted before the close.
    pub(crate) grace: Duration,
}

impl TokenClock {
    /// The clock of a token expiring at `exp` (seconds since the epoch).
    pub(crate) fn new(exp: u64, times: TokenTimes) -> Self {
        let now = Instant::now();
        let left = Duration::from_millis(exp.saturating_mul(1000).saturating_sub(now_ms()));
        let expires_at = now + left + times.leeway;
        TokenClock {
            exp,
            notice_at: (now + left).checked_sub(times.notice).unwrap_or(now),
            expires_at,
            close_at: expires_at + times.grace,
            phase: TokenPhase::Valid,
        }
    }

    /// The token's `exp`.
    pub(crate) fn exp(&self) -> u64 {
        self.exp
    }

    /// Whether the token still allows joins and publishes.
    pub(crate) fn allows(&self) -> bool {
        self.phase != TokenPhase::Expired && Instant::now() < self.expires_at
    }

    /// When the timer fires next.
    pub(crate) fn deadline(&self) -> Instant {
        match self.phase {
            TokenPhase::Valid => self.notice_at,
            TokenPhase::Notified => self.expires_at,
            TokenPhase::Expired => self.close_at,
        }
    }

    /// The timer fired: what to do, and the next phase.
    pub(crate) fn fire(&mut self) -> TokenEvent {
        match self.phase {
            TokenPhase::Valid => {
                self.phase = TokenPhase::Notified;
                TokenEvent::Notice
            }
            TokenPhase::Notified => {
                self.phase = TokenPhase::Expired;
                TokenEvent::Expired
            }
            TokenPhase::Expired => TokenEvent::Close,
        }
    }
}
