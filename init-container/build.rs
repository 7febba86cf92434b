//! Link approle-init with packed relative relocations (`DT_RELR`, glibc ≥ 2.36, binutils ≥ 2.38).
//!
//! A Rust position-independent executable carries about fifteen thousand relative relocations
//! (vtables, string tables). As `RELA` entries they are 360 KB read and applied at every start; as
//! `RELR` they are under 2 KB. approle-init starts once per pod, so this shows in every delivery's
//! CPU, and the binary is smaller. The Dockerfile builds on Debian 12 (glibc 2.36).
//!
//! The image's binary is also linked statically (`cargo release-init`, an alias in
//! `.cargo/config.toml` that passes `-C target-feature=+crt-static` to this crate alone): a static
//! PIE, relocated by its own start-up code, with no dynamic loader, no shared libraries to map and
//! no symbols to bind. A build script cannot ask for that itself, and setting it for the whole
//! build would reach the proc-macro crates, which cannot be static.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
