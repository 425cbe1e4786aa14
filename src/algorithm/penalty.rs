//! Penalty blocks: after `violations` within `period`, a key is blocked for
//! `min(base * factor^n, max)`, where `n` counts its earlier blocks. A violation is a denial by the
//! tier, or a failure reported for the key. The escalation is forgotten `max` after the last block
//! or period ends. Twin of lua/penalty.lua.

/// A tier's penalty settings, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Penalty {
    pub violations: u64,
    pub period_ms: u64,
    pub base_ms: u64,
    pub factor: u64,
    pub max_ms: u64,
}

/// One key's penalty state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PenaltyState {
    /// Violations in the current period.
    pub violations: u64,
    /// When the violation count restarts.
    pub restart_at: u64,
    /// Blocked until this instant (0: never blocked).
    pub blocked_until: u64,
    /// Blocks so far.
    pub blocks: u32,
}

impl PenaltyState {
    pub fn blocked(&self, now: u64) -> bool {
        self.blocked_until > now
    }

    /// Forgets everything once `max` has passed since the block or the period ended (a quiet
    /// spell), as the Redis key expires.
    pub fn refresh(&mut self, now: u64, p: Penalty) {
        if self.restart_at != 0 && now >= self.expires_at(p) {
            *self = PenaltyState::default();
        }
    }

    /// Adds `count` violations at `now`; blocks on reaching the threshold. Call `refresh` first.
    pub fn violate(&mut self, now: u64, p: Penalty, count: u64) {
        if now >= self.restart_at {
            self.violations = 0;
            self.restart_at = now + p.period_ms;
        }
        self.violations = self.violations.saturating_add(count);
        if self.violations >= p.violations {
            let length =
                p.factor.checked_pow(self.blocks).and_then(|f| p.base_ms.checked_mul(f)).unwrap_or(u64::MAX);
            self.blocked_until = now + length.min(p.max_ms);
            self.blocks = self.blocks.saturating_add(1);
            self.violations = 0;
            self.restart_at = now + p.period_ms;
        }
    }

    /// Until when the state still matters.
    pub fn expires_at(&self, p: Penalty) -> u64 {
        self.blocked_until.max(self.restart_at) + p.max_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Penalty = Penalty { violations: 3, period_ms: 60_000, base_ms: 1_000, factor: 2, max_ms: 5_000 };

    #[test]
    fn blocks_escalate_up_to_the_maximum() {
        let mut s = PenaltyState::default();
        let mut now = 10_000;
        for expected in [1_000, 2_000, 4_000, 5_000, 5_000] {
            for _ in 0..3 {
                assert!(!s.blocked(now));
                s.violate(now, P, 1);
            }
            assert_eq!(s.blocked_until - now, expected);
            now = s.blocked_until;
        }
    }

    #[test]
    fn violations_outside_the_period_do_not_add_up() {
        let mut s = PenaltyState::default();
        s.violate(0, P, 2);
        s.violate(60_000, P, 2);
        assert!(!s.blocked(60_000));
        s.violate(60_001, P, 1);
        assert!(s.blocked(60_001));
    }
}
