//! The two scripts, each an entry file of lua/ with the files it calls prepended: Redis runs one
//! text, and every `local function` of a prepended file is in scope below it. The text is compiled
//! into the binary once and called by its SHA1; on NOSCRIPT (after a restart or a SCRIPT FLUSH) the
//! store loads it and tries again (`eval` in redis/connection.rs), so a flushed cache costs one
//! extra round trip, not a failed decision.
//!
//! The order matters: sliding_log.lua and fixed_window.lua use sliding_window.lua's `MAX_COUNT`, and protocol.lua (the
//! KEYS/ARGV/reply layout, twin of redis/protocol.rs) comes right before the entry file.

use std::sync::LazyLock;

/// lua/decide.lua, which decides a request, with the algorithms, the penalty, the baseline and
/// the protocol it calls.
pub const SOURCE: &str = concat!(
    include_str!("../../lua/sliding_window.lua"),
    "\n",
    include_str!("../../lua/sliding_log.lua"),
    "\n",
    include_str!("../../lua/fixed_window.lua"),
    "\n",
    include_str!("../../lua/adaptive.lua"),
    "\n",
    include_str!("../../lua/penalty.lua"),
    "\n",
    include_str!("../../lua/baseline.lua"),
    "\n",
    include_str!("../../lua/protocol.lua"),
    "\n",
    include_str!("../../lua/decide.lua"),
);

/// The script with its SHA1 computed once.
pub static DECIDE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SOURCE));

/// lua/report.lua, which counts reported failures, with what it shares with the decision script:
/// the adaptive counter, the penalty and the protocol.
pub const REPORT_SOURCE: &str = concat!(
    include_str!("../../lua/adaptive.lua"),
    "\n",
    include_str!("../../lua/penalty.lua"),
    "\n",
    include_str!("../../lua/protocol.lua"),
    "\n",
    include_str!("../../lua/report.lua"),
);

/// The report script with its SHA1 computed once.
pub static REPORT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(REPORT_SOURCE));
