//! An allowlisted pickle virtual machine (specs/meta.md §2.2, §2.4).
//!
//! A pickle is a program: `GLOBAL` names any importable callable and `REDUCE` calls it, so
//! `pickle.load` on a downloaded `.pth` can run `os.system`. This interpreter never calls
//! anything. It builds inert [`Value`]s only:
//!
//! - `GLOBAL` / `STACK_GLOBAL` resolve against a fixed allowlist ([`Global`]): `collections.OrderedDict`,
//!   `torch._utils._rebuild_tensor_v2/_v3`, `_rebuild_parameter[_with_state]`, the torch storage
//!   classes, `torch.UntypedStorage`, torch dtype names and `torch.Size`. Any other name is an
//!   immediate [`PthError::ForbiddenGlobal`].
//! - `REDUCE` (and `NEWOBJ`) on an allowlisted callable is *interpreted* (a tensor rebuild becomes
//!   a [`TensorDesc`], `OrderedDict()` an empty dict, a parameter unwraps to its tensor); on
//!   anything else it is a [`PthError::ForbiddenCall`]. `BUILD` is accepted only on an
//!   `OrderedDict` (the `_metadata` state of `nn.Module.state_dict()`, which is ignored).
//!   `INST`, `OBJ` and `NEWOBJ_EX` are always refused.
//! - `BINPERSID` turns torch's `('storage', type, key, location, numel)` into a [`StorageRef`].
//!
//! Hostile input cannot make it panic, recurse, or allocate without bound: every length is
//! checked against the bytes that remain; the stack (values plus marks) is capped at
//! [`MAX_STACK`], value nesting at [`MAX_NESTING`], the memo at [`MAX_MEMO`] entries, the items
//! put in containers (and dimensions copied into tensor views) at [`MAX_ITEMS`]. Values are
//! shared by reference count, so `BINGET` never copies, and lists and dicts are mutated in place
//! with CPython's aliasing (memo entries see later `APPEND`s/`SETITEM`s); memo bookkeeping is
//! charged to a work budget proportional to the input length, and one container may sit in at
//! most [`MAX_MEMO_ALIASES`] memo slots, so that each mutation costs a few steps. The only values
//! built by copying rather than sharing, tensor views and storages, are small by construction:
//! at most [`MAX_DIMS`] dimensions and storage keys of at most [`MAX_STORAGE_KEY`] bytes. A
//! container mutated while some other object refers to it is rejected, which also makes cycles
//! impossible. Each opcode consumes at least one byte, so the number of steps is bounded by the
//! input length. The interpreter is a flat loop: no recursion on input structure anywhere.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use qforge_codecs::DType;

use super::PthError;

/// Most values plus marks the stack may hold at once.
pub const MAX_STACK: usize = 10_000;
/// Deepest nesting of containers (a list in a list in …) a value may have.
pub const MAX_NESTING: u32 = 1_000;
/// Most memo entries.
pub const MAX_MEMO: usize = 1 << 20;
/// Most memo slots one list or dict may occupy at once. Each in-place mutation of a container
/// re-points all of its slots, so without a cap a pickle could make every one-byte `APPEND` cost
/// a million steps. CPython's pickler memoizes each object once.
pub const MAX_MEMO_ALIASES: usize = 8;
/// Most items a pickle may put in tuples, lists and dicts, all told, counting each dimension
/// copied into a tensor view as one. Every item costs at least one opcode byte but 32 bytes of
/// memory, so this caps the interpreter's memory in absolute terms; torch writes about 20 per
/// tensor, so it allows state dicts of some 200k tensors (the memo cap allows about 100k).
pub const MAX_ITEMS: u64 = 1 << 22;
/// Most dimensions a tensor view may have. Each `REDUCE` of a rebuild function copies its size
/// and stride into a new view, however often the same arguments are reused.
pub const MAX_DIMS: usize = 16;
/// Longest storage key, in bytes. torch numbers its storages (`"0"`, `"1"`, …); each persistent
/// id copies its key, however often the same key string is reused.
pub const MAX_STORAGE_KEY: usize = 256;
/// Highest pickle protocol understood.
pub const MAX_PROTOCOL: u8 = 5;

/// An inert value built by the interpreter.
#[derive(Debug, Clone)]
pub enum Value {
    /// `None`
    None,
    /// `True` / `False`
    Bool(bool),
    /// An integer (pickle ints wider than 128 bits are rejected).
    Int(i128),
    /// A float.
    Float(f64),
    /// A `str`.
    Str(Rc<str>),
    /// A `bytes`.
    Bytes(Rc<[u8]>),
    /// A tuple.
    Tuple(Rc<Seq>),
    /// A list.
    List(Rc<Seq>),
    /// A dict or `collections.OrderedDict`.
    Dict(Rc<Dict>),
    /// An allowlisted global (class, function or dtype), never called.
    Global(Global),
    /// A torch storage from a persistent id.
    Storage(Rc<StorageRef>),
    /// A torch tensor view, from `_rebuild_tensor_v2/_v3` or `_rebuild_parameter`.
    Tensor(Rc<TensorDesc>),
}

/// The items of a tuple or list.
#[derive(Debug, Clone, Default)]
pub struct Seq {
    /// The items, in order.
    pub items: Vec<Value>,
    depth: u32,
}

/// The items of a dict, in insertion order. Duplicate keys are kept (a reader decides what a
/// duplicate means); nothing is hashed.
#[derive(Debug, Clone, Default)]
pub struct Dict {
    /// True for `collections.OrderedDict`.
    pub ordered: bool,
    /// `(key, value)` pairs in insertion order.
    pub items: Vec<(Value, Value)>,
    depth: u32,
}

/// The globals a pickle may name. Everything else is [`PthError::ForbiddenGlobal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Global {
    /// `collections.OrderedDict`
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor_v3`
    RebuildTensorV3,
    /// `torch._utils._rebuild_parameter`
    RebuildParameter,
    /// `torch._utils._rebuild_parameter_with_state`
    RebuildParameterWithState,
    /// A legacy typed storage class `torch.<name>`, e.g. `BFloat16Storage`.
    StorageClass(String),
    /// `torch.UntypedStorage` / `torch.storage.UntypedStorage` (numel counts bytes).
    UntypedStorage,
    /// A torch dtype `torch.<name>`, e.g. `float8_e4m3fn`.
    DType(String),
    /// `torch.Size`
    Size,
}

/// The element type of a storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// A legacy typed storage holding elements of this dtype.
    Typed(DType),
    /// An untyped (byte) storage; the tensor's dtype comes from `_rebuild_tensor_v3`.
    Untyped,
}

/// A storage named by a persistent id: `data/<key>` in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageRef {
    /// The record key (`data/<key>`).
    pub key: String,
    /// Element type of the storage.
    pub kind: StorageKind,
    /// Element count as pickled (bytes for untyped storages).
    pub numel: u64,
    /// Byte size implied by `numel` and the element type.
    pub nbytes: u64,
}

/// A tensor view as pickled: not yet checked against the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDesc {
    /// The storage it views.
    pub storage: StorageRef,
    /// The tensor's element type.
    pub dtype: DType,
    /// Offset of the first element, in elements of `dtype`.
    pub storage_offset: u64,
    /// Shape.
    pub size: Vec<u64>,
    /// Strides in elements, one per dimension.
    pub stride: Vec<u64>,
}

impl Value {
    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(d) if d.ordered => "OrderedDict",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    /// Container nesting depth (0 for scalars, tensors and storages).
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(s) | Value::List(s) => s.depth,
            Value::Dict(d) => d.depth,
            _ => 0,
        }
    }
}

impl Global {
    /// The dotted name, for error messages.
    pub fn path(&self) -> String {
        match self {
            Global::OrderedDict => "collections.OrderedDict".into(),
            Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".into(),
            Global::RebuildTensorV3 => "torch._utils._rebuild_tensor_v3".into(),
            Global::RebuildParameter => "torch._utils._rebuild_parameter".into(),
            Global::RebuildParameterWithState => {
                "torch._utils._rebuild_parameter_with_state".into()
            }
            Global::StorageClass(n) | Global::DType(n) => format!("torch.{n}"),
            Global::UntypedStorage => "torch.UntypedStorage".into(),
            Global::Size => "torch.Size".into(),
        }
    }
}

/// Legacy storage classes torch can pickle (torch/storage.py `_LegacyStorage` subclasses).
/// Those without a qforge [`DType`] are accepted here and rejected with
/// [`PthError::UnknownStorage`] when used.
const STORAGE_CLASSES: &[&str] = &[
    "DoubleStorage",
    "FloatStorage",
    "HalfStorage",
    "BFloat16Storage",
    "LongStorage",
    "IntStorage",
    "ShortStorage",
    "CharStorage",
    "ByteStorage",
    "BoolStorage",
    "ComplexDoubleStorage",
    "ComplexFloatStorage",
    "QUInt8Storage",
    "QInt8Storage",
    "QInt32Storage",
    "QUInt4x2Storage",
    "QUInt2x4Storage",
];

/// Canonical torch dtype names (the spelling `torch.dtype.__reduce__` pickles). Those without a
/// qforge [`DType`] are rejected with [`PthError::UnsupportedDType`] when used.
const TORCH_DTYPES: &[&str] = &[
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "float8_e4m3fn",
    "float8_e5m2",
    "float8_e4m3fnuz",
    "float8_e5m2fnuz",
    "float8_e8m0fnu",
    "float4_e2m1fn_x2",
    "complex32",
    "complex64",
    "complex128",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "bool",
    "qint8",
    "quint8",
    "qint32",
    "quint4x2",
    "quint2x4",
];

/// Resolve `module.name` against the allowlist.
fn resolve(module: &str, name: &str, offset: u64) -> Result<Global, PthError> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_tensor_v3") => Some(Global::RebuildTensorV3),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch._utils", "_rebuild_parameter_with_state") => {
            Some(Global::RebuildParameterWithState)
        }
        ("torch" | "torch.storage", "UntypedStorage") => Some(Global::UntypedStorage),
        ("torch", "Size") => Some(Global::Size),
        ("torch", n) if STORAGE_CLASSES.contains(&n) => Some(Global::StorageClass(n.to_owned())),
        ("torch", n) if TORCH_DTYPES.contains(&n) => Some(Global::DType(n.to_owned())),
        _ => None,
    };
    g.ok_or_else(|| PthError::ForbiddenGlobal {
        module: clip(module),
        name: clip(name),
        offset,
    })
}

/// The address of a mutable container (list or dict), which identifies it while it is alive.
fn container_key(v: &Value) -> Option<usize> {
    match v {
        Value::List(l) => Some(Rc::as_ptr(l).cast::<()>() as usize),
        Value::Dict(d) => Some(Rc::as_ptr(d).cast::<()>() as usize),
        _ => None,
    }
}

/// Move `k, v, k, v, …` (already checked to be even) into `d`.
fn push_pairs(d: &mut Dict, items: Vec<Value>) {
    d.items.reserve(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        d.items.push((k, v));
    }
}

/// Names in errors are hostile input too: keep them short.
fn clip(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Run the pickle program in `data` and return the value `STOP` pops.
///
/// Bytes after `STOP` are ignored, as Python's unpickler does.
pub fn load(data: &[u8]) -> Result<Value, PthError> {
    Vm::new(data).run()
}

/// The memo. Picklers number their entries 0, 1, 2, … in order, so those live in a vector
/// (32 bytes an entry, where a hash map costs up to 150 with its growth); any other index goes
/// to a map. An index is in one of the two, never both.
#[derive(Default)]
struct Memo {
    /// slots 0 .. dense.len()
    dense: Vec<Value>,
    sparse: HashMap<u32, Value>,
}

impl Memo {
    fn len(&self) -> usize {
        self.dense.len() + self.sparse.len()
    }

    fn get(&self, index: u32) -> Option<&Value> {
        self.dense
            .get(index as usize)
            .or_else(|| self.sparse.get(&index))
    }

    fn get_mut(&mut self, index: u32) -> Option<&mut Value> {
        match self.dense.get_mut(index as usize) {
            Some(v) => Some(v),
            None => self.sparse.get_mut(&index),
        }
    }

    fn contains_key(&self, index: u32) -> bool {
        self.get(index).is_some()
    }

    /// Put `v` in slot `index`, returning what was there.
    fn insert(&mut self, index: u32, v: Value) -> Option<Value> {
        let at = index as usize;
        if let Some(slot) = self.dense.get_mut(at) {
            Some(std::mem::replace(slot, v))
        } else if at == self.dense.len() && !self.sparse.contains_key(&index) {
            self.dense.push(v);
            None
        } else {
            self.sparse.insert(index, v)
        }
    }
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    /// offset of the opcode being executed
    op: u64,
    stack: Vec<Value>,
    /// stack lengths at each `MARK`
    marks: Vec<usize>,
    memo: Memo,
    /// for each list or dict held by the memo (by address), the memo slots holding it; the
    /// memo's own references keep the address from being reused while it is listed here
    memo_slots: HashMap<usize, HashSet<u32>>,
    /// memo bookkeeping done so far
    work: u64,
    work_limit: u64,
    /// items put in containers and dimensions copied into views so far (see [`MAX_ITEMS`])
    items: u64,
}

mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const BINGET: u8 = b'h';
    pub const INST: u8 = b'i';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const OBJ: u8 = b'o';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
}

impl<'a> Vm<'a> {
    fn new(data: &'a [u8]) -> Self {
        Vm {
            data,
            pos: 0,
            op: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: Memo::default(),
            memo_slots: HashMap::new(),
            work: 0,
            work_limit: (data.len() as u64)
                .saturating_mul(64)
                .saturating_add(1 << 20),
            items: 0,
        }
    }

    // ---- errors --------------------------------------------------------------------------

    fn truncated(&self) -> PthError {
        PthError::Truncated { offset: self.op }
    }

    fn bad(&self, what: impl Into<String>) -> PthError {
        PthError::BadValue {
            what: what.into(),
            offset: self.op,
        }
    }

    fn forbidden(&self, what: impl Into<String>) -> PthError {
        PthError::ForbiddenCall {
            what: what.into(),
            offset: self.op,
        }
    }

    fn too_deep(&self) -> PthError {
        PthError::TooDeep { offset: self.op }
    }

    // ---- input ---------------------------------------------------------------------------

    fn take(&mut self, n: u64) -> Result<&'a [u8], PthError> {
        let remaining = self.data.len() - self.pos;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= remaining)
            .ok_or_else(|| self.truncated())?;
        let data: &'a [u8] = self.data;
        let out = data
            .get(self.pos..self.pos + n)
            .ok_or_else(|| self.truncated())?;
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PthError> {
        let b = self.take(N as u64)?;
        b.try_into().map_err(|_| self.truncated())
    }

    fn u8(&mut self) -> Result<u8, PthError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, PthError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, PthError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, PthError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A `\n`-terminated ASCII line (GLOBAL / INST operands), without the newline.
    fn line(&mut self) -> Result<&'a str, PthError> {
        let data: &'a [u8] = self.data;
        let rest = data.get(self.pos..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.truncated())?;
        let line = rest.get(..len).unwrap_or_default();
        self.pos += len + 1;
        if !line.is_ascii() {
            return Err(self.bad("GLOBAL name is not ASCII"));
        }
        std::str::from_utf8(line).map_err(|_| self.bad("GLOBAL name is not ASCII"))
    }

    fn utf8(&mut self, len: u64) -> Result<Value, PthError> {
        let b = self.take(len)?;
        let s = std::str::from_utf8(b).map_err(|_| self.bad("string is not valid UTF-8"))?;
        Ok(Value::Str(Rc::from(s)))
    }

    fn bytes(&mut self, len: u64) -> Result<Value, PthError> {
        Ok(Value::Bytes(Rc::from(self.take(len)?)))
    }

    // ---- stack ---------------------------------------------------------------------------

    /// Stack length below which the current mark frame may not pop.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn push(&mut self, v: Value) -> Result<(), PthError> {
        if self.stack.len() + self.marks.len() >= MAX_STACK {
            return Err(self.too_deep());
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, PthError> {
        if self.stack.len() <= self.floor() {
            return Err(PthError::StackUnderflow { offset: self.op });
        }
        self.stack
            .pop()
            .ok_or(PthError::StackUnderflow { offset: self.op })
    }

    fn top(&mut self) -> Result<&mut Value, PthError> {
        let offset = self.op;
        if self.stack.len() <= self.floor() {
            return Err(PthError::StackUnderflow { offset });
        }
        self.stack
            .last_mut()
            .ok_or(PthError::StackUnderflow { offset })
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, PthError> {
        let mark = self
            .marks
            .pop()
            .ok_or(PthError::MissingMark { offset: self.op })?;
        if mark > self.stack.len() {
            return Err(PthError::StackUnderflow { offset: self.op });
        }
        Ok(self.stack.split_off(mark))
    }

    fn depth_over(&self, items: &[Value]) -> Result<u32, PthError> {
        let depth = items.iter().map(Value::depth).max().unwrap_or(0) + 1;
        if depth > MAX_NESTING {
            return Err(self.too_deep());
        }
        Ok(depth)
    }

    /// Count `n` more items against [`MAX_ITEMS`].
    fn count_items(&mut self, n: usize) -> Result<(), PthError> {
        self.items = self.items.saturating_add(n as u64);
        if self.items > MAX_ITEMS {
            return Err(PthError::LimitExceeded {
                what: "container items",
                offset: self.op,
            });
        }
        Ok(())
    }

    fn seq(&mut self, items: Vec<Value>) -> Result<Rc<Seq>, PthError> {
        self.count_items(items.len())?;
        let depth = self.depth_over(&items)?;
        Ok(Rc::new(Seq { items, depth }))
    }

    fn dict_from_pairs(&mut self, items: Vec<Value>, ordered: bool) -> Result<Value, PthError> {
        self.count_items(items.len())?;
        let depth = self.pairs_depth(&items)?;
        let mut d = Dict {
            ordered,
            items: Vec::with_capacity(items.len() / 2),
            depth,
        };
        push_pairs(&mut d, items);
        Ok(Value::Dict(Rc::new(d)))
    }

    /// Check that `items` is `k, v, k, v, …` and return the depth of a dict holding them.
    fn pairs_depth(&self, items: &[Value]) -> Result<u32, PthError> {
        if items.len() % 2 != 0 {
            return Err(self.bad("odd number of items for a dict"));
        }
        self.depth_over(items)
    }

    /// Charge `n` units of bookkeeping to the work budget.
    fn charge(&mut self, n: usize) -> Result<(), PthError> {
        self.work = self.work.saturating_add(n as u64);
        if self.work > self.work_limit {
            return Err(PthError::LimitExceeded {
                what: "memo bookkeeping work",
                offset: self.op,
            });
        }
        Ok(())
    }

    /// Mutate the list or dict on top of the stack in place, with CPython's aliasing: memo
    /// entries that refer to it see the change. References the memo does not account for (the
    /// container inside another container, twice on the stack, or among the items being added
    /// to itself) would need shared mutable objects to model; such pickles are rejected rather
    /// than read differently from CPython. torch's pickler never produces them: it fills each
    /// container right after creating and memoizing it, before anything else refers to it.
    fn mutate_top(&mut self, opname: &str, f: impl FnOnce(&mut Value)) -> Result<(), PthError> {
        let offset = self.op;
        let key = match self.top()? {
            v @ (Value::List(_) | Value::Dict(_)) => container_key(v),
            other => {
                let what = format!("{opname} on a {}", other.type_name());
                return Err(PthError::BadValue { what, offset });
            }
        };
        let slots: Vec<u32> = key
            .and_then(|k| self.memo_slots.get(&k))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        self.charge(slots.len())?;
        // Drop the memo's references so that the stack's is the only one left (the stack keeps
        // the container alive, so its address and `memo_slots` stay valid), mutate, and hand
        // the memo its references back.
        for s in &slots {
            if let Some(v) = self.memo.get_mut(*s) {
                *v = Value::None;
            }
        }
        let mut unique = false;
        if let Some(top) = self.stack.last_mut() {
            unique = match top {
                Value::List(l) => Rc::get_mut(l).is_some(),
                Value::Dict(d) => Rc::get_mut(d).is_some(),
                _ => false,
            };
            if unique {
                f(top);
            }
            for s in &slots {
                if let Some(v) = self.memo.get_mut(*s) {
                    *v = top.clone();
                }
            }
        }
        if !unique {
            return Err(PthError::BadValue {
                what: format!(
                    "{opname} on a container that is also referenced from another object"
                ),
                offset,
            });
        }
        Ok(())
    }

    /// Append `items` to the list on top of the stack.
    fn append(&mut self, items: Vec<Value>) -> Result<(), PthError> {
        self.count_items(items.len())?;
        let depth = self.depth_over(&items)?;
        if !matches!(self.top()?, Value::List(_)) {
            let what = format!("APPEND to a {}", self.top()?.type_name());
            return Err(self.bad(what));
        }
        self.mutate_top("APPEND", |v| {
            if let Value::List(l) = v {
                if let Some(l) = Rc::get_mut(l) {
                    l.depth = l.depth.max(depth);
                    l.items.extend(items);
                }
            }
        })
    }

    /// Add `items` (k, v, k, v, …) to the dict on top of the stack.
    fn set_items(&mut self, items: Vec<Value>) -> Result<(), PthError> {
        self.count_items(items.len())?;
        let depth = self.pairs_depth(&items)?;
        if !matches!(self.top()?, Value::Dict(_)) {
            let what = format!("SETITEM on a {}", self.top()?.type_name());
            return Err(self.bad(what));
        }
        self.mutate_top("SETITEM", |v| {
            if let Value::Dict(d) = v {
                if let Some(d) = Rc::get_mut(d) {
                    d.depth = d.depth.max(depth);
                    push_pairs(d, items);
                }
            }
        })
    }

    /// `memo[index] = top of stack`, keeping [`Vm::memo_slots`] in step.
    fn memo_put(&mut self, index: u32) -> Result<(), PthError> {
        let v = self.top()?.clone();
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(index) {
            return Err(PthError::LimitExceeded {
                what: "memo entries",
                offset: self.op,
            });
        }
        if let Some(k) = container_key(&v) {
            let slots = self.memo_slots.entry(k).or_default();
            if slots.len() >= MAX_MEMO_ALIASES && !slots.contains(&index) {
                return Err(PthError::LimitExceeded {
                    what: "memo slots holding one container",
                    offset: self.op,
                });
            }
            slots.insert(index);
        }
        if let Some(old) = self.memo.insert(index, v) {
            if let Some(k) = container_key(&old) {
                let now_empty = self.memo_slots.get_mut(&k).is_some_and(|s| {
                    // The same container stored again in the same slot keeps its entry.
                    if !matches!(self.memo.get(index), Some(cur) if container_key(cur) == Some(k)) {
                        s.remove(&index);
                    }
                    s.is_empty()
                });
                if now_empty {
                    self.memo_slots.remove(&k);
                }
            }
        }
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<(), PthError> {
        let v = self.memo.get(index).cloned().ok_or(PthError::MemoMissing {
            index,
            offset: self.op,
        })?;
        self.push(v)
    }

    // ---- interpreter ---------------------------------------------------------------------

    fn run(mut self) -> Result<Value, PthError> {
        loop {
            self.op = self.pos as u64;
            let code = self.u8()?;
            if code == op::STOP {
                return self.pop();
            }
            let known = self.stack_op(code)?
                || self.literal_op(code)?
                || self.container_op(code)?
                || self.memo_op(code)?
                || self.object_op(code)?;
            if !known {
                return Err(PthError::UnsupportedOpcode {
                    opcode: code,
                    offset: self.op,
                });
            }
        }
    }

    /// Framing and the stack: PROTO, FRAME, MARK, POP, POP_MARK, DUP. `Ok(false)`: not one of these opcodes.
    fn stack_op(&mut self, code: u8) -> Result<bool, PthError> {
        match code {
            op::PROTO => {
                let p = self.u8()?;
                if p > MAX_PROTOCOL {
                    return Err(self.bad(format!("unsupported pickle protocol {p}")));
                }
            }
            op::FRAME => {
                // Framing only groups opcodes for buffered readers; check the length and go on.
                let len = self.u64()?;
                if len > (self.data.len() - self.pos) as u64 {
                    return Err(self.truncated());
                }
            }
            op::MARK => {
                if self.stack.len() + self.marks.len() >= MAX_STACK {
                    return Err(self.too_deep());
                }
                self.marks.push(self.stack.len());
            }
            op::POP => {
                if self.stack.len() > self.floor() {
                    self.pop()?;
                } else {
                    self.pop_mark()?;
                }
            }
            op::POP_MARK => {
                self.pop_mark()?;
            }
            op::DUP => {
                let v = self.top()?.clone();
                self.push(v)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Literals: None, booleans, integers, floats, strings and bytes. `Ok(false)`: not one of these opcodes.
    fn literal_op(&mut self, code: u8) -> Result<bool, PthError> {
        match code {
            op::NONE => self.push(Value::None)?,
            op::NEWTRUE => self.push(Value::Bool(true))?,
            op::NEWFALSE => self.push(Value::Bool(false))?,
            op::BININT1 => {
                let v = self.u8()?;
                self.push(Value::Int(v.into()))?;
            }
            op::BININT2 => {
                let v = self.u16()?;
                self.push(Value::Int(v.into()))?;
            }
            op::BININT => {
                let v = i32::from_le_bytes(self.array()?);
                self.push(Value::Int(v.into()))?;
            }
            op::LONG1 => {
                let n = self.u8()?;
                let v = self.long(n.into())?;
                self.push(v)?;
            }
            op::LONG4 => {
                let n = i32::from_le_bytes(self.array()?);
                let n = u64::try_from(n).map_err(|_| self.bad("negative LONG4 length"))?;
                let v = self.long(n)?;
                self.push(v)?;
            }
            op::BINFLOAT => {
                let v = f64::from_be_bytes(self.array()?);
                self.push(Value::Float(v))?;
            }
            op::BINUNICODE => {
                let n = self.u32()?;
                let v = self.utf8(n.into())?;
                self.push(v)?;
            }
            op::SHORT_BINUNICODE => {
                let n = self.u8()?;
                let v = self.utf8(n.into())?;
                self.push(v)?;
            }
            op::BINUNICODE8 => {
                let n = self.u64()?;
                let v = self.utf8(n)?;
                self.push(v)?;
            }
            op::BINBYTES => {
                let n = self.u32()?;
                let v = self.bytes(n.into())?;
                self.push(v)?;
            }
            op::SHORT_BINBYTES => {
                let n = self.u8()?;
                let v = self.bytes(n.into())?;
                self.push(v)?;
            }
            op::BINBYTES8 => {
                let n = self.u64()?;
                let v = self.bytes(n)?;
                self.push(v)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Tuples, lists and dicts: built empty, from the stack or a mark, and appended to. `Ok(false)`: not one of these opcodes.
    fn container_op(&mut self, code: u8) -> Result<bool, PthError> {
        match code {
            op::EMPTY_TUPLE => self.push(Value::Tuple(Rc::default()))?,
            op::EMPTY_LIST => self.push(Value::List(Rc::default()))?,
            op::EMPTY_DICT => self.push(Value::Dict(Rc::default()))?,
            op::TUPLE => {
                let items = self.pop_mark()?;
                let v = Value::Tuple(self.seq(items)?);
                self.push(v)?;
            }
            op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                let n = usize::from(code - op::TUPLE1) + 1;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                let v = Value::Tuple(self.seq(items)?);
                self.push(v)?;
            }
            op::LIST => {
                let items = self.pop_mark()?;
                let v = Value::List(self.seq(items)?);
                self.push(v)?;
            }
            op::DICT => {
                let items = self.pop_mark()?;
                let v = self.dict_from_pairs(items, false)?;
                self.push(v)?;
            }
            op::APPEND => {
                let v = self.pop()?;
                self.append(vec![v])?;
            }
            op::APPENDS => {
                let items = self.pop_mark()?;
                self.append(items)?;
            }
            op::SETITEM => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.set_items(vec![k, v])?;
            }
            op::SETITEMS => {
                let items = self.pop_mark()?;
                self.set_items(items)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The memo: PUT (BINPUT, LONG_BINPUT, MEMOIZE) and GET (BINGET, LONG_BINGET). `Ok(false)`: not one of these opcodes.
    fn memo_op(&mut self, code: u8) -> Result<bool, PthError> {
        match code {
            op::BINPUT => {
                let i = self.u8()?;
                self.memo_put(i.into())?;
            }
            op::LONG_BINPUT => {
                let i = self.u32()?;
                self.memo_put(i)?;
            }
            op::MEMOIZE => {
                let i =
                    u32::try_from(self.memo.len()).map_err(|_| self.bad("memo index overflow"))?;
                self.memo_put(i)?;
            }
            op::BINGET => {
                let i = self.u8()?;
                self.memo_get(i.into())?;
            }
            op::LONG_BINGET => {
                let i = self.u32()?;
                self.memo_get(i)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Globals (resolved against the allow-list, never imported), calls (REDUCE and NEWOBJ of
    /// allowed callables only), BUILD, and persistent ids (the tensors' storages). `Ok(false)`: not one of these opcodes.
    fn object_op(&mut self, code: u8) -> Result<bool, PthError> {
        match code {
            op::GLOBAL => {
                let module = self.line()?;
                let name = self.line()?;
                let g = resolve(module, name, self.op)?;
                self.push(Value::Global(g))?;
            }
            op::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (&module, &name) else {
                    return Err(self.bad("STACK_GLOBAL operands must be strings"));
                };
                let g = resolve(module, name, self.op)?;
                self.push(Value::Global(g))?;
            }
            op::REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let v = self.reduce(&callable, &args)?;
                if let Value::Tensor(t) = &v {
                    self.count_items(t.size.len() + t.stride.len())?;
                }
                self.push(v)?;
            }
            op::NEWOBJ => {
                let args = self.pop()?;
                let cls = self.pop()?;
                let v = self.new_obj(&cls, &args)?;
                self.push(v)?;
            }
            op::NEWOBJ_EX => return Err(self.forbidden("NEWOBJ_EX")),
            op::BUILD => {
                let _state = self.pop()?;
                let offset = self.op;
                match self.top()? {
                    // nn.Module.state_dict() pickles its `_metadata` attribute this way.
                    Value::Dict(d) if d.ordered => {}
                    other => {
                        let what = format!("BUILD on a {}", other.type_name());
                        return Err(PthError::ForbiddenCall { what, offset });
                    }
                }
            }
            op::INST => {
                let module = self.line()?;
                let name = self.line()?;
                let g = resolve(module, name, self.op)?;
                return Err(self.forbidden(format!("INST {}", g.path())));
            }
            op::OBJ => return Err(self.forbidden("OBJ")),
            op::BINPERSID => {
                let pid = self.pop()?;
                let v = self.persistent_load(&pid)?;
                self.push(v)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// LONG1 / LONG4 payload: little-endian two's complement, at most 128 bits.
    fn long(&mut self, n: u64) -> Result<Value, PthError> {
        if n > 16 {
            return Err(self.bad(format!("{n}-byte integer is wider than 128 bits")));
        }
        let b = self.take(n)?;
        let negative = b.last().is_some_and(|&last| last & 0x80 != 0);
        let mut buf = [if negative { 0xff } else { 0 }; 16];
        for (dst, src) in buf.iter_mut().zip(b) {
            *dst = *src;
        }
        Ok(Value::Int(i128::from_le_bytes(buf)))
    }

    // ---- calls ---------------------------------------------------------------------------

    fn reduce(&self, callable: &Value, args: &Value) -> Result<Value, PthError> {
        let Value::Global(g) = callable else {
            return Err(self.forbidden(format!("REDUCE on a {}", callable.type_name())));
        };
        let Value::Tuple(args) = args else {
            return Err(self.bad(format!(
                "arguments to {} are a {}, not a tuple",
                g.path(),
                args.type_name()
            )));
        };
        let args = args.items.as_slice();
        match g {
            Global::OrderedDict => {
                if !args.is_empty() {
                    return Err(self.bad("collections.OrderedDict called with arguments"));
                }
                Ok(Value::Dict(Rc::new(Dict {
                    ordered: true,
                    ..Dict::default()
                })))
            }
            Global::RebuildTensorV2 => self.rebuild_tensor(args, false),
            Global::RebuildTensorV3 => self.rebuild_tensor(args, true),
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let want = if *g == Global::RebuildParameter { 3 } else { 4 };
                match args {
                    [t @ Value::Tensor(_), ..] if args.len() == want => Ok(t.clone()),
                    _ => Err(self.bad(format!(
                        "{} expects a tensor and {} more arguments",
                        g.path(),
                        want - 1
                    ))),
                }
            }
            Global::Size => match args {
                [t @ Value::Tuple(items)]
                    if items.items.iter().all(|v| matches!(v, Value::Int(_))) =>
                {
                    Ok(t.clone())
                }
                _ => Err(self.bad("torch.Size expects one tuple of integers")),
            },
            Global::StorageClass(_) | Global::UntypedStorage | Global::DType(_) => {
                Err(self.forbidden(format!("calling {}", g.path())))
            }
        }
    }

    fn new_obj(&self, cls: &Value, args: &Value) -> Result<Value, PthError> {
        match (cls, args) {
            (Value::Global(Global::OrderedDict), Value::Tuple(a)) if a.items.is_empty() => {
                Ok(Value::Dict(Rc::new(Dict {
                    ordered: true,
                    ..Dict::default()
                })))
            }
            (Value::Global(g), _) => Err(self.forbidden(format!("NEWOBJ {}", g.path()))),
            (other, _) => Err(self.forbidden(format!("NEWOBJ on a {}", other.type_name()))),
        }
    }

    fn uint(&self, v: &Value, what: &str) -> Result<u64, PthError> {
        match v {
            Value::Int(i) => {
                u64::try_from(*i).map_err(|_| self.bad(format!("{what} {i} is out of range")))
            }
            other => Err(self.bad(format!("{what} is a {}, not an integer", other.type_name()))),
        }
    }

    fn uints(&self, v: &Value, what: &str) -> Result<Vec<u64>, PthError> {
        match v {
            Value::Tuple(t) if t.items.len() > MAX_DIMS => Err(PthError::LimitExceeded {
                what: "tensor dimensions",
                offset: self.op,
            }),
            Value::Tuple(t) => t.items.iter().map(|x| self.uint(x, what)).collect(),
            other => Err(self.bad(format!("{what} is a {}, not a tuple", other.type_name()))),
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`
    /// or `_rebuild_tensor_v3(…, backward_hooks, dtype[, metadata])`.
    fn rebuild_tensor(&self, args: &[Value], v3: bool) -> Result<Value, PthError> {
        let name = if v3 {
            "_rebuild_tensor_v3"
        } else {
            "_rebuild_tensor_v2"
        };
        let arity = if v3 { 7..=8 } else { 6..=7 };
        if !arity.contains(&args.len()) {
            return Err(self.bad(format!("{name} called with {} arguments", args.len())));
        }
        let [storage, offset, size, stride, ..] = args else {
            return Err(self.bad(format!("{name} called with {} arguments", args.len())));
        };
        let Value::Storage(storage) = storage else {
            return Err(self.bad(format!(
                "{name}: first argument is a {}, not a storage",
                storage.type_name()
            )));
        };
        let storage_offset = self.uint(offset, "storage offset")?;
        let size = self.uints(size, "size")?;
        let stride = self.uints(stride, "stride")?;
        if size.len() != stride.len() {
            return Err(self.bad(format!(
                "{name}: {} sizes but {} strides",
                size.len(),
                stride.len()
            )));
        }
        let dtype = if v3 {
            match args.get(6) {
                Some(Value::Global(Global::DType(d))) => {
                    DType::from_torch(d).ok_or_else(|| PthError::UnsupportedDType {
                        name: format!("torch.{d}"),
                    })?
                }
                Some(other) => {
                    return Err(self.bad(format!("{name}: dtype is a {}", other.type_name())))
                }
                None => return Err(self.bad(format!("{name}: missing dtype"))),
            }
        } else {
            match storage.kind {
                StorageKind::Typed(d) => d,
                StorageKind::Untyped => {
                    return Err(self.bad("_rebuild_tensor_v2 of an untyped storage has no dtype"))
                }
            }
        };
        if dtype.is_block() {
            return Err(PthError::UnsupportedDType {
                name: dtype.to_string(),
            });
        }
        Ok(Value::Tensor(Rc::new(TensorDesc {
            storage: (**storage).clone(),
            dtype,
            storage_offset,
            size,
            stride,
        })))
    }

    /// torch's persistent id `('storage', storage_type, key, location, numel)`.
    fn persistent_load(&self, pid: &Value) -> Result<Value, PthError> {
        let Value::Tuple(t) = pid else {
            return Err(self.bad(format!(
                "persistent id is a {}, not a tuple",
                pid.type_name()
            )));
        };
        let [Value::Str(tag), ty, Value::Str(key), Value::Str(_location), numel] =
            t.items.as_slice()
        else {
            return Err(self.bad("persistent id is not ('storage', type, key, location, numel)"));
        };
        if &**tag != "storage" {
            return Err(self.bad(format!("persistent id of kind {:?}", clip(tag))));
        }
        if key.len() > MAX_STORAGE_KEY {
            return Err(self.bad(format!(
                "storage key of {} bytes (at most {MAX_STORAGE_KEY})",
                key.len()
            )));
        }
        let kind = match ty {
            Value::Global(Global::StorageClass(c)) => {
                StorageKind::Typed(DType::from_torch_storage(c).ok_or_else(|| {
                    PthError::UnknownStorage {
                        name: format!("torch.{c}"),
                    }
                })?)
            }
            Value::Global(Global::UntypedStorage) => StorageKind::Untyped,
            Value::Global(g) => return Err(PthError::UnknownStorage { name: g.path() }),
            other => return Err(self.bad(format!("storage type is a {}", other.type_name()))),
        };
        let numel = self.uint(numel, "storage numel")?;
        let esize = match kind {
            StorageKind::Typed(d) => d.block_bytes(),
            StorageKind::Untyped => 1,
        };
        let nbytes = numel
            .checked_mul(esize)
            .ok_or_else(|| self.bad(format!("storage of {numel} elements overflows")))?;
        Ok(Value::Storage(Rc::new(StorageRef {
            key: key.to_string(),
            kind,
            numel,
            nbytes,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: &Value) -> Vec<i128> {
        match v {
            Value::List(s) | Value::Tuple(s) => s
                .items
                .iter()
                .map(|x| match x {
                    Value::Int(i) => *i,
                    other => panic!("not an int: {}", other.type_name()),
                })
                .collect(),
            other => panic!("not a sequence: {}", other.type_name()),
        }
    }

    #[test]
    fn long_integers_are_twos_complement() {
        let cases: [(&[u8], i128); 5] = [
            (&[0x8a, 0], 0),
            (&[0x8a, 1, 0xff], -1),
            (&[0x8a, 2, 0x00, 0x80], -32768),
            (&[0x8a, 9, 0, 0, 0, 0, 0, 0, 0, 0x80, 0], 1 << 63),
            (&[0x8b, 1, 0, 0, 0, 0x7f], 127),
        ];
        for (ops, want) in cases {
            let mut p = vec![0x80, 2];
            p.extend_from_slice(ops);
            p.extend_from_slice(b"\x85.");
            assert_eq!(ints(&load(&p).unwrap()), [want], "{ops:?}");
        }
    }

    #[test]
    fn memo_aliases_like_cpython() {
        // x = []; memo[0] = x; x.append(1); pop; push memo[0]  ->  [1], as CPython reads it.
        let v = load(b"\x80\x02]q\x00K\x01a0h\x00.").unwrap();
        assert_eq!(ints(&v), [1]);
        // Appends through a BINGET reach the same list.
        let v = load(b"\x80\x02]q\x00K\x01a0h\x00K\x02a0h\x00.").unwrap();
        assert_eq!(ints(&v), [1, 2]);
        // The same list in two memo slots: both see the append.
        let v = load(b"\x80\x02]q\x00q\x01K\x07a0h\x01.").unwrap();
        assert_eq!(ints(&v), [7]);
    }

    #[test]
    fn mutating_a_container_held_elsewhere_is_rejected() {
        let shared = |p: &[u8]| matches!(load(p), Err(PthError::BadValue { what, .. }) if what.contains("also referenced"));
        // Twice on the stack (DUP).
        assert!(shared(b"\x80\x02]2K\x01a."));
        // Appended to itself (a cycle in CPython).
        assert!(shared(b"\x80\x02]q\x00h\x00a."));
        // Inside another list, then mutated through the memo.
        assert!(shared(b"\x80\x02]q\x00]h\x00a0h\x00K\x01a."));
    }

    #[test]
    fn memo_in_and_out_of_order() {
        let mut m = Memo::default();
        let int = |v: Option<&Value>| match v {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        };
        assert!(m.insert(3, Value::Int(30)).is_none()); // out of order: the map
        for i in 0..6 {
            let old = m.insert(i, Value::Int(i.into()));
            assert_eq!(old.is_some(), i == 3, "{i}");
        }
        // 0, 1, 2 in the vector; 3 stays in the map, so 4 and 5 follow it there.
        assert_eq!((m.dense.len(), m.sparse.len(), m.len()), (3, 3, 6));
        assert!(m.insert(u32::MAX, Value::None).is_none());
        for i in 0..6 {
            assert_eq!(int(m.get(i)), Some(i.into()));
        }
        assert!(m.contains_key(u32::MAX) && !m.contains_key(6));
        if let Some(v) = m.get_mut(1) {
            *v = Value::Int(11);
        }
        assert_eq!(int(m.get(1)), Some(11));
        assert_eq!(m.len(), 7);
    }

    #[test]
    fn pop_mark_dup_and_dict_ops() {
        // POP with an empty frame pops the MARK (CPython's behaviour).
        assert_eq!(ints(&load(b"\x80\x02K\x05(0\x85.").unwrap()), [5]);
        assert_eq!(ints(&load(b"\x80\x02K\x05(K\x061\x85.").unwrap()), [5]);
        assert_eq!(ints(&load(b"\x80\x02K\x052\x86.").unwrap()), [5, 5]);
        let Value::Dict(d) = load(b"\x80\x02(K\x01K\x02K\x03K\x04d.").unwrap() else {
            panic!("dict")
        };
        assert_eq!((d.ordered, d.items.len()), (false, 2));
    }

    #[test]
    fn allowlist_resolution() {
        assert_eq!(
            resolve("torch", "BFloat16Storage", 0),
            Ok(Global::StorageClass("BFloat16Storage".into()))
        );
        assert_eq!(
            resolve("torch.storage", "UntypedStorage", 0),
            Ok(Global::UntypedStorage)
        );
        assert_eq!(
            resolve("torch", "float8_e4m3fn", 0),
            Ok(Global::DType("float8_e4m3fn".into()))
        );
        for (m, n) in [
            ("torch", "load"),
            ("torch", "Tensor"),
            ("torch.storage", "BFloat16Storage"),
            ("os", "system"),
        ] {
            assert!(
                matches!(
                    resolve(m, n, 9),
                    Err(PthError::ForbiddenGlobal { offset: 9, .. })
                ),
                "{m}.{n}"
            );
        }
        assert_eq!(clip(&"é".repeat(300)).chars().count(), 101);
    }
}
