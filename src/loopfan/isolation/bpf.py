"""eBPF without a compiler: an instruction assembler and thin wrappers over the bpf() syscall.

Rules of this file: no policy lives here, only kernel mechanics. Instructions are built by small
functions that return packed 8-byte records (`struct bpf_insn`: u8 code, u8 dst:4|src:4, s16 off,
s32 imm, little-endian on every architecture loopfan supports). Syscall failures become `BpfError`
carrying the errno and, for program loads, the verifier log, so the caller can say exactly what the
kernel refused. Every fd returned is owned by the caller, who closes it.

Kernel facts this file relies on (include/uapi/linux/bpf.h):
- bpf(2) is syscall 321 on x86_64, 280 on aarch64.
- Commands: BPF_MAP_CREATE 0, BPF_MAP_LOOKUP_ELEM 1, BPF_PROG_LOAD 5, BPF_PROG_GET_NEXT_ID 11,
  BPF_PROG_GET_FD_BY_ID 13, BPF_OBJ_GET_INFO_BY_FD 15, BPF_LINK_CREATE 28 (kernel >= 5.7 for cgroups).
- `union bpf_attr` is read by the kernel up to the size we pass; fields we leave zero are unused.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import struct
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------
# Syscall plumbing

_SYSCALL_NR = {"x86_64": 321, "aarch64": 280, "arm64": 280}

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_PROG_LOAD = 5
BPF_PROG_GET_NEXT_ID = 11
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_LINK_CREATE = 28

BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_LRU_HASH = 9
BPF_PROG_TYPE_CGROUP_SOCK_ADDR = 18

# enum bpf_attach_type
BPF_CGROUP_INET4_BIND = 8
BPF_CGROUP_INET6_BIND = 9
BPF_CGROUP_INET4_CONNECT = 10
BPF_CGROUP_INET6_CONNECT = 11
BPF_CGROUP_UDP4_SENDMSG = 14
BPF_CGROUP_UDP6_SENDMSG = 15

# Helpers (enum bpf_func_id).
HELPER_MAP_LOOKUP_ELEM = 1
HELPER_MAP_UPDATE_ELEM = 2
HELPER_GET_SOCKET_COOKIE = 46  # sock_addr programs >= 4.19
HELPER_BIND = 64  # bpf_bind(ctx, addr, addr_len), kernel >= 4.17, connect hooks only

BPF_PSEUDO_MAP_FD = 1
OBJ_NAME_LEN = 16


class BpfError(OSError):
    """A bpf() call failed; `log` holds the verifier's explanation for program loads."""

    def __init__(self, errno: int, what: str, log: str = "") -> None:
        super().__init__(errno, f"{what}: {os.strerror(errno)}")
        self.what = what
        self.log = log


_libc: ctypes.CDLL | None = None


def _syscall_nr() -> int:
    nr = _SYSCALL_NR.get(platform.machine())
    if nr is None:
        raise BpfError(38, f"bpf() syscall number unknown for {platform.machine()}")  # ENOSYS
    return nr


def bpf(cmd: int, attr: bytes | bytearray, what: str) -> int:
    """Call bpf(cmd, attr, len(attr)); return its result or raise BpfError with errno."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    buf = ctypes.create_string_buffer(bytes(attr), len(attr))
    result = int(_libc.syscall(_syscall_nr(), cmd, buf, len(attr)))
    if result < 0:
        raise BpfError(ctypes.get_errno(), what)
    if isinstance(attr, bytearray):
        attr[:] = buf.raw[: len(attr)]
    return result


# ---------------------------------------------------------------------------------------------
# The assembler: one function per instruction shape.

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

# Instruction classes, sizes, modes, ops (include/uapi/linux/bpf_common.h + bpf.h).
_LD, _LDX, _ST, _STX, _ALU, _JMP, _ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x07
_SIZE = {1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18}
_IMM, _MEM, _ATOMIC = 0x00, 0x60, 0xC0
_K, _X = 0x00, 0x08
_ADD, _OR, _AND, _MOV = 0x00, 0x40, 0x50, 0xB0
_JEQ, _JNE, _CALL, _EXIT, _JA = 0x10, 0x50, 0x80, 0x90, 0x00


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def s32(value: int) -> int:
    """An unsigned 32-bit constant as the signed imm field holds it."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def mov64_reg(dst: int, src: int) -> bytes:
    return _insn(_ALU64 | _MOV | _X, dst, src)


def mov64_imm(dst: int, imm: int) -> bytes:
    return _insn(_ALU64 | _MOV | _K, dst, imm=imm)


def mov32_imm(dst: int, imm: int) -> bytes:
    """32-bit move: the upper half is zeroed, so 0xffff0000 stays positive (unlike mov64's sign extension)."""
    return _insn(_ALU | _MOV | _K, dst, imm=s32(imm))


def add64_imm(dst: int, imm: int) -> bytes:
    return _insn(_ALU64 | _ADD | _K, dst, imm=imm)


def or64_reg(dst: int, src: int) -> bytes:
    return _insn(_ALU64 | _OR | _X, dst, src)


def and64_imm(dst: int, imm: int) -> bytes:
    return _insn(_ALU64 | _AND | _K, dst, imm=imm)


def load(size: int, dst: int, src: int, off: int) -> bytes:
    """dst = *(size *)(src + off)"""
    return _insn(_LDX | _MEM | _SIZE[size], dst, src, off)


def store_imm(size: int, dst: int, off: int, imm: int) -> bytes:
    """*(size *)(dst + off) = imm (not allowed into the context: use store_reg there)."""
    return _insn(_ST | _MEM | _SIZE[size], dst, 0, off, imm)


def store_reg(size: int, dst: int, off: int, src: int) -> bytes:
    """*(size *)(dst + off) = src"""
    return _insn(_STX | _MEM | _SIZE[size], dst, src, off)


def atomic_add64(dst: int, off: int, src: int) -> bytes:
    """*(u64 *)(dst + off) += src, atomically (BPF_XADD; imm 0 = BPF_ADD)."""
    return _insn(_STX | _ATOMIC | _SIZE[8], dst, src, off, 0)


def ld_map_fd(dst: int, map_fd: int) -> bytes:
    """The two-slot ld_imm64 the loader rewrites into a map pointer (src_reg = BPF_PSEUDO_MAP_FD)."""
    return _insn(_LD | _SIZE[8] | _IMM, dst, BPF_PSEUDO_MAP_FD, 0, map_fd) + _insn(0)


def call(helper: int) -> bytes:
    return _insn(_JMP | _CALL, imm=helper)


def exit_() -> bytes:
    return _insn(_JMP | _EXIT)


# Jumps carry symbolic labels until `assemble` resolves them to instruction offsets.


@dataclass(frozen=True)
class Jump:
    op: str  # "ja", "jeq", "jne"
    dst: int
    target: str
    imm: int | None = None  # compare with an immediate (sign-extended to 64 bits by the kernel)
    src: int | None = None  # or with a register


@dataclass(frozen=True)
class Label:
    name: str


Item = bytes | Jump | Label


def jeq_imm(dst: int, imm: int, target: str) -> Jump:
    return Jump("jeq", dst, target, imm=imm)


def jne_imm(dst: int, imm: int, target: str) -> Jump:
    return Jump("jne", dst, target, imm=imm)


def jeq_reg(dst: int, src: int, target: str) -> Jump:
    return Jump("jeq", dst, target, src=src)


def jne_reg(dst: int, src: int, target: str) -> Jump:
    return Jump("jne", dst, target, src=src)


def ja(target: str) -> Jump:
    return Jump("ja", 0, target)


_JUMP_OPS = {"ja": _JA, "jeq": _JEQ, "jne": _JNE}


def assemble(items: list[Item]) -> bytes:
    """Resolve labels (offsets count 8-byte slots after the jump) and concatenate the program."""
    slots: dict[str, int] = {}
    position = 0
    for item in items:
        if isinstance(item, Label):
            if item.name in slots:
                raise ValueError(f"label {item.name!r} defined twice")
            slots[item.name] = position
        elif isinstance(item, Jump):
            position += 1
        else:
            position += len(item) // 8
    out = bytearray()
    position = 0
    for item in items:
        if isinstance(item, Label):
            continue
        if isinstance(item, Jump):
            if item.target not in slots:
                raise ValueError(f"jump to undefined label {item.target!r}")
            off = slots[item.target] - position - 1
            op = _JUMP_OPS[item.op]
            if item.op == "ja":
                out += _insn(_JMP | op, off=off)
            elif item.src is not None:
                out += _insn(_JMP | op | _X, item.dst, item.src, off)
            else:
                out += _insn(_JMP | op | _K, item.dst, 0, off, item.imm or 0)
            position += 1
        else:
            out += item
            position += len(item) // 8
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Objects: maps, programs, links


def create_array_map(*, value_size: int, max_entries: int, name: str) -> int:
    """BPF_MAP_TYPE_ARRAY with u32 keys; returns the map fd. Array entries start zeroed."""
    attr = struct.pack("<IIIIIII16s", BPF_MAP_TYPE_ARRAY, 4, value_size, max_entries, 0, 0, 0, _name(name))
    return bpf(BPF_MAP_CREATE, attr.ljust(72, b"\0"), "creating a BPF array map")


def create_lru_hash_map(*, key_size: int, value_size: int, max_entries: int, name: str) -> int:
    """BPF_MAP_TYPE_LRU_HASH: the kernel evicts the oldest entries when full, so nothing must delete."""
    attr = struct.pack(
        "<IIIIIII16s", BPF_MAP_TYPE_LRU_HASH, key_size, value_size, max_entries, 0, 0, 0, _name(name)
    )
    return bpf(BPF_MAP_CREATE, attr.ljust(72, b"\0"), "creating a BPF hash map")


def lookup_array(map_fd: int, key: int, value_size: int) -> bytes:
    key_buf = ctypes.create_string_buffer(struct.pack("<I", key), 4)
    value_buf = ctypes.create_string_buffer(value_size)
    attr = struct.pack("<IIQQQ", map_fd, 0, ctypes.addressof(key_buf), ctypes.addressof(value_buf), 0)
    bpf(BPF_MAP_LOOKUP_ELEM, attr, "reading a BPF map")
    return value_buf.raw


def load_program(insns: bytes, *, prog_type: int, expected_attach_type: int, name: str) -> int:
    """BPF_PROG_LOAD; on failure the verifier log is attached to the BpfError."""
    # GPL: some helpers are GPL-only; ours are not, but a GPL license never narrows what a program may call.
    license_buf = ctypes.create_string_buffer(b"GPL")
    insn_buf = ctypes.create_string_buffer(insns, len(insns))
    log_size = 64 * 1024
    log_buf = ctypes.create_string_buffer(log_size)
    # Offsets of union bpf_attr's PROG_LOAD part: prog_type 0, insn_cnt 4, insns 8, license 16,
    # log_level 24, log_size 28, log_buf 32, kern_version 40, prog_flags 44, prog_name 48,
    # prog_ifindex 64, expected_attach_type 68.
    def attr(log_level: int) -> bytes:
        return struct.pack(
            "<IIQQIIQII16sII",
            prog_type,
            len(insns) // 8,
            ctypes.addressof(insn_buf),
            ctypes.addressof(license_buf),
            log_level,
            log_size if log_level else 0,
            ctypes.addressof(log_buf) if log_level else 0,
            0,
            0,
            _name(name),
            0,
            expected_attach_type,
        ).ljust(128, b"\0")

    try:
        return bpf(BPF_PROG_LOAD, attr(0), f"loading BPF program {name}")
    except BpfError as first:
        if first.errno in (1, 13):  # EPERM / EACCES without a log: privileges; a retry won't help
            raise
        # Load again with the verifier log on, to say why.
        try:
            return bpf(BPF_PROG_LOAD, attr(1), f"loading BPF program {name}")
        except BpfError as second:
            second.log = log_buf.value.decode(errors="replace")
            raise second from None


def link_cgroup(prog_fd: int, cgroup_fd: int, attach_type: int) -> int:
    """BPF_LINK_CREATE: attach a program to a cgroup through a link fd.

    Why a link rather than BPF_PROG_ATTACH: a link belongs to the fd, so when loopfan exits (even
    killed with SIGKILL) the kernel closes it and detaches the program. An old-style attachment
    would stay on the cgroup until someone detaches it by hand.
    """
    attr = struct.pack("<IIII", prog_fd, cgroup_fd, attach_type, 0).ljust(64, b"\0")
    return bpf(BPF_LINK_CREATE, attr, "attaching a BPF program to the cgroup (BPF_LINK_CREATE)")


def loaded_program_names() -> list[tuple[int, str]]:
    """(id, name) of every BPF program loaded in the kernel: what `bpftool prog list` shows."""
    out: list[tuple[int, str]] = []
    current = 0
    while True:
        attr = bytearray(struct.pack("<II", current, 0).ljust(16, b"\0"))
        try:
            bpf(BPF_PROG_GET_NEXT_ID, attr, "listing BPF programs")
        except BpfError as exc:
            if exc.errno == 2:  # ENOENT: no more
                return out
            raise
        current = struct.unpack_from("<I", attr, 4)[0]
        try:
            fd = bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("<I", current).ljust(16, b"\0"), "opening a BPF program")
        except BpfError:
            continue  # unloaded meanwhile
        try:
            info = ctypes.create_string_buffer(256)
            bpf(
                BPF_OBJ_GET_INFO_BY_FD,
                struct.pack("<IIQ", fd, 256, ctypes.addressof(info)),
                "reading BPF program info",
            )
            name = info.raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
            out.append((current, name))
        finally:
            os.close(fd)


def _name(name: str) -> bytes:
    """Object names: at most 15 characters of [A-Za-z0-9_.], NUL-terminated."""
    clean = "".join(c if c.isalnum() or c in "_." else "_" for c in name)
    return clean.encode()[: OBJ_NAME_LEN - 1]
