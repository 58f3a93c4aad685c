//! A minimal reader for the kernel's BTF type information.
//!
//! sockspy only needs one thing from BTF: the byte offset of a named field
//! inside a named struct, so that the kernel programs can read kernel memory
//! without a layout compiled into them. The reader therefore keeps structs,
//! unions and the modifier chains that lead to them, and skips the rest of
//! each record by its documented size. Every length and index is checked:
//! a truncated or corrupt file is an error, never a panic.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
const TYPE_LEN: usize = 12;
const MEMBER_LEN: usize = 12;

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Nesting of anonymous structs and modifier chains deeper than this is
/// taken as a loop in corrupt data.
const MAX_DEPTH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF has no field {field} in struct {strukt}")]
    NoField { strukt: String, field: String },
    #[error("field {field} of struct {strukt} is a bitfield, which sockspy cannot read")]
    Bitfield { strukt: String, field: String },
}

struct Member {
    name: u32,
    ty: u32,
    /// Offset from the start of the enclosing type, in bits.
    bit_offset: u32,
    bitfield: bool,
}

struct Type {
    kind: u32,
    name: u32,
    /// Size in bytes for structs and unions, the referenced type for
    /// modifiers, unused otherwise.
    size_or_type: u32,
    members: Vec<Member>,
}

/// Parsed BTF: the types sockspy can look into, and the string section.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    /// Struct name to type id; the first complete definition wins.
    structs: HashMap<String, u32>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, BtfError> {
        let end = self.pos + 4;
        let word = self
            .bytes
            .get(self.pos..end)
            .ok_or(BtfError::Malformed("type section ends inside a record"))?;
        self.pos = end;
        Ok(u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
    }

    fn skip(&mut self, len: usize) -> Result<(), BtfError> {
        if self.bytes.len() - self.pos < len {
            return Err(BtfError::Malformed("type section ends inside a record"));
        }
        self.pos += len;
        Ok(())
    }
}

fn header_word(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn section(bytes: &[u8], start: usize, off: u32, len: u32) -> Result<&[u8], BtfError> {
    let from = start
        .checked_add(off as usize)
        .ok_or(BtfError::Malformed("section offset overflows"))?;
    let to = from
        .checked_add(len as usize)
        .ok_or(BtfError::Malformed("section length overflows"))?;
    bytes
        .get(from..to)
        .ok_or(BtfError::Malformed("section lies outside the file"))
}

impl Btf {
    pub const VMLINUX: &'static str = "/sys/kernel/btf/vmlinux";

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&bytes)
    }

    /// Parses raw little-endian BTF as found in /sys/kernel/btf/vmlinux.
    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        if bytes.len() < HEADER_LEN {
            return Err(BtfError::Malformed("shorter than its header"));
        }
        if u16::from_le_bytes([bytes[0], bytes[1]]) != MAGIC {
            return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
        }
        let header_len = header_word(bytes, 4) as usize;
        if header_len < HEADER_LEN || header_len > bytes.len() {
            return Err(BtfError::Malformed("bad header length"));
        }
        let type_section = section(
            bytes,
            header_len,
            header_word(bytes, 8),
            header_word(bytes, 12),
        )?;
        let strings = section(
            bytes,
            header_len,
            header_word(bytes, 16),
            header_word(bytes, 20),
        )?
        .to_vec();

        // Type id 0 is void.
        let mut types = vec![Type {
            kind: 0,
            name: 0,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut reader = Reader {
            bytes: type_section,
            pos: 0,
        };
        while reader.pos < type_section.len() {
            if type_section.len() - reader.pos < TYPE_LEN {
                return Err(BtfError::Malformed("type section ends inside a record"));
            }
            types.push(read_type(&mut reader)?);
        }

        let mut btf = Btf {
            types,
            strings,
            structs: HashMap::new(),
        };
        for (id, ty) in btf.types.iter().enumerate() {
            if ty.kind == KIND_STRUCT && ty.size_or_type > 0 {
                let name = btf.string(ty.name)?;
                if !name.is_empty() && !btf.structs.contains_key(name) {
                    let id =
                        u32::try_from(id).map_err(|_| BtfError::Malformed("too many types"))?;
                    btf.structs.insert(name.to_owned(), id);
                }
            }
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> Result<&str, BtfError> {
        let tail = self
            .strings
            .get(offset as usize..)
            .ok_or(BtfError::Malformed(
                "name offset outside the string section",
            ))?;
        let end = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or(BtfError::Malformed("unterminated string"))?;
        std::str::from_utf8(&tail[..end]).map_err(|_| BtfError::Malformed("name is not UTF-8"))
    }

    fn get(&self, id: u32) -> Result<&Type, BtfError> {
        self.types
            .get(id as usize)
            .ok_or(BtfError::Malformed("reference to a missing type"))
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn strip(&self, mut id: u32) -> Result<&Type, BtfError> {
        for _ in 0..MAX_DEPTH {
            let ty = self.get(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type
                }
                _ => return Ok(ty),
            }
        }
        Err(BtfError::Malformed("modifier chain loops"))
    }

    /// Finds `name` among the members of `ty`, looking through anonymous
    /// struct and union members as C does.
    fn find<'a>(
        &'a self,
        ty: &'a Type,
        name: &str,
        depth: usize,
    ) -> Result<Option<(&'a Member, u32)>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(BtfError::Malformed("anonymous members nest too deeply"));
        }
        for member in &ty.members {
            if member.name == 0 {
                let inner = self.strip(member.ty)?;
                if let Some((found, offset)) = self.find(inner, name, depth + 1)? {
                    return Ok(Some((found, member.bit_offset + offset)));
                }
            } else if self.string(member.name)? == name {
                return Ok(Some((member, member.bit_offset)));
            }
        }
        Ok(None)
    }

    fn struct_type(&self, strukt: &str) -> Result<&Type, BtfError> {
        let id = self
            .structs
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        self.get(*id)
    }

    /// Byte offset of `path` (field names joined by `.`, descending into
    /// embedded structs) from the start of struct `strukt`.
    pub fn member_offset(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let no_field = || BtfError::NoField {
            strukt: strukt.to_owned(),
            field: path.to_owned(),
        };
        let mut ty = self.struct_type(strukt)?;
        let mut bits = 0u32;
        for part in path.split('.') {
            if !matches!(ty.kind, KIND_STRUCT | KIND_UNION) {
                return Err(no_field());
            }
            let (member, offset) = self.find(ty, part, 0)?.ok_or_else(no_field)?;
            if member.bitfield || offset % 8 != 0 {
                return Err(BtfError::Bitfield {
                    strukt: strukt.to_owned(),
                    field: path.to_owned(),
                });
            }
            bits = bits
                .checked_add(offset)
                .ok_or(BtfError::Malformed("offset overflows"))?;
            ty = self.strip(member.ty)?;
        }
        Ok(bits / 8)
    }

    /// Size in bytes of struct `strukt`.
    pub fn struct_size(&self, strukt: &str) -> Result<u32, BtfError> {
        Ok(self.struct_type(strukt)?.size_or_type)
    }
}

fn read_type(reader: &mut Reader) -> Result<Type, BtfError> {
    let name = reader.u32()?;
    let info = reader.u32()?;
    let size_or_type = reader.u32()?;
    let kind = (info >> 24) & 0x1f;
    let vlen = (info & 0xffff) as usize;
    let kind_flag = info >> 31 == 1;
    let mut members = Vec::new();
    match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => reader.skip(4)?,
        KIND_ARRAY => reader.skip(12)?,
        KIND_STRUCT | KIND_UNION => {
            members.reserve(vlen);
            for _ in 0..vlen {
                let name = reader.u32()?;
                let ty = reader.u32()?;
                let offset = reader.u32()?;
                // With kind_flag set the top byte holds a bitfield's width.
                let (bit_offset, bitfield) = if kind_flag {
                    (offset & 0x00ff_ffff, offset >> 24 != 0)
                } else {
                    (offset, false)
                };
                members.push(Member {
                    name,
                    ty,
                    bit_offset,
                    bitfield,
                });
            }
        }
        KIND_ENUM | KIND_FUNC_PROTO => reader.skip(8 * vlen)?,
        KIND_DATASEC | KIND_ENUM64 => reader.skip(MEMBER_LEN * vlen)?,
        // PTR, FWD, TYPEDEF, qualifiers, FUNC, FLOAT, TYPE_TAG: no trailer.
        2 | 7 | KIND_TYPEDEF..=KIND_RESTRICT | 12 | 16 | KIND_TYPE_TAG => {}
        _ => return Err(BtfError::Malformed("unknown type kind")),
    }
    Ok(Type {
        kind,
        name,
        size_or_type,
        members,
    })
}

/// The running kernel's BTF for tests, or `None` (saying so) without it.
#[cfg(test)]
pub fn running_kernel() -> Option<Btf> {
    let path = Path::new(Btf::VMLINUX);
    if !path.exists() {
        eprintln!(
            "skipped: {} is missing (kernel built without BTF)",
            path.display()
        );
        return None;
    }
    Some(Btf::from_file(path).expect("parsing the running kernel's BTF"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Assembles BTF bytes type by type.
    struct Builder {
        strings: Vec<u8>,
        types: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                strings: vec![0],
                types: Vec::new(),
            }
        }

        fn name(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            at
        }

        fn record(&mut self, name: &str, kind: u32, flag: bool, vlen: usize, size: u32) {
            let name = self.name(name);
            let info = (kind << 24) | (u32::from(flag) << 31) | vlen as u32;
            for word in [name, info, size] {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
        }

        fn int(&mut self, name: &str, bytes: u32) {
            self.record(name, KIND_INT, false, 0, bytes);
            self.types.extend_from_slice(&(bytes * 8).to_le_bytes());
        }

        fn aggregate(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32)]) {
            let flag = members.iter().any(|m| m.2 >> 24 != 0);
            self.record(name, kind, flag, members.len(), size);
            for &(member, ty, offset) in members {
                let member = self.name(member);
                for word in [member, ty, offset] {
                    self.types.extend_from_slice(&word.to_le_bytes());
                }
            }
        }

        fn finish(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for word in [
                HEADER_LEN as u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// int (1), struct inner (2), union (3, anonymous), typedef (4),
    /// struct outer (5), a forward-declared outer (6).
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        b.int("int", 4);
        b.aggregate(KIND_STRUCT, "inner", 8, &[("a", 1, 0), ("b", 1, 32)]);
        b.aggregate(KIND_UNION, "", 4, &[("u1", 1, 0), ("u2", 1, 0)]);
        b.record("inner_t", KIND_TYPEDEF, false, 0, 2);
        b.aggregate(
            KIND_STRUCT,
            "outer",
            24,
            &[
                ("x", 1, 0),
                ("", 3, 32),
                ("in", 4, 64),
                ("flags", 1, (3 << 24) | 128),
            ],
        );
        b.record("outer", 7, false, 0, 0);
        b.finish()
    }

    #[test]
    fn finds_plain_nested_and_anonymous_members() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "u2").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "in").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "in.b").unwrap(), 12);
        assert_eq!(btf.struct_size("outer").unwrap(), 24);
        assert_eq!(btf.struct_size("inner").unwrap(), 8);
    }

    #[test]
    fn names_what_is_missing() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(
            btf.member_offset("nosuch", "x").unwrap_err().to_string(),
            "kernel BTF has no struct nosuch"
        );
        assert_eq!(
            btf.member_offset("outer", "in.c").unwrap_err().to_string(),
            "kernel BTF has no field in.c in struct outer"
        );
        assert!(matches!(
            btf.member_offset("outer", "x.y"),
            Err(BtfError::NoField { .. })
        ));
        assert!(matches!(
            btf.member_offset("outer", "flags"),
            Err(BtfError::Bitfield { .. })
        ));
    }

    #[test]
    fn corrupt_input_is_an_error_not_a_panic() {
        let good = sample();
        assert!(Btf::parse(&[]).is_err());
        assert!(Btf::parse(&[0u8; HEADER_LEN]).is_err());
        for len in 0..good.len() {
            // Most truncations break a section bound; none may panic.
            let _ = Btf::parse(&good[..len]);
        }
        let mut bad_kind = good.clone();
        bad_kind[HEADER_LEN + 7] = 0x1f;
        assert!(Btf::parse(&bad_kind).is_err());
        let mut bad_ref = good.clone();
        // Point struct inner's first member at a type id that does not exist.
        let inner_member_type = HEADER_LEN + TYPE_LEN + 4 + TYPE_LEN + 4;
        bad_ref[inner_member_type..inner_member_type + 4].copy_from_slice(&999u32.to_le_bytes());
        let btf = Btf::parse(&bad_ref).unwrap();
        assert!(btf.member_offset("outer", "in.b").is_ok());
        assert!(matches!(
            btf.member_offset("outer", "in.a"),
            Err(BtfError::Malformed(_))
        ));
        let mut looping = Builder::new();
        looping.record("t", KIND_TYPEDEF, false, 0, 1);
        looping.aggregate(KIND_STRUCT, "s", 4, &[("", 1, 0)]);
        let btf = Btf::parse(&looping.finish()).unwrap();
        assert!(matches!(
            btf.member_offset("s", "x"),
            Err(BtfError::Malformed(_))
        ));
    }

    #[test]
    fn reads_the_running_kernel() {
        let Some(btf) = running_kernel() else { return };
        assert_eq!(btf.member_offset("sock", "__sk_common").unwrap(), 0);
        let comm = btf.member_offset("task_struct", "comm").unwrap();
        assert!(comm > 0 && comm < btf.struct_size("task_struct").unwrap());
    }
}
