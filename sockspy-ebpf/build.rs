//! Rebuilds the programs when the `bpf-linker` that links them changes.
//!
//! Cargo cannot declare a dependency on a tool binary, so the linker's path
//! stands in for it.

fn main() {
    // aya-build passes `--cfg bpf_target_arch=...`; declare it so rustc knows it.
    println!(
        "cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"x86_64\", \"aarch64\", \"arm\", \"riscv64\", \"s390x\", \"powerpc64\", \"mips\", \"loongarch64\"))"
    );
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}); run `cargo xtask setup`"),
    }
}
