//! One way for tests to own a child process, and one way to pick a port for it.
//!
//! `Process` holds a child and, on drop, thaws it (a frozen child ignores nothing but SIGKILL, yet
//! a thawed one is reaped at once), kills it and reaps it, so that a failed assertion never leaves
//! a server running. `pick_port` hands out loopback ports below Linux's ephemeral range, never the
//! same one twice in a test process.

use std::collections::HashSet;
use std::net::TcpListener;
use std::process::{Child, Command};
use std::sync::{LazyLock, Mutex};

/// The cluster bus listens on port + 10000.
pub const BUS_OFFSET: u16 = 10000;

/// Ports come from here, so that both a port and its bus port stay below Linux's default ephemeral
/// range (32768 and up): no outgoing connection of another test can be holding them.
const PORT_RANGE: std::ops::Range<u16> = 15000..22700;

/// Ports handed out in this test process; never handed out twice, even once their server has gone.
static RESERVED: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(|| Mutex::new(HashSet::new()));

/// A random loopback port that is free now (and, with `bus`, whose port + 10000 is free too), never
/// returned before in this process.
pub fn pick_port(bus: bool) -> u16 {
    let mut reserved = RESERVED.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port: u16 = rand::random_range(PORT_RANGE);
        let bindable = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if reserved.contains(&port) || !bindable(port) || (bus && !bindable(port + BUS_OFFSET)) {
            continue;
        }
        reserved.insert(port);
        return port;
    }
    panic!("no free loopback port in {PORT_RANGE:?} after 1000 tries");
}

/// A child process, thawed, killed and reaped on drop.
#[derive(Debug)]
pub struct Process(pub Child);

impl Process {
    /// Starts `command`; panics (the test fails, never skips) when the program cannot run.
    pub fn spawn(command: &mut Command, install_hint: &str) -> Process {
        let program = command.get_program().to_string_lossy().into_owned();
        Process(command.spawn().unwrap_or_else(|e| panic!("cannot run {program} ({e}); {install_hint}")))
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Whether it has exited (and then how), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().expect("try_wait on a test child")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            signal(self.0.id(), "CONT");
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends a signal by name with kill(1); quietly, since the process may already be gone.
pub fn signal(pid: u32, name: &str) -> bool {
    Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().is_ok_and(|s| s.success())
}
