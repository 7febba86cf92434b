//! approle-sandbox binary.
fn main() {}
