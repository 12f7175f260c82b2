//! Links the system libsrtp2 (Debian's libsrtp2-dev, installed by scripts/setup.sh).
fn main() {
    println!("cargo:rustc-link-lib=dylib=srtp2");
}
