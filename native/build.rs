//! Links the module with every symbol bound at load (`-z now`): an Envoy that lacks one of
//! the ABI callbacks this module calls then refuses to load it, naming the symbol, instead
//! of crashing on the first call.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,now");
}
