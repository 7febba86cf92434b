//! Link approle-init with packed relative relocations (`DT_RELR`, glibc ≥ 2.36, binutils ≥ 2.38).
//!
//! A Rust position-independent executable carries about fifteen thousand relative relocations
//! (vtables, string tables). As `RELA` entries they are 360 KB that the dynamic loader reads and
//! applies at every start; as `RELR` they are under 2 KB. approle-init starts once per pod, so
//! this shows in every delivery's CPU, and the binary is smaller. The Dockerfile builds on
//! Debian 12 and runs on distroless `cc-debian12`, both glibc 2.36.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
