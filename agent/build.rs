//! scripts/build-release sets NETDB_HOT_CODE=1: the linker then puts the
//! functions an agent runs (hot-code.order, made by scripts/hot-code) at
//! the start of the binary's text, so the few MB it runs are resident and
//! the rest is not (docs/performance.md, "Hot code first"). Off otherwise:
//! the ordering needs lld (Rust's default linker on x86_64 Linux), and only
//! the shipped build's symbol names match the list. Here rather than in
//! RUSTFLAGS so that cargo relinks when the list changes.

fn main() {
    println!("cargo:rerun-if-env-changed=NETDB_HOT_CODE");
    if std::env::var_os("NETDB_HOT_CODE").is_some_and(|v| v == "1") {
        println!("cargo:rerun-if-changed=hot-code.order");
        let order = concat!(env!("CARGO_MANIFEST_DIR"), "/hot-code.order");
        println!("cargo:rustc-link-arg-bin=netdb=-Wl,--symbol-ordering-file={order}");
        // A name the build no longer has is skipped: a stale list costs
        // memory, not correctness (scripts/hot-code --check counts them).
        println!("cargo:rustc-link-arg-bin=netdb=-Wl,--no-warn-symbol-ordering");
    }
}
