"""Which function hooks this kernel lets a BPF program attach to, tried
for real on unix_stream_connect: a kprobe (through a perf event) and an
fentry (through a BPF trampoline), each with a program that only returns
0. One "@@vm-test hook KIND RESULT" line each for the vm-test harness.
Plain ctypes: the guest has Python but no BPF toolchain."""

import ctypes
import errno
import os
import struct

FUNCTION = "unix_stream_connect"
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

SYS_BPF, SYS_PERF_EVENT_OPEN = 321, 298  # x86-64
BPF_PROG_LOAD, BPF_RAW_TRACEPOINT_OPEN = 5, 17
PROG_KPROBE, PROG_TRACING, TRACE_FENTRY = 2, 26, 24
PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF = 0x2400, 0x40042408
# r0 = 0; exit
RETURN_0 = bytes([0xB7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])


class Refused(Exception):
    pass


def call(number, *args):
    result = libc.syscall(number, *args)
    if result < 0:
        code = ctypes.get_errno()
        raise Refused(errno.errorcode.get(code, str(code)))
    return result


def bpf(command, attr):
    buffer = ctypes.create_string_buffer(bytes(attr), 128)
    return call(SYS_BPF, command, buffer, 128)


def load(prog_type, attach_type=0, btf_id=0):
    insns = ctypes.create_string_buffer(RETURN_0)
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = bytearray(128)
    struct.pack_into("<IIQQIIQ", attr, 0, prog_type, len(RETURN_0) // 8,
                     ctypes.addressof(insns), ctypes.addressof(license),
                     1, len(log), ctypes.addressof(log))
    struct.pack_into("<I", attr, 68, attach_type)
    struct.pack_into("<I", attr, 108, btf_id)
    try:
        return bpf(BPF_PROG_LOAD, attr)
    except Refused as refused:
        raise Refused(f"{refused} at load") from None


def btf_function_id(name):
    """The BTF type id of function `name` in the kernel's own BTF."""
    data = open("/sys/kernel/btf/vmlinux", "rb").read()
    _, _, _, header_len, type_off, type_len, str_off, _ = struct.unpack_from("<HBBIIIII", data)
    types = header_len + type_off
    strings = header_len + str_off
    # Bytes that follow a type's 12-byte header, by kind: fixed, per member.
    extra = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8),
             14: (4, 0), 15: (0, 12), 17: (4, 0), 19: (0, 12)}
    at, type_id = types, 1
    while at < types + type_len:
        name_off, info, _ = struct.unpack_from("<III", data, at)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind == 12:
            end = data.index(b"\0", strings + name_off)
            if data[strings + name_off:end].decode() == name:
                return type_id
        fixed, each = extra.get(kind, (0, 0))
        at += 12 + fixed + each * vlen
        type_id += 1
    raise Refused(f"{name} is not in the kernel's BTF")


def kprobe():
    try:
        pmu = int(open("/sys/bus/event_source/devices/kprobe/type").read())
    except OSError:
        raise Refused("no kprobe PMU (CONFIG_KPROBES is off)") from None
    prog = load(PROG_KPROBE)
    function = ctypes.create_string_buffer(FUNCTION.encode())
    attr = bytearray(128)
    # type, size, config (0: not a return probe), ..., config1: the name
    struct.pack_into("<IIQ", attr, 0, pmu, 128, 0)
    struct.pack_into("<Q", attr, 56, ctypes.addressof(function))
    buffer = ctypes.create_string_buffer(bytes(attr), 128)
    try:
        event = call(SYS_PERF_EVENT_OPEN, buffer, -1, 0, -1, 0)
    except Refused as refused:
        raise Refused(f"{refused} creating the kprobe") from None
    if libc.ioctl(event, PERF_EVENT_IOC_SET_BPF, prog) < 0:
        raise Refused(f"{errno.errorcode[ctypes.get_errno()]} attaching the program")
    libc.ioctl(event, PERF_EVENT_IOC_ENABLE, 0)


def fentry():
    prog = load(PROG_TRACING, TRACE_FENTRY, btf_function_id(FUNCTION))
    attr = bytearray(16)
    struct.pack_into("<QI", attr, 0, 0, prog)
    try:
        bpf(BPF_RAW_TRACEPOINT_OPEN, attr)
    except Refused as refused:
        raise Refused(f"{refused} at attach") from None


for kind, probe in (("kprobe", kprobe), ("fentry", fentry)):
    try:
        probe()
        result = "ok"
    except Refused as refused:
        result = str(refused)
    except OSError as error:
        result = f"cannot tell: {error}"
    print(f"@@vm-test hook {kind} {result}", flush=True)
