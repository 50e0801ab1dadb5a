fn main() {
    println!("sealer-stub");
}
