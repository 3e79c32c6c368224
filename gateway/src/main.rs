//! The `wardgate` binary: everything is in [`wardgate::cli`].

fn main() -> std::process::ExitCode {
    wardgate::cli::main()
}
