//! The `fizz` binary.

use std::process::ExitCode;

fn main() -> ExitCode {
    match fizz::cli::run() {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: {}", fizz::cli::report(&e));
            ExitCode::FAILURE
        }
    }
}
