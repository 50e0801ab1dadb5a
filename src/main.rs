fn main() {
    println!("sealer");
}
