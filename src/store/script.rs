//! The Redis function library: the files of lua/ in one text, loaded into Redis once with
//! `FUNCTION LOAD` and called with `FCALL`. Every `local function` of a file is in scope in the
//! files after it, and is made once, when Redis loads the library, not on every call as in a
//! script run by EVALSHA (which cost about 2.5 µs of Redis CPU per decision; docs/performance.md).
//!
//! The order matters: sliding_log.lua and fixed_window.lua use sliding_window.lua's `MAX_COUNT`,
//! protocol.lua (the KEYS/ARGV/reply layout, twin of redis/protocol.rs) comes before the entry
//! files decide.lua and report.lua, and library.lua, which registers them, comes last.
//!
//! The library's and its functions' names end in a hash of its text, so each release calls its own
//! code: see lua/library.lua. A node without the library answers "Function not found", and the
//! store loads it and calls again (`call` in redis/connection.rs): one extra round trip, not a
//! failed decision.

use std::sync::LazyLock;

/// The files of the library, in order, joined by newlines.
pub const BODY: &str = concat!(
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
    "\n",
    include_str!("../../lua/report.lua"),
    "\n",
    include_str!("../../lua/library.lua"),
);

/// The library as Redis loads it, and the names of its functions.
pub struct Library {
    /// `#!lua name=sluice_<version>`, `local VERSION = '<version>'`, then [`BODY`]; the version is
    /// the first 16 hex digits of the SHA1 of [`BODY`].
    pub source: String,
    /// Decides one request (lua/decide.lua).
    pub decide: String,
    /// Counts reported failures (lua/report.lua).
    pub report: String,
    /// Lifts a penalty block (penalty_unblock in lua/penalty.lua).
    pub unblock: String,
}

pub static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    let sha1 = redis::Script::new(BODY).get_hash().to_owned();
    let version = &sha1[..16];
    Library {
        source: format!("#!lua name=sluice_{version}\nlocal VERSION = '{version}'\n{BODY}"),
        decide: format!("sluice_decide_{version}"),
        report: format!("sluice_report_{version}"),
        unblock: format!("sluice_unblock_{version}"),
    }
});
