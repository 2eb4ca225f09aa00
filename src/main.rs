//! The `airlock` binary: see [`airlock::cli`].

fn main() -> std::process::ExitCode {
    airlock::cli::main()
}
