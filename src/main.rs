/// mimalloc rather than glibc's malloc: HTTP/2 serving allocates and frees on different worker
/// threads, which glibc pays for in locks and consolidation (docs/performance.md has the figures).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
