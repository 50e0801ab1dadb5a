//! The `sealer` command line: parses arguments, calls the library, prints.
//!
//! The same executable is also a package's installer: when a payload follows its ELF image
//! (`sealer pack` made a `.run` file with `sealer` itself at its head, because no `sealer-stub`
//! was beside it), it runs the package's command line instead.

use std::process::ExitCode;

mod cli;
#[path = "../stub/installer.rs"]
mod installer;

fn main() -> ExitCode {
    let packaged =
        sealer::deploy::payload::ExecutableHead::of_self().is_some_and(|head| head.carries_payload);
    if packaged {
        return installer::main();
    }
    ExitCode::from(u8::try_from(cli::main()).unwrap_or(1))
}
