//! The `wardgate` command, built inside the e2e test package so tests can spawn it (and kill -9
//! it) through `CARGO_BIN_EXE_wardgate-e2e-bin`.

fn main() -> std::process::ExitCode {
    wardgate::cli::main()
}
