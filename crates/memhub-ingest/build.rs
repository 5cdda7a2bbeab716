// A prebuilt libduckdb (DUCKDB_LIB_DIR) is found at run time through the rpath, not LD_LIBRARY_PATH.
fn main() {
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    if let Ok(dir) = std::env::var("DUCKDB_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
