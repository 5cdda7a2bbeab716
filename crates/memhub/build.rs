// A prebuilt libduckdb is found next to the binary ($ORIGIN) or where it was linked from (DUCKDB_LIB_DIR).
fn main() {
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    if let Ok(dir) = std::env::var("DUCKDB_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN:{dir}");
    }
}
