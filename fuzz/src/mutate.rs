//! Seeded, deterministic mutations of seed files.
//!
//! Each seed comes with the places its parser reads lengths and counts from ([`Field`]s, found
//! by walking the seed's structure: the safetensors header length, GGUF counts and string
//! lengths, ZIP record sizes and offsets, pickle opcode arguments, JSON numbers) and the byte
//! ranges that hold structure rather than tensor data ([`Seed::hot`]); most mutations land
//! there, so a 70 KB seed whose header is 2 KB is not mostly fuzzed in its weights.

/// splitmix64: small, fast, and the same sequence on every machine for a given seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator started at `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den < num
    }

    /// One element of `items` (non-empty).
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A number the parser reads from the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// little-endian unsigned integer of this many bytes (1, 2, 4 or 8)
    Le(usize),
    /// a run of ASCII digits (a JSON number or a tiktoken rank) of this many bytes
    Digits(usize),
}

/// Where a number sits in a seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// byte offset
    pub offset: usize,
    /// encoding and width
    pub kind: FieldKind,
}

/// A seed file and what is known about its layout.
#[derive(Debug, Clone)]
pub struct Seed {
    /// the file's bytes
    pub bytes: Vec<u8>,
    /// numbers the parser reads
    pub fields: Vec<Field>,
    /// byte ranges holding structure (headers, directories, pickles, JSON)
    pub hot: Vec<(usize, usize)>,
    /// bytes from here to the end of the first hot range are text: most byte edits there keep
    /// them ASCII, so mutants get past UTF-8 checks into the parser
    pub text_from: usize,
}

/// How to find a seed's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `u64` header length, then a JSON header, then data
    Safetensors,
    /// GGUF v3 header, metadata and tensor infos, then data
    Gguf,
    /// a ZIP of a pickle and storages
    Pth,
    /// JSON (or any text): its digit runs
    Text,
    /// llama-imatrix's legacy `.dat`: its `i32` counts and lengths
    ImatrixDat,
}

impl Seed {
    /// Analyse `bytes` as `layout`.
    pub fn new(bytes: Vec<u8>, layout: Layout) -> Self {
        let mut fields = Vec::new();
        let mut hot = Vec::new();
        match layout {
            Layout::Safetensors => {
                fields.push(Field {
                    offset: 0,
                    kind: FieldKind::Le(8),
                });
                let n = bytes
                    .get(..8)
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
                let end = (8 + n as usize).min(bytes.len());
                digit_runs(&bytes, 8, end, &mut fields);
                hot.push((0, end));
            }
            Layout::Gguf => {
                let end = gguf_fields(&bytes, &mut fields);
                hot.push((0, end.min(bytes.len())));
            }
            Layout::Pth => pth_fields(&bytes, &mut fields, &mut hot),
            Layout::ImatrixDat => {
                dat_fields(&bytes, &mut fields);
                hot.push((0, bytes.len()));
            }
            Layout::Text => {
                digit_runs(&bytes, 0, bytes.len(), &mut fields);
                hot.push((0, bytes.len()));
            }
        }
        hot.retain(|&(a, b)| a < b);
        if hot.is_empty() {
            hot.push((0, bytes.len()));
        }
        let text_from = match layout {
            Layout::Safetensors => 8,
            Layout::Text => 0,
            Layout::Gguf | Layout::Pth | Layout::ImatrixDat => usize::MAX,
        };
        Seed {
            bytes,
            fields,
            hot,
            text_from,
        }
    }
}

fn digit_runs(b: &[u8], start: usize, end: usize, out: &mut Vec<Field>) {
    let mut i = start;
    while i < end {
        if b[i].is_ascii_digit() {
            let s = if i > start && b[i - 1] == b'-' {
                i - 1
            } else {
                i
            };
            while i < end && (b[i].is_ascii_digit() || matches!(b[i], b'.' | b'e' | b'E')) {
                i += 1;
            }
            out.push(Field {
                offset: s,
                kind: FieldKind::Digits(i - s),
            });
        } else {
            i += 1;
        }
    }
}

/// Walk a legacy imatrix file, recording each `i32` count and length.
fn dat_fields(b: &[u8], out: &mut Vec<Field>) {
    let mut p = 0usize;
    let le = |out: &mut Vec<Field>, p: &mut usize| -> Option<usize> {
        let v = b.get(*p..*p + 4)?;
        out.push(Field {
            offset: *p,
            kind: FieldKind::Le(4),
        });
        *p += 4;
        Some(i32::from_le_bytes(v.try_into().ok()?).max(0) as usize)
    };
    let mut walk = || -> Option<()> {
        let n = le(out, &mut p)?;
        for _ in 0..n.min(1 << 16) {
            let len = le(out, &mut p)?;
            p = p.checked_add(len)?;
            le(out, &mut p)?; // ncall
            let nval = le(out, &mut p)?;
            p = p.checked_add(nval.checked_mul(4)?)?;
        }
        le(out, &mut p)?; // chunk count
        le(out, &mut p)?; // dataset length
        Some(())
    };
    let _ = walk();
}

/// Walk a GGUF header, recording each count and length; returns where tensor data starts
/// (or where the walk stopped).
fn gguf_fields(b: &[u8], out: &mut Vec<Field>) -> usize {
    let mut p = 4usize;
    let le = |out: &mut Vec<Field>, p: &mut usize, w: usize| -> Option<u64> {
        let v = b.get(*p..*p + w)?;
        let mut x = [0u8; 8];
        x[..w].copy_from_slice(v);
        out.push(Field {
            offset: *p,
            kind: FieldKind::Le(w),
        });
        *p += w;
        Some(u64::from_le_bytes(x))
    };
    let walk = |out: &mut Vec<Field>, p: &mut usize| -> Option<()> {
        le(out, p, 4)?; // version
        let nt = le(out, p, 8)?;
        let nkv = le(out, p, 8)?;
        let string = |out: &mut Vec<Field>, p: &mut usize| -> Option<()> {
            let n = le(out, p, 8)? as usize;
            *p = p.checked_add(n)?;
            (*p <= b.len()).then_some(())
        };
        fn scalar_size(t: u64) -> Option<usize> {
            Some(match t {
                0 | 1 | 7 => 1,
                2 | 3 => 2,
                4..=6 => 4,
                10..=12 => 8,
                _ => return None,
            })
        }
        for _ in 0..nkv.min(1 << 16) {
            string(out, p)?;
            let t = le(out, p, 4)?;
            match t {
                8 => string(out, p)?,
                9 => {
                    let et = le(out, p, 4)?;
                    let n = le(out, p, 8)?;
                    if et == 8 {
                        for _ in 0..n.min(1 << 20) {
                            string(out, p)?;
                        }
                    } else {
                        *p = p.checked_add(scalar_size(et)?.checked_mul(n as usize)?)?;
                    }
                }
                t => *p += scalar_size(t)?,
            }
        }
        for _ in 0..nt.min(1 << 16) {
            string(out, p)?;
            let nd = le(out, p, 4)?;
            for _ in 0..nd.min(8) {
                le(out, p, 8)?;
            }
            le(out, p, 4)?; // type
            le(out, p, 8)?; // offset
        }
        Some(())
    };
    let _ = walk(out, &mut p);
    // default alignment 32
    p.div_ceil(32) * 32
}

/// ZIP record fields (local headers, central directory, end records, ZIP64) and the pickle's
/// opcode arguments.
fn pth_fields(b: &[u8], out: &mut Vec<Field>, hot: &mut Vec<(usize, usize)>) {
    /// a record signature and its (offset, width) integer fields
    type Record = (&'static [u8; 4], &'static [(usize, usize)]);
    let records: [Record; 5] = [
        (
            b"PK\x03\x04",
            &[
                (4, 2),
                (6, 2),
                (8, 2),
                (14, 4),
                (18, 4),
                (22, 4),
                (26, 2),
                (28, 2),
            ],
        ),
        (
            b"PK\x01\x02",
            &[
                (10, 2),
                (16, 4),
                (20, 4),
                (24, 4),
                (28, 2),
                (30, 2),
                (32, 2),
                (42, 4),
            ],
        ),
        (
            b"PK\x05\x06",
            &[(4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2)],
        ),
        (b"PK\x06\x06", &[(4, 8), (24, 8), (32, 8), (40, 8), (48, 8)]),
        (b"PK\x06\x07", &[(4, 4), (8, 8), (16, 4)]),
    ];
    let mut first_cd = b.len();
    for i in 0..b.len().saturating_sub(3) {
        for (sig, fs) in &records {
            if &b[i..i + 4] == *sig {
                if sig[2] == 1 {
                    first_cd = first_cd.min(i);
                }
                for &(o, w) in *fs {
                    if i + o + w <= b.len() {
                        out.push(Field {
                            offset: i + o,
                            kind: FieldKind::Le(w),
                        });
                    }
                }
                hot.push((i, (i + 46).min(b.len())));
                // the pickle: the entry whose name ends in data.pkl
                if sig[2] == 3 && i + 30 <= b.len() {
                    let nlen = u16::from_le_bytes([b[i + 26], b[i + 27]]) as usize;
                    let xlen = u16::from_le_bytes([b[i + 28], b[i + 29]]) as usize;
                    let csize = u32::from_le_bytes(b[i + 18..i + 22].try_into().unwrap()) as usize;
                    let name = b.get(i + 30..i + 30 + nlen).unwrap_or(&[]);
                    let start = i + 30 + nlen + xlen;
                    if name.ends_with(b"data.pkl") && start + csize <= b.len() {
                        hot.push((start, start + csize));
                        pickle_fields(b, start, start + csize, out);
                    }
                }
            }
        }
    }
    hot.push((first_cd, b.len()));
}

/// Arguments of the pickle opcodes torch writes, walked from `start`.
fn pickle_fields(b: &[u8], start: usize, end: usize, out: &mut Vec<Field>) {
    let mut p = start;
    while p < end {
        let op = b[p];
        p += 1;
        // (width of a length/int argument, whether that many bytes follow it)
        let (w, payload) = match op {
            0x80 | b'K' | b'q' | b'h' => (1, false),
            b'M' => (2, false),
            b'J' | b'r' | b'j' => (4, false),
            b'X' | b'B' | b'T' => (4, true),
            0x8c | b'C' | b'U' | 0x8a => (1, true),
            0x95 => (8, false),
            0x8d | 0x8e => (8, true),
            b'}' | b']' | b'(' | b')' | b'u' | b'e' | b'a' | b's' | b't' | b'R' | b'b' | b'.'
            | b'Q' | b'N' | 0x88 | 0x89 | 0x85 | 0x86 | 0x87 | b'0' | b'1' | 0x94 | 0x81 | b'2' => {
                (0, false)
            }
            b'c' => {
                // GLOBAL: two newline-terminated lines
                for _ in 0..2 {
                    while p < end && b[p] != b'\n' {
                        p += 1;
                    }
                    p += 1;
                }
                continue;
            }
            _ => return,
        };
        if w == 0 {
            continue;
        }
        if p + w > end {
            return;
        }
        out.push(Field {
            offset: p,
            kind: FieldKind::Le(w),
        });
        let mut x = [0u8; 8];
        x[..w].copy_from_slice(&b[p..p + w]);
        p += w;
        if payload {
            p = p.saturating_add(u64::from_le_bytes(x) as usize);
        }
    }
}

const INTERESTING_BYTES: [u8; 8] = [0, 0xff, 0x7f, 0x80, 1, 0xfe, 0x20, b'"'];
const INTERESTING_ASCII: [u8; 16] = [
    b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'0', b'9', b'-', b'.', b'e', b' ', b'\n',
    b'a',
];

const DICTIONARY: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"\\u0000",
    b"\\ud800",
    b"\"dtype\":\"F8_E4M3\"",
    b"\"shape\":[4294967296,4294967296]",
    b"\"data_offsets\":[0,18446744073709551615]",
    b"\"__metadata__\":{}",
    b"../",
    b"/etc/passwd",
    b"PK\x03\x04",
    b"PK\x05\x06",
    b"GGUF",
    b"\x80\x02",
    b"cos\nsystem\n",
    b"\x8c\x05posix\x94\x8c\x06system\x94\x93",
    b"R",
    b"\n",
    b" ",
    b"==",
];

fn interesting_int(rng: &mut Rng, old: u64, width: usize) -> u64 {
    let max = if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * width)) - 1
    };
    let v = match rng.below(12) {
        0 => 0,
        1 => 1,
        2 => max,
        3 => max - 1,
        4 => max >> 1,
        5 => (max >> 1) + 1,
        6 => old.wrapping_add(1 + rng.below(16) as u64),
        7 => old.wrapping_sub(1 + rng.below(16) as u64),
        8 => old.wrapping_mul(2),
        9 => old << (8 * (1 + rng.below(3))),
        10 => 1u64 << rng.below(64),
        _ => rng.next_u64(),
    };
    v & max
}

const INTERESTING_DECIMALS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "1e999",
    "-0",
    "0.5",
    "999999999999",
    "16777216",
];

/// Write `v` at `off` as `width` little-endian bytes (clipped to the buffer).
fn put_le(buf: &mut [u8], off: usize, width: usize, v: u64) {
    for (i, byte) in v.to_le_bytes().iter().take(width).enumerate() {
        if let Some(b) = buf.get_mut(off + i) {
            *b = *byte;
        }
    }
}

/// A position, usually inside one of `hot`'s ranges.
fn position(rng: &mut Rng, len: usize, hot: &[(usize, usize)]) -> usize {
    if len == 0 {
        return 0;
    }
    if rng.chance(4, 5) {
        let &(a, b) = rng.pick(hot);
        let b = b.min(len);
        if a < b {
            return a + rng.below(b - a);
        }
    }
    rng.below(len)
}

/// One mutant of `seeds[i]`: one to four stacked mutations (field edits while offsets still
/// hold, then bit flips, interesting bytes, truncation, insertion, removal, duplication and
/// splices with the other seeds).
pub fn mutate(rng: &mut Rng, seeds: &[Seed], out: &mut Vec<u8>) {
    let seed = &seeds[rng.below(seeds.len())];
    out.clear();
    out.extend_from_slice(&seed.bytes);
    // mostly one mutation, sometimes a stack of up to four
    let n = if rng.chance(1, 2) {
        1
    } else {
        2 + rng.below(3)
    };
    let mut shifted = false;
    for _ in 0..n {
        let len = out.len();
        match rng.below(16) {
            // a parsed length/count/number, edited where the parser reads it
            0..=4 if !shifted && !seed.fields.is_empty() => {
                let f = *rng.pick(&seed.fields);
                match f.kind {
                    FieldKind::Le(w) => {
                        let mut x = [0u8; 8];
                        if let Some(b) = out.get(f.offset..f.offset + w) {
                            x[..w].copy_from_slice(b);
                        }
                        let v = interesting_int(rng, u64::from_le_bytes(x), w);
                        put_le(out, f.offset, w, v);
                    }
                    FieldKind::Digits(w) => {
                        let new = rng.pick(INTERESTING_DECIMALS).as_bytes();
                        if f.offset + w <= out.len() {
                            out.splice(f.offset..f.offset + w, new.iter().copied());
                            shifted |= new.len() != w;
                        }
                    }
                }
            }
            0..=5 => {
                if len > 0 {
                    let p = position(rng, len, &seed.hot);
                    let ascii = p >= seed.text_from && out[p].is_ascii() && rng.chance(3, 4);
                    out[p] ^= 1 << rng.below(if ascii { 7 } else { 8 });
                }
            }
            6 | 7 => {
                if len > 0 {
                    let p = position(rng, len, &seed.hot);
                    out[p] = if p >= seed.text_from && rng.chance(3, 4) {
                        *rng.pick(&INTERESTING_ASCII)
                    } else {
                        *rng.pick(&INTERESTING_BYTES)
                    };
                }
            }
            8 => {
                // an interesting 2/4/8-byte integer anywhere (outside text)
                if len > 0 && seed.text_from == usize::MAX {
                    let p = position(rng, len, &seed.hot);
                    let w = *rng.pick(&[2usize, 4, 8]);
                    let v = interesting_int(rng, 0, w);
                    put_le(out, p, w, v);
                }
            }
            9 => {
                let p = position(rng, len, &seed.hot);
                out.truncate(p);
                shifted = true;
            }
            10 | 11 => {
                let p = position(rng, len, &seed.hot).min(len);
                if rng.chance(1, 2) {
                    let tok = rng.pick(DICTIONARY);
                    out.splice(p..p, tok.iter().copied());
                } else {
                    let k = 1 + rng.below(8);
                    let bytes: Vec<u8> = (0..k).map(|_| rng.next_u64() as u8).collect();
                    out.splice(p..p, bytes);
                }
                shifted = true;
            }
            12 | 13 => {
                if len > 0 {
                    let p = position(rng, len, &seed.hot);
                    let span = if rng.chance(1, 4) { 256 } else { 8 };
                    let k = (1 + rng.below(span)).min(len - p);
                    out.drain(p..p + k);
                    shifted = true;
                }
            }
            14 => {
                // duplicate a chunk in place
                if len > 0 {
                    let p = position(rng, len, &seed.hot);
                    let k = (1 + rng.below(64)).min(len - p);
                    let chunk = out[p..p + k].to_vec();
                    out.splice(p..p, chunk);
                    shifted = true;
                }
            }
            _ => {
                // splice with another seed: our prefix + its suffix, or a chunk of it here
                let other = &seeds[rng.below(seeds.len())];
                if other.bytes.is_empty() {
                    continue;
                }
                let q = position(rng, other.bytes.len(), &other.hot);
                if rng.chance(1, 2) {
                    let p = position(rng, len, &seed.hot).min(len);
                    out.truncate(p);
                    out.extend_from_slice(&other.bytes[q..]);
                } else {
                    let k = (1 + rng.below(256)).min(other.bytes.len() - q);
                    let p = position(rng, len, &seed.hot).min(len);
                    let end = (p + k).min(len);
                    out.splice(p..end, other.bytes[q..q + k].iter().copied());
                }
                shifted = true;
            }
        }
    }
}
