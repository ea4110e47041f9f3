//! The `fizz` binary.

use std::process::ExitCode;

fn main() -> ExitCode {
    match fizz::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
