//! A client that connects and writes at once, before the server has
//! accepted, as short-lived command-line clients do; a test program of
//! the first-contact tests (`tests/tests/first_contact.rs`).
//!
//! `connect_at_once KIND ADDRESS`: KIND is `stream` or `seqpacket` (Unix;
//! an ADDRESS starting with `@` is an abstract name), `tcp4` or `tcp6`
//! (ADDRESS is a port on loopback). Sends `hello` and `again`, reads the
//! answer, closes. Written with plain system calls, as a C client would be,
//! so that the calls are the ones sockspy sees from most programs.

use std::{io::Error, mem::size_of, process::ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, address] = args.as_slice() else {
        eprintln!("usage: connect_at_once stream|seqpacket|tcp4|tcp6 ADDRESS");
        return ExitCode::from(2);
    };
    match talk(kind, address) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("connect_at_once: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The result of a system call that returns -1 on failure.
fn check(ret: isize) -> Result<isize, Error> {
    if ret < 0 {
        Err(Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn talk(kind: &str, address: &str) -> Result<(), Error> {
    let (family, sock_type) = match kind {
        "stream" => (libc::AF_UNIX, libc::SOCK_STREAM),
        "seqpacket" => (libc::AF_UNIX, libc::SOCK_SEQPACKET),
        "tcp4" => (libc::AF_INET, libc::SOCK_STREAM),
        "tcp6" => (libc::AF_INET6, libc::SOCK_STREAM),
        _ => return Err(Error::other(format!("unknown kind {kind}"))),
    };
    // SAFETY: plain system calls on a descriptor this function owns.
    unsafe {
        let fd = check(libc::socket(family, sock_type, 0) as isize)? as i32;
        connect(fd, family, address)?;
        for message in [&b"hello\n"[..], b"again\n"] {
            check(libc::write(fd, message.as_ptr().cast(), message.len()))?;
        }
        let mut answer = [0u8; 64];
        check(libc::read(fd, answer.as_mut_ptr().cast(), answer.len()))?;
        libc::close(fd);
    }
    Ok(())
}

/// Connects `fd` to `address` in `family`.
///
/// # Safety
/// `fd` must be a socket of `family`.
unsafe fn connect(fd: i32, family: i32, address: &str) -> Result<(), Error> {
    let ret = match family {
        libc::AF_UNIX => {
            // SAFETY: all-zero is a valid sockaddr_un.
            let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            addr.sun_family = libc::AF_UNIX as u16;
            let (name, start) = match address.strip_prefix('@') {
                Some(abstract_name) => (abstract_name.as_bytes(), 1),
                None => (address.as_bytes(), 0),
            };
            if start + name.len() >= addr.sun_path.len() {
                return Err(Error::other("address too long"));
            }
            for (i, &b) in name.iter().enumerate() {
                addr.sun_path[start + i] = b as libc::c_char;
            }
            // A path ends in its NUL; an abstract name starts with one.
            let len = size_of::<libc::sa_family_t>() + 1 + name.len();
            // SAFETY: addr is a sockaddr_un of at least `len` bytes.
            unsafe { libc::connect(fd, (&raw const addr).cast(), len as u32) }
        }
        libc::AF_INET => {
            // SAFETY: all-zero is a valid sockaddr_in.
            let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            addr.sin_family = libc::AF_INET as u16;
            addr.sin_port = port(address)?.to_be();
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            // SAFETY: as above.
            unsafe { libc::connect(fd, (&raw const addr).cast(), size_of_val(&addr) as u32) }
        }
        _ => {
            // SAFETY: all-zero is a valid sockaddr_in6.
            let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            addr.sin6_family = libc::AF_INET6 as u16;
            addr.sin6_port = port(address)?.to_be();
            addr.sin6_addr.s6_addr = std::net::Ipv6Addr::LOCALHOST.octets();
            // SAFETY: as above.
            unsafe { libc::connect(fd, (&raw const addr).cast(), size_of_val(&addr) as u32) }
        }
    };
    check(ret as isize).map(drop)
}

fn port(address: &str) -> Result<u16, Error> {
    address
        .parse()
        .map_err(|_| Error::other(format!("not a port: {address}")))
}
