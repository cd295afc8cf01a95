//! The one table of element formats. Nothing else in qforge hard-codes a dtype size or spelling.

use crate::{Error, Result};

/// Everything qforge knows about one element format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DTypeInfo {
    /// Canonical display name (`BF16`, `F8_E4M3`, `Q4_K`).
    pub name: &'static str,
    /// Elements per block (1 for plain scalar formats).
    pub block: u32,
    /// Bytes per block.
    pub block_bytes: u32,
    /// The ggml type id in GGUF files, if GGUF can store it.
    pub ggml: Option<u32>,
    /// The safetensors header spelling, if safetensors can store it.
    pub safetensors: Option<&'static str>,
    /// The torch dtype name (`torch.<name>`), if torch has one.
    pub torch: Option<&'static str>,
    /// The legacy torch storage class (`torch.<Name>Storage`), if one exists.
    pub torch_storage: Option<&'static str>,
}

macro_rules! dtypes {
    ($( $(#[$doc:meta])* $v:ident = ($name:literal, $block:literal, $bytes:literal, $ggml:expr, $st:expr, $torch:expr, $storage:expr); )*) => {
        /// An element format of a stored tensor.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[allow(non_camel_case_types)]
        #[non_exhaustive]
        pub enum DType { $( $(#[$doc])* $v, )* }

        impl DType {
            /// Every format, in table order.
            pub const ALL: &'static [DType] = &[ $( DType::$v, )* ];

            /// The table row for this format.
            pub const fn info(self) -> DTypeInfo {
                match self { $( DType::$v => DTypeInfo {
                    name: $name, block: $block, block_bytes: $bytes,
                    ggml: $ggml, safetensors: $st, torch: $torch, torch_storage: $storage,
                }, )* }
            }
        }
    };
}

dtypes! {
    /// IEEE binary32.
    F32 = ("F32", 1, 4, Some(0), Some("F32"), Some("float32"), Some("FloatStorage"));
    /// IEEE binary16.
    F16 = ("F16", 1, 2, Some(1), Some("F16"), Some("float16"), Some("HalfStorage"));
    /// bfloat16: the upper half of an IEEE binary32.
    BF16 = ("BF16", 1, 2, Some(30), Some("BF16"), Some("bfloat16"), Some("BFloat16Storage"));
    /// IEEE binary64.
    F64 = ("F64", 1, 8, Some(28), Some("F64"), Some("float64"), Some("DoubleStorage"));
    /// FP8 E4M3FN (no infinities, one NaN pattern per sign, max 448).
    F8_E4M3 = ("F8_E4M3", 1, 1, None, Some("F8_E4M3"), Some("float8_e4m3fn"), None);
    /// FP8 E5M2 (IEEE-style, with infinities).
    F8_E5M2 = ("F8_E5M2", 1, 1, None, Some("F8_E5M2"), Some("float8_e5m2"), None);
    /// Boolean stored as one byte.
    BOOL = ("BOOL", 1, 1, None, Some("BOOL"), Some("bool"), Some("BoolStorage"));
    /// Unsigned 8-bit integer.
    U8 = ("U8", 1, 1, None, Some("U8"), Some("uint8"), Some("ByteStorage"));
    /// Signed 8-bit integer.
    I8 = ("I8", 1, 1, Some(24), Some("I8"), Some("int8"), Some("CharStorage"));
    /// Signed 16-bit integer.
    I16 = ("I16", 1, 2, Some(25), Some("I16"), Some("int16"), Some("ShortStorage"));
    /// Unsigned 16-bit integer.
    U16 = ("U16", 1, 2, None, Some("U16"), Some("uint16"), None);
    /// Signed 32-bit integer.
    I32 = ("I32", 1, 4, Some(26), Some("I32"), Some("int32"), Some("IntStorage"));
    /// Unsigned 32-bit integer.
    U32 = ("U32", 1, 4, None, Some("U32"), Some("uint32"), None);
    /// Signed 64-bit integer.
    I64 = ("I64", 1, 8, Some(27), Some("I64"), Some("int64"), Some("LongStorage"));
    /// Unsigned 64-bit integer.
    U64 = ("U64", 1, 8, None, Some("U64"), Some("uint64"), None);
    /// ggml Q4_0: f16 scale, 32 signed 4-bit values.
    Q4_0 = ("Q4_0", 32, 18, Some(2), None, None, None);
    /// ggml Q4_1: f16 scale and min, 32 unsigned 4-bit values.
    Q4_1 = ("Q4_1", 32, 20, Some(3), None, None, None);
    /// ggml Q5_0: f16 scale, 32 signed 5-bit values.
    Q5_0 = ("Q5_0", 32, 22, Some(6), None, None, None);
    /// ggml Q5_1: f16 scale and min, 32 unsigned 5-bit values.
    Q5_1 = ("Q5_1", 32, 24, Some(7), None, None, None);
    /// ggml Q8_0: f16 scale, 32 signed 8-bit values.
    Q8_0 = ("Q8_0", 32, 34, Some(8), None, None, None);
    /// ggml Q8_1 (a dot-product intermediate; never in model files).
    Q8_1 = ("Q8_1", 32, 36, Some(9), None, None, None);
    /// ggml Q2_K super-block.
    Q2_K = ("Q2_K", 256, 84, Some(10), None, None, None);
    /// ggml Q3_K super-block.
    Q3_K = ("Q3_K", 256, 110, Some(11), None, None, None);
    /// ggml Q4_K super-block.
    Q4_K = ("Q4_K", 256, 144, Some(12), None, None, None);
    /// ggml Q5_K super-block.
    Q5_K = ("Q5_K", 256, 176, Some(13), None, None, None);
    /// ggml Q6_K super-block.
    Q6_K = ("Q6_K", 256, 210, Some(14), None, None, None);
    /// ggml Q8_K (a dot-product intermediate).
    Q8_K = ("Q8_K", 256, 292, Some(15), None, None, None);
    /// ggml IQ2_XXS.
    IQ2_XXS = ("IQ2_XXS", 256, 66, Some(16), None, None, None);
    /// ggml IQ2_XS.
    IQ2_XS = ("IQ2_XS", 256, 74, Some(17), None, None, None);
    /// ggml IQ3_XXS.
    IQ3_XXS = ("IQ3_XXS", 256, 98, Some(18), None, None, None);
    /// ggml IQ1_S.
    IQ1_S = ("IQ1_S", 256, 50, Some(19), None, None, None);
    /// ggml IQ4_NL.
    IQ4_NL = ("IQ4_NL", 32, 18, Some(20), None, None, None);
    /// ggml IQ3_S.
    IQ3_S = ("IQ3_S", 256, 110, Some(21), None, None, None);
    /// ggml IQ2_S.
    IQ2_S = ("IQ2_S", 256, 82, Some(22), None, None, None);
    /// ggml IQ4_XS.
    IQ4_XS = ("IQ4_XS", 256, 136, Some(23), None, None, None);
    /// ggml IQ1_M.
    IQ1_M = ("IQ1_M", 256, 56, Some(29), None, None, None);
    /// ggml TQ1_0 (ternary).
    TQ1_0 = ("TQ1_0", 256, 54, Some(34), None, None, None);
    /// ggml TQ2_0 (ternary).
    TQ2_0 = ("TQ2_0", 256, 66, Some(35), None, None, None);
    /// ggml MXFP4 (microscaling FP4).
    MXFP4 = ("MXFP4", 32, 17, Some(39), None, None, None);
}

impl DType {
    /// Canonical display name.
    pub const fn name(self) -> &'static str {
        self.info().name
    }

    /// Elements per block (1 for scalar formats).
    pub const fn block_size(self) -> u64 {
        self.info().block as u64
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> u64 {
        self.info().block_bytes as u64
    }

    /// True for the ggml block formats (block size above one element).
    pub const fn is_block(self) -> bool {
        self.info().block > 1
    }

    /// True for floating-point scalar formats.
    pub const fn is_float(self) -> bool {
        matches!(
            self,
            DType::F32 | DType::F16 | DType::BF16 | DType::F64 | DType::F8_E4M3 | DType::F8_E5M2
        )
    }

    /// Exact bytes occupied by `elements` values, or an error if `elements` is not a whole
    /// number of blocks or the size overflows `u64`.
    pub fn bytes_for(self, elements: u64) -> Result<u64> {
        let block = self.block_size();
        if elements % block != 0 {
            return Err(Error::PartialBlock {
                dtype: self,
                elements,
                block,
            });
        }
        (elements / block)
            .checked_mul(self.block_bytes())
            .ok_or(Error::SizeOverflow {
                dtype: self,
                elements,
            })
    }

    /// Look up a ggml type id as stored in GGUF.
    pub fn from_ggml(id: u32) -> Option<DType> {
        Self::ALL
            .iter()
            .copied()
            .find(|d| d.info().ggml == Some(id))
    }

    /// Look up a safetensors header dtype string.
    pub fn from_safetensors(name: &str) -> Option<DType> {
        Self::ALL
            .iter()
            .copied()
            .find(|d| d.info().safetensors == Some(name))
    }

    /// Look up a torch dtype name (without the `torch.` prefix), e.g. `bfloat16`.
    pub fn from_torch(name: &str) -> Option<DType> {
        Self::ALL
            .iter()
            .copied()
            .find(|d| d.info().torch == Some(name))
    }

    /// Look up a legacy torch storage class name, e.g. `BFloat16Storage`.
    pub fn from_torch_storage(name: &str) -> Option<DType> {
        Self::ALL
            .iter()
            .copied()
            .find(|d| d.info().torch_storage == Some(name))
    }

    /// Parse a canonical name (case-insensitive), as printed by [`DType::name`].
    pub fn from_name(name: &str) -> Option<DType> {
        Self::ALL
            .iter()
            .copied()
            .find(|d| d.name().eq_ignore_ascii_case(name))
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for (i, a) in DType::ALL.iter().enumerate() {
            assert!(a.block_size() > 0 && a.block_bytes() > 0, "{a}");
            for b in &DType::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
                if a.info().ggml.is_some() {
                    assert_ne!(a.info().ggml, b.info().ggml, "{a} {b}");
                }
                if a.info().safetensors.is_some() {
                    assert_ne!(a.info().safetensors, b.info().safetensors);
                }
            }
            assert_eq!(DType::from_name(a.name()), Some(*a));
        }
    }

    #[test]
    fn ggml_sizes_match_ggml_common_h() {
        // (id, block, bytes) from ggml's type traits.
        let want = [
            (0, 1, 4),
            (1, 1, 2),
            (2, 32, 18),
            (3, 32, 20),
            (6, 32, 22),
            (7, 32, 24),
            (8, 32, 34),
            (10, 256, 84),
            (11, 256, 110),
            (12, 256, 144),
            (13, 256, 176),
            (14, 256, 210),
            (15, 256, 292),
            (16, 256, 66),
            (17, 256, 74),
            (18, 256, 98),
            (19, 256, 50),
            (20, 32, 18),
            (21, 256, 110),
            (22, 256, 82),
            (23, 256, 136),
            (24, 1, 1),
            (25, 1, 2),
            (26, 1, 4),
            (27, 1, 8),
            (28, 1, 8),
            (29, 256, 56),
            (30, 1, 2),
            (34, 256, 54),
            (35, 256, 66),
            (39, 32, 17),
        ];
        for (id, block, bytes) in want {
            let d = DType::from_ggml(id).unwrap_or_else(|| panic!("ggml id {id}"));
            assert_eq!((d.block_size(), d.block_bytes()), (block, bytes), "{d}");
        }
        for removed in [4, 5, 31, 32, 33, 36, 37, 38, 1000] {
            assert_eq!(DType::from_ggml(removed), None);
        }
    }

    #[test]
    fn bytes_for_checks_blocks_and_overflow() {
        assert_eq!(DType::Q4_K.bytes_for(512), Ok(288));
        assert!(matches!(
            DType::Q4_0.bytes_for(33),
            Err(Error::PartialBlock { .. })
        ));
        assert!(matches!(
            DType::F64.bytes_for(u64::MAX / 2),
            Err(Error::SizeOverflow { .. })
        ));
    }
}
