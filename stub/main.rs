//! `sealer-stub`: the program at the head of every `.run` file `sealer pack` makes when it finds
//! it beside `sealer` (or in `$SEALER_STUB`), and the agent it uploads to hosts. Everything it
//! does is in [`installer`], which `sealer` also carries, so `sealer` alone can be the stub.

mod installer;

fn main() -> std::process::ExitCode {
    installer::main()
}
