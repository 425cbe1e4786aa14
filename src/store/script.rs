//! The decision script: lua/decide.lua with the algorithm files it calls prepended. The text is
//! compiled into the binary once; redis-rs sends EVALSHA and, on NOSCRIPT (after a restart or a
//! SCRIPT FLUSH), loads it and tries again, so a flushed cache costs one extra round trip, not a
//! failed decision.

use std::sync::LazyLock;

pub const SOURCE: &str = concat!(
    include_str!("../../lua/sliding_window.lua"),
    "\n",
    include_str!("../../lua/sliding_log.lua"),
    "\n",
    include_str!("../../lua/decide.lua"),
);

/// The script with its SHA1 computed once.
pub static DECIDE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SOURCE));
