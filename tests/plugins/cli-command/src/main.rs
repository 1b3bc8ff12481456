//! A WASI command: a valid component, but not a filter.
fn main() {
    println!("not a filter");
}
