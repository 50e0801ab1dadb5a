fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("agent") {
        std::process::exit(sealer::deploy::agent::main(&args[1..]));
    }
    println!("sealer-stub");
}
