//! The decision script: lua/decide.lua with the files it calls prepended. The text is compiled into
//! the binary once and called by its SHA1; on NOSCRIPT (after a restart or a SCRIPT FLUSH) the store
//! loads it and tries again, so a flushed cache costs one extra round trip, not a failed decision.

use std::sync::LazyLock;

pub const SOURCE: &str = concat!(
    include_str!("../../lua/sliding_window.lua"),
    "\n",
    include_str!("../../lua/sliding_log.lua"),
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

/// lua/report.lua with the counter it shares with the decision script.
pub const REPORT_SOURCE: &str = concat!(
    include_str!("../../lua/adaptive.lua"),
    "\n",
    include_str!("../../lua/penalty.lua"),
    "\n",
    include_str!("../../lua/protocol.lua"),
    "\n",
    include_str!("../../lua/report.lua"),
);

pub static REPORT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(REPORT_SOURCE));
