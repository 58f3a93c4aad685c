//! The one place that knows which kernel struct fields the programs read.
//!
//! Each field of [`KernelOffsets`] is looked up by name in the running
//! kernel's BTF, so a kernel that moved a field still works and one that
//! lacks it fails with an error naming the struct and field.

use sockspy_common::{KernelOffsets, NO_FIELD};

use crate::capture::btf::{Btf, BtfError};

/// Resolves every offset the kernel programs need.
pub fn resolve(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let at = |strukt: &str, field: &str| btf.member_offset(strukt, field);
    Ok(KernelOffsets {
        task_pid: at("task_struct", "pid")?,
        task_tgid: at("task_struct", "tgid")?,
        task_group_leader: at("task_struct", "group_leader")?,
        task_comm: at("task_struct", "comm")?,
        task_files: at("task_struct", "files")?,
        task_real_parent: at("task_struct", "real_parent")?,
        task_exit_code: at("task_struct", "exit_code")?,
        files_fdt: at("files_struct", "fdt")?,
        fdtable_max_fds: at("fdtable", "max_fds")?,
        fdtable_fd: at("fdtable", "fd")?,
        file_inode: at("file", "f_inode")?,
        file_private_data: at("file", "private_data")?,
        inode_mode: at("inode", "i_mode")?,
        inode_ino: at("inode", "i_ino")?,
        socket_sk: at("socket", "sk")?,
        socket_to_inode: at("socket_alloc", "vfs_inode")? - at("socket_alloc", "socket")?,
        sock_family: at("sock", "__sk_common.skc_family")?,
        sock_state: at("sock", "__sk_common.skc_state")?,
        sock_type: at("sock", "sk_type")?,
        sock_protocol: at("sock", "sk_protocol")?,
        sock_socket: at("sock", "sk_socket")?,
        unix_addr: at("unix_sock", "addr")?,
        unix_peer: at("unix_sock", "peer")?,
        // Older kernels do not say which listener an embryo belongs to;
        // userspace then finds it by the name the embryo carries.
        unix_listener: at("unix_sock", "listener").unwrap_or(NO_FIELD),
        unix_address_len: at("unix_address", "len")?,
        unix_address_name: at("unix_address", "name")?,
        sock_rcv_saddr: at("sock", "__sk_common.skc_rcv_saddr")?,
        sock_num: at("sock", "__sk_common.skc_num")?,
        sock_daddr: at("sock", "__sk_common.skc_daddr")?,
        sock_dport: at("sock", "__sk_common.skc_dport")?,
        sock_v6_rcv_saddr: at("sock", "__sk_common.skc_v6_rcv_saddr")?,
        sock_v6_daddr: at("sock", "__sk_common.skc_v6_daddr")?,
        sock_err: at("sock", "sk_err")?,
        socket_file: at("socket", "file")?,
        task_cred: at("task_struct", "cred")?,
        cred_uid: at("cred", "uid")?,
        sock_net: at("sock", "__sk_common.skc_net")?,
        net_inum: at("net", "ns.inum")?,
        task_thread_pid: at("task_struct", "thread_pid")?,
        pid_level: at("pid", "level")?,
        pid_numbers: at("pid", "numbers")?,
        upid_size: btf.struct_size("upid")?,
        upid_nr: at("upid", "nr")?,
        task_cgroups: at("task_struct", "cgroups")?,
        css_set_dfl_cgrp: at("css_set", "dfl_cgrp")?,
        cgroup_kn: at("cgroup", "kn")?,
        kernfs_node_id: at("kernfs_node", "id")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_kernel_has_every_field() {
        let Some(btf) = crate::capture::btf::running_kernel() else {
            return;
        };
        let offsets = resolve(&btf).expect("resolve offsets");
        // struct sock starts with struct sock_common, and a socket's inode
        // follows the socket in socket_alloc.
        assert_eq!(
            offsets.sock_family,
            btf.member_offset("sock_common", "skc_family").unwrap()
        );
        assert!(offsets.socket_to_inode >= btf.struct_size("socket").unwrap());
        assert!(offsets.task_comm < btf.struct_size("task_struct").unwrap());
    }
}
