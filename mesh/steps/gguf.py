"""A strict check of a GGUF file's structure, in pure Python, before llama.cpp parses it.

Why: a node loads models named by strangers' steps and served by strangers (--fetch-models); the SHA-256
only proves the file is the one named, and its namer may be its server. llama.cpp's GGUF parser has
overflowed its heap on malformed headers (huge string lengths and array counts, bad n_dims, unknown
tensor types, offsets past the file), in a process running as the node's user. So every length, count,
type and offset is checked here against hard bounds and the file's size first, streaming: nothing the
file declares is read into memory before it is checked (a key is at most 64 KiB; values are skipped).
A few values are read too (small integers, two short strings), for the bounds llama.cpp asserts rather than
checks: a hyperparameter past them aborts the whole process (GGML_ASSERT, an uncaught C++ exception), where a
value it checks only fails the load. See _Meta.
Spec: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (versions 2 and 3, little-endian)."""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import ModelFileError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_TENSORS = 1 << 16
MAX_KVS = 1 << 16
MAX_KEY = 65_535  # bytes of a metadata key
MAX_STRING = 16 << 20  # bytes of one string value
MAX_ARRAY = 1 << 24  # elements of one array (token vocabularies are ~262k)
MAX_STRINGS = 1 << 20  # strings in all arrays together: bounds the time this check (and llama.cpp's) takes;
# real vocabularies hold far fewer (Gemma 3: 262k tokens; Llama 3: 128k tokens and 280k merges), and 8M empty
# tokens cost llama.cpp 44 s and 1.4 GB before it refused them
MAX_LAYERS = 512  # the installed llama.cpp's LLAMA_MAX_LAYERS: a block_count past it (or 0) aborts it
MAX_EXPERTS = 1024  # its LLAMA_MAX_EXPERTS (measured: 1,024 loads on, 1,025 aborts)
MAX_HPARAMS = 256  # `<arch>.block_count`-like keys kept until the architecture is known (a model has 1 of each)
SHORT = 64  # bytes of general.architecture and tokenizer.ggml.model kept (longer: llama.cpp knows no such name)
MAX_NAME = 63  # bytes of a tensor name: ggml's GGML_MAX_NAME (64) less its NUL
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
MAX_ALIGN = 1 << 16
DEFAULT_ALIGN = 32
CHUNK = 1 << 20  # bytes read at a time

STRING, ARRAY, UINT32, BOOL = 8, 9, 4, 7
SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type → bytes
INTS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}  # integer value type → format
HPARAM = re.compile(r"([^.]{1,64})\.(block_count|expert_count|expert_used_count)")
TOKEN_ID = re.compile(r"tokenizer\.ggml\.\w+_token_id")
VOCAB = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
# ggml type → (elements per block, bytes per block): the types of the llama.cpp this homemesh installs
# (llama-cpp-python 0.3.36's libggml, checked by tests/steps/test_gguf.py); removed types (4, 5, 31-33, 36-38)
# and unknown ones are refused
TYPES = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
         10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
         16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
         22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
         29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36), 41: (128, 18),
         42: (64, 18)}
INT64_MAX = (1 << 63) - 1
_U32, _U64, _ARRAY_HEAD = struct.Struct("<I"), struct.Struct("<Q"), struct.Struct("<IQ")


@dataclass(frozen=True)
class GgufLayout:
    """What a file that passed holds (for logs and tests)."""

    version: int
    tensors: int
    kvs: int
    alignment: int
    data_start: int


class _Reader:
    """Reads a file forward through a bounded buffer; every read and skip checked against the file's size."""

    def __init__(self, f, size: int, path: Path):
        self.f, self.size, self.path = f, size, path
        self.buf, self.at, self.base = b"", 0, 0  # buf holds the file's bytes from `base`; `at` indexes it

    @property
    def offset(self) -> int:
        return self.base + self.at

    def fail(self, what: str, offset: int | None = None) -> ModelFileError:
        where = self.offset if offset is None else offset
        return ModelFileError(f"{self.path} is not a well-formed GGUF model file: {what} (at byte {where:,})",
                              where)

    def _need(self, n: int, what: str) -> None:
        if self.offset + n > self.size:
            raise self.fail(f"{what}: {n:,} bytes needed, the file ends {self.size - self.offset:,} bytes on")
        if self.at + n > len(self.buf):
            self.buf = self.buf[self.at:] + self.f.read(max(n, CHUNK))
            self.base, self.at = self.offset, 0
            if len(self.buf) < n:
                raise self.fail(f"{what}: the file got shorter while it was read")

    def u32(self, what: str) -> int:
        return self._unpack(_U32, what)

    def u64(self, what: str) -> int:
        return self._unpack(_U64, what)

    def _unpack(self, fmt: struct.Struct, what: str) -> int:
        (v,) = self.peek(fmt, what)
        self.at += fmt.size
        return v

    def peek(self, fmt: struct.Struct, what: str) -> tuple:
        """The next bytes unpacked, not read past."""
        self._need(fmt.size, what)
        return fmt.unpack_from(self.buf, self.at)

    def take(self, n: int, what: str) -> bytes:
        """n bytes (n already checked against a small bound by the caller)."""
        self._need(n, what)
        out = self.buf[self.at:self.at + n]
        self.at += n
        return out

    def skip(self, n: int, what: str) -> None:
        if n > self.size - self.offset:
            raise self.fail(f"{what}: {n:,} bytes declared, the file ends {self.size - self.offset:,} bytes on")
        if self.at + n <= len(self.buf):
            self.at += n
            return
        self.base, self.buf, self.at = self.offset + n, b"", 0
        self.f.seek(self.base)

    def string(self, bound: int, what: str) -> int:
        """A string's length, checked against `bound` and the file, its bytes skipped."""
        at = self.offset
        n = self.u64(f"{what}'s length")
        if n > bound:
            raise self.fail(f"{what} is {n:,} bytes long, over the bound of {bound:,}", at)
        self.skip(n, what)
        return n

    def strings(self, n: int, bound: int, what: str, byte_tokens: bytearray | None = None) -> None:
        """n strings skipped, each checked as string() does: in the buffer without a call per string (a
        vocabulary of 262k tokens took 290 ms through string(), most of the time of this whole check).
        With `byte_tokens`, the bytes a string of 1 byte or '<0xXX>' stands for are marked in it."""
        j, short = 0, (1, 6) if byte_tokens is not None else ()
        while j < n:
            buf, at, end, unpack = self.buf, self.at, len(self.buf), _U64.unpack_from
            while j < n and at + 8 <= end:
                (k,) = unpack(buf, at)
                if k > bound or at + 8 + k > end:
                    break  # (said, or read on, by string() below)
                if k in short:
                    _byte_token(buf[at + 8:at + 8 + k], byte_tokens)
                at += 8 + k
                j += 1
            self.at = at
            if j < n:
                if short and self.peek(_U64, f"{what}[{j}]'s length")[0] in short:
                    k = self.u64(f"{what}[{j}]'s length")
                    _byte_token(self.take(k, f"{what}[{j}]"), byte_tokens)
                else:
                    self.string(bound, f"{what}[{j}]")
                j += 1

    def number(self, vtype: int, what: str) -> int:
        """An integer value of type `vtype` (one of INTS)."""
        fmt = INTS[vtype]
        (v,) = struct.unpack(fmt, self.take(struct.calcsize(fmt), what))
        return v

    def text(self, bound: int, what: str) -> str:
        """A short string (a key, a tensor name): 1 to `bound` bytes of UTF-8."""
        at = self.offset
        n = self.u64(f"{what}'s length")
        if not 1 <= n <= bound:
            raise self.fail(f"{what} is {n:,} bytes long, not 1 to {bound:,}", at)
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8", at) from None


def check_gguf(path: Path) -> GgufLayout:
    """Check the GGUF file at `path` (see the module's docstring); ModelFileError says what is wrong where."""
    path = Path(path)
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        r = _Reader(f, size, path)
        if (r.take(4, "the magic") if size >= 4 else b"") != MAGIC:
            raise r.fail("no GGUF magic", 0)
        version = r.u32("the version")
        if version not in VERSIONS:
            raise r.fail(f"version {version} (this homemesh reads versions 2 and 3, little-endian)", 4)
        n_tensors = _count(r, MAX_TENSORS, 33, "tensors")  # (the least a tensor's info takes)
        n_kvs = _count(r, MAX_KVS, 13, "metadata keys")  # (the least a key and a value take)
        alignment = _metadata(r, n_kvs)
        names: set[str] = set()
        tensors = [_tensor(r, alignment, names) for _ in range(n_tensors)]
        data_start = -(-r.offset // alignment) * alignment
        _placed(r, tensors, data_start)
        return GgufLayout(version, n_tensors, n_kvs, alignment, data_start)


def _count(r: _Reader, bound: int, least: int, what: str) -> int:
    at = r.offset
    n = r.u64(f"the number of {what}")
    if n > bound or n * least > r.size - r.offset:
        raise r.fail(f"{n:,} {what} declared (at most {bound:,}, and what is left of the file holds fewer)", at)
    return n


def _byte_token(text: bytes, seen: bytearray) -> None:
    """Marks the byte a vocabulary token stands for in llama.cpp's SPM byte fallback: '<0xXX>' or the byte."""
    if len(text) == 1:
        seen[text[0]] = 1
    elif text[:3] == b"<0x" and text[5:] == b">" and all(c in b"0123456789ABCDEF" for c in text[3:5]):
        seen[int(text[3:5], 16)] = 1


class _Meta:
    """The values llama.cpp asserts on rather than checks, kept while the keys are read (bounded: a few small
    integers and two short strings), judged at the end (keys come in any order)."""

    def __init__(self) -> None:
        self.strings = 0  # in all arrays together
        self.short: dict[str, str] = {}  # general.architecture, tokenizer.ggml.model
        self.hparams: dict[tuple[str, str], tuple[int, int]] = {}  # (arch, what) → (value, where)
        self.vocab: dict[str, tuple[int, int]] = {}  # VOCAB key → (length, where)
        self.token_id: tuple[int, str, int] | None = None  # the *_token_id furthest out: (id, key, where)
        self.byte_tokens = bytearray(256)  # bytes the token list has a fallback token for

    def judge(self, r: _Reader) -> None:
        arch = self.short.get("general.architecture")
        count = self.hparams.get((arch, "expert_count"), (0, 0))
        used = self.hparams.get((arch, "expert_used_count"), (0, count[1]))
        if used[0] > count[0] or (count[0] and not used[0]):
            raise r.fail(f"{arch}.expert_used_count is {used[0]:,} of {arch}.expert_count {count[0]:,} experts "
                         "(llama.cpp aborts unless 1 to all of them are used, or none of none)", used[1])
        lengths = {n for n, _ in self.vocab.values()}
        if len(lengths) > 1:
            key = max(self.vocab, key=lambda k: self.vocab[k][1])
            said = ", ".join(f"{k.rsplit('.', 1)[1]}: {n:,}" for k, (n, _) in self.vocab.items())
            raise r.fail(f"the vocabulary's arrays differ in length ({said})", self.vocab[key][1])
        if "tokenizer.ggml.tokens" not in self.vocab:
            return
        n_vocab, where = self.vocab["tokenizer.ggml.tokens"]
        if self.token_id is not None and not 0 <= self.token_id[0] < n_vocab:
            raise r.fail(f"{self.token_id[1]} is {self.token_id[0]:,}, past the vocabulary's {n_vocab:,} tokens",
                         self.token_id[2])
        if self.short.get("tokenizer.ggml.model") == "llama" and not all(self.byte_tokens):
            b = self.byte_tokens.index(0)
            raise r.fail(f"the SPM ('llama') vocabulary has no token for byte 0x{b:02X} ('<0x{b:02X}>' or the byte "
                         "itself): llama.cpp throws, uncaught, at the first text that needs it", where)


def _far(token_id: int) -> int:
    return token_id if token_id >= 0 else 1 << 64  # (a negative id is as bad as any past the vocabulary)


def _metadata(r: _Reader, n_kvs: int) -> int:
    """Every key and value checked, values skipped (but those _Meta keeps); the file's alignment back."""
    seen: set[bytes] = set()
    alignment, meta = DEFAULT_ALIGN, _Meta()
    for i in range(n_kvs):
        at = r.offset
        key = r.text(MAX_KEY, f"metadata key {i}")
        digest = hashlib.sha256(key.encode()).digest()  # (32 bytes a key held, whatever its length)
        if digest in seen:
            raise r.fail(f"metadata key {key[:80]!r} is repeated", at)
        seen.add(digest)
        vat = r.offset
        vtype = r.u32(f"the type of {key[:80]!r}")
        if key == "general.alignment":
            alignment = _alignment(r, vtype, vat)
        elif not _kept(r, key, vtype, vat, meta):
            _value(r, vtype, key[:80], vat, meta)
    meta.judge(r)
    return alignment


def _kept(r: _Reader, key: str, vtype: int, at: int, meta: _Meta) -> bool:
    """The value of `key` read and kept (or judged at once) if _Meta wants it; False: skip it as any other."""
    if key in ("general.architecture", "tokenizer.ggml.model") and vtype == STRING:
        (n,) = r.peek(_U64, f"the length of {key}")
        if n > SHORT:
            return False
        r.skip(8, key)
        meta.short[key] = r.take(n, key).decode("utf-8", "replace")
        return True
    hp = HPARAM.fullmatch(key)
    if hp and vtype == ARRAY and hp[2] == "expert_used_count":  # (per layer, in some llama.cpp versions)
        etype, n = r.peek(_ARRAY_HEAD, f"{key!r}'s element type and count")
        if etype not in INTS or not 1 <= n <= MAX_LAYERS:
            return False
        r.skip(12, key)
        value = max(r.number(etype, f"{key!r}'s elements") for _ in range(n))
    elif (hp or TOKEN_ID.fullmatch(key)) and vtype in INTS:
        value = r.number(vtype, f"{key!r}'s value")
    elif key in VOCAB and vtype == ARRAY:
        _array(r, key, meta)
        return True
    else:
        return False
    if not hp:
        if meta.token_id is None or _far(value) > _far(meta.token_id[0]):
            meta.token_id = (value, key, at + 4)
        return True
    arch, what = hp[1], hp[2]
    bound = MAX_LAYERS if what == "block_count" else MAX_EXPERTS
    if not (1 if what == "block_count" else 0) <= value <= bound:
        raise r.fail(f"{key} is {value:,}, not {1 if what == 'block_count' else 0} to {bound:,} (llama.cpp "
                     "aborts past its bound)", at + 4)
    if len(meta.hparams) >= MAX_HPARAMS:
        raise r.fail(f"more than {MAX_HPARAMS} keys of architectures' layer and expert counts", at)
    meta.hparams[arch, what] = (value, at + 4)
    return True


def _alignment(r: _Reader, vtype: int, at: int) -> int:
    if vtype != UINT32:
        raise r.fail(f"general.alignment is of type {vtype}, not uint32", at)
    value = r.u32("general.alignment")
    if value < 1 or value > MAX_ALIGN or value & (value - 1):
        raise r.fail(f"general.alignment is {value:,}, not a power of two up to {MAX_ALIGN:,}", at + 4)
    return value


def _value(r: _Reader, vtype: int, key: str, at: int, meta: _Meta) -> None:
    if vtype in SCALARS:
        if vtype == BOOL and r.take(1, f"{key!r}'s value")[0] > 1:
            raise r.fail(f"{key!r} is a bool that is neither 0 nor 1", at + 4)
        if vtype != BOOL:
            r.skip(SCALARS[vtype], f"{key!r}'s value")
    elif vtype == STRING:
        r.string(MAX_STRING, f"the value of {key!r}")
    elif vtype == ARRAY:
        _array(r, key, meta)
    else:
        raise r.fail(f"{key!r} has an unknown value type {vtype}", at)


def _array(r: _Reader, key: str, meta: _Meta) -> None:
    at = r.offset
    etype = r.u32(f"{key!r}'s element type")
    n = r.u64(f"{key!r}'s element count")
    if etype == ARRAY:
        raise r.fail(f"{key!r} is an array of arrays (llama.cpp reads none)", at)
    if etype not in SCALARS and etype != STRING:
        raise r.fail(f"{key!r} is an array of unknown element type {etype}", at)
    least = SCALARS.get(etype, 8)  # (a string takes its 8-byte length at least)
    if n > MAX_ARRAY or n * least > r.size - r.offset:
        raise r.fail(f"{key!r} declares {n:,} elements (at most {MAX_ARRAY:,}, and what is left of the file "
                     "holds fewer)", at + 4)
    if key in VOCAB:
        meta.vocab[key] = (n, at + 4)
    if etype != STRING:
        r.skip(n * least, f"{key!r}'s elements")
        return
    meta.strings += n
    if meta.strings > MAX_STRINGS:
        raise r.fail(f"more than {MAX_STRINGS:,} strings in arrays", at + 4)
    r.strings(n, MAX_STRING, repr(key), meta.byte_tokens if key == "tokenizer.ggml.tokens" else None)


def _tensor(r: _Reader, alignment: int, names: set[str]) -> tuple[int, int, int, str]:
    """One tensor's info checked: (its offset in the data, its bytes, where its info is, its name)."""
    at = r.offset
    name = r.text(MAX_NAME, f"tensor {len(names)}'s name")
    if name in names:
        raise r.fail(f"tensor {name!r} is named twice", at)
    names.add(name)
    n_dims = r.u32(f"tensor {name!r}'s n_dims")
    if not 1 <= n_dims <= MAX_DIMS:
        raise r.fail(f"tensor {name!r} has {n_dims:,} dimensions, not 1 to {MAX_DIMS}", r.offset - 4)
    dims = [r.u64(f"tensor {name!r}'s dimensions") for _ in range(n_dims)]
    elements = 1
    for d in dims:
        elements *= d
        if d < 1 or elements > INT64_MAX:
            raise r.fail(f"tensor {name!r} has dimensions {dims} (each at least 1, their product under 2^63)",
                         r.offset - 8 * n_dims)
    ggml_type = r.u32(f"tensor {name!r}'s type")
    if ggml_type not in TYPES:
        raise r.fail(f"tensor {name!r} is of unknown ggml type {ggml_type}", r.offset - 4)
    block, block_bytes = TYPES[ggml_type]
    if dims[0] % block:
        raise r.fail(f"tensor {name!r}'s rows of {dims[0]:,} are not whole blocks of {block}", r.offset - 4)
    offset = r.u64(f"tensor {name!r}'s offset")
    if offset % alignment:
        raise r.fail(f"tensor {name!r}'s offset {offset:,} is not a multiple of the alignment {alignment}",
                     r.offset - 8)
    return offset, elements // block * block_bytes, r.offset - 8, name


def _placed(r: _Reader, tensors: list[tuple[int, int, int, str]], data_start: int) -> None:
    """Each tensor's data inside the file, no two overlapping."""
    end = 0
    for offset, nbytes, at, name in sorted(tensors):
        if data_start + offset + nbytes > r.size:
            raise r.fail(f"tensor {name!r}'s {nbytes:,} bytes at data offset {offset:,} run past the end of the "
                         f"file ({r.size:,} bytes, data from byte {data_start:,})", at)
        if offset < end:
            raise r.fail(f"tensor {name!r}'s data at offset {offset:,} overlaps another tensor's (up to {end:,})",
                         at)
        end = offset + nbytes
