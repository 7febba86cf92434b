//! kube-dev binary.
fn main() {}
