// Guests that must sit at particular addresses get a linker script; the Rust
// long-mode guests use the linker's default non-PIE layout (from 2 MiB).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    for (bin, script) in
        [("real-mode", "real-mode.ld"), ("multiboot", "multiboot.ld"), ("multiboot-low", "multiboot-low.ld")]
    {
        println!("cargo:rustc-link-arg-bin={bin}=-T{dir}/{script}");
        println!("cargo:rerun-if-changed={script}");
    }
    println!("cargo:rustc-link-arg-bins=--no-pie");
}
