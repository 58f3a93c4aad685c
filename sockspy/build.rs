//! Builds the kernel programs (sockspy-ebpf) for the bpf target with the
//! nightly toolchain and bpf-linker, so that `cargo build` alone yields a
//! complete binary. `cargo xtask setup` installs what this needs.

fn main() -> anyhow::Result<()> {
    // aya-build watches the eBPF crate; the shared types live elsewhere.
    println!("cargo:rerun-if-changed=../sockspy-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sockspy-ebpf",
            root_dir: "../sockspy-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
