"""mesh.steps.gguf: a model file's GGUF structure checked before llama.cpp parses it (a stranger may name
and serve the file: llama.cpp's parser has overflowed its heap on malformed headers). The models that
come with homemesh pass; crafted files each fail with ModelFileError saying what and where, quickly and
without reading what they declare into memory; the registry and the model runner refuse them."""

from __future__ import annotations

import ctypes
import struct
import time
import tracemalloc
from pathlib import Path

import pytest

from mesh.errors import ConfigError, ModelFileError
from mesh.steps.gguf import TYPES, check_gguf
from mesh.steps.registry import Registry

from ..tinygguf import tiny_gguf

pytestmark = pytest.mark.timeout(60)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def s(b: bytes | str) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return u64(len(b)) + b


def kv_str(key: str, value: str) -> bytes:
    return s(key) + u32(8) + s(value)


def tensor(name: str, dims: list[int], ggml_type: int = 0, offset: int = 0) -> bytes:
    return s(name) + u32(len(dims)) + b"".join(u64(d) for d in dims) + u32(ggml_type) + u64(offset)


def gguf(kvs: list[bytes], tensors: list[bytes], data: int = 64, version: int = 3,
         counts: tuple[int, int] | None = None) -> bytes:
    """A GGUF file of these kvs and tensor infos, `data` zero bytes of tensor data after the aligned header."""
    n_t, n_kv = counts or (len(tensors), len(kvs))
    head = b"GGUF" + u32(version) + u64(n_t) + u64(n_kv) + b"".join(kvs) + b"".join(tensors)
    return head + bytes(-len(head) % 32) + bytes(data)


GOOD_KVS = [kv_str("general.architecture", "llama"),
            s("tokenizer.ggml.tokens") + u32(9) + u32(8) + u64(3) + s("a") + s("bc") + s(""),
            s("tokenizer.ggml.scores") + u32(9) + u32(6) + u64(3) + bytes(12),
            s("general.flag") + u32(7) + b"\x01"]
GOOD_TENSORS = [tensor("a", [8]), tensor("b", [4, 2], 0, 32)]  # 32 bytes each, back to back


def write(tmp_path: Path, data: bytes, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_a_crafted_well_formed_file_and_a_tiny_model_pass(tmp_path):
    layout = check_gguf(write(tmp_path, gguf(GOOD_KVS, GOOD_TENSORS)))
    assert (layout.version, layout.tensors, layout.kvs, layout.alignment) == (3, 2, 4, 32)
    tiny_gguf(tmp_path / "tiny.gguf", pad=1000)
    assert check_gguf(tmp_path / "tiny.gguf").tensors == 12


def test_the_models_that_come_with_homemesh_pass_in_little_time():
    from mesh.steps.models import default_model_sha, instruct_model_path

    paths = []
    if default_model_sha():
        from mesh.steps.models import default_model
        paths.append(default_model()[0])
    if instruct_model_path() is not None:
        paths.append(instruct_model_path())
    if not paths:
        pytest.skip("neither default model is installed")
    for path in paths:
        t0 = time.perf_counter()
        layout = check_gguf(path)
        assert layout.tensors > 100 and time.perf_counter() - t0 < 5.0, (path, layout)


BAD = {  # what a file is → (its bytes, what the error says, the byte it names)
    "a 2^60-byte string value": (gguf([s("general.name") + u32(8) + u64(1 << 60)], []), "over the bound", 24 + 20 + 4),
    "a 2^60-byte key": (gguf([u64(1 << 60)], []), "not 1 to 65,535", 24),
    "a key not UTF-8": (gguf([s(b"\xff\xfe") + u32(4) + u32(1)], []), "not UTF-8", 24),
    "a key repeated": (gguf([kv_str("k", "v"), kv_str("k", "w")], []), "repeated", 24 + 22),
    "an unknown value type": (gguf([s("k") + u32(13) + u32(0)], []), "unknown value type 13", 33),
    "a bool of 2": (gguf([s("k") + u32(7) + b"\x02"], []), "neither 0 nor 1", 37),
    "an array count past the file": (gguf([s("k") + u32(9) + u32(6) + u64(1000)], []), "1,000 elements", 41),
    "an array count over 2^24": (gguf([s("k") + u32(9) + u32(0) + u64((1 << 24) + 1)], []), "16,777,217", 41),
    "an array of arrays": (gguf([s("k") + u32(9) + u32(9) + u64(1)], []), "array of arrays", 37),
    "a string in an array past the file": (gguf([s("k") + u32(9) + u32(8) + u64(2) + s("ab") + u64(1 << 40)], [],
                                                data=0), "over the bound", 59),
    "n_dims 9": (gguf([], [tensor("t", [1] * 9)]), "9 dimensions", 33),
    "n_dims 0": (gguf([], [tensor("t", [])]), "0 dimensions", 33),
    "a dimension of 0": (gguf([], [tensor("t", [8, 0])]), "each at least 1", 37),
    "elements past 2^63": (gguf([], [tensor("t", [1 << 32, 1 << 32])]), "under 2^63", 37),
    "an unknown tensor type": (gguf([], [tensor("t", [8], 99)]), "unknown ggml type 99", 45),
    "a removed tensor type": (gguf([], [tensor("t", [32], 4)]), "unknown ggml type 4", 45),
    "rows not whole blocks": (gguf([], [tensor("t", [16], 2)]), "not whole blocks", 45),
    "a tensor name of 64 bytes": (gguf([], [tensor("t" * 64, [8])]), "not 1 to 63", 24),
    "a tensor named twice": (gguf([], [tensor("t", [8]), tensor("t", [8], 0, 32)]), "named twice", 57),
    "tensor data past the end": (gguf([], [tensor("t", [8])], data=31), "run past the end", 49),
    "a tensor offset past the end": (gguf([], [tensor("t", [8], 0, 1 << 62)]), "run past the end", 49),
    "overlapping tensors": (gguf([], [tensor("a", [16]), tensor("b", [8], 0, 32)], data=96), "overlaps", 82),
    "a misaligned offset": (gguf([], [tensor("t", [8], 0, 4)]), "not a multiple of the alignment 32", 49),
    "an alignment of 48": (gguf([s("general.alignment") + u32(4) + u32(48)], []), "not a power of two", 53),
    "an alignment of 0": (gguf([s("general.alignment") + u32(4) + u32(0)], []), "not a power of two", 53),
    "an alignment of 2^17": (gguf([s("general.alignment") + u32(4) + u32(1 << 17)], []), "not a power", 53),
    "an alignment not uint32": (gguf([s("general.alignment") + u32(10) + u64(32)], []), "not uint32", 49),
    "2^40 tensors": (gguf([], [], counts=(1 << 40, 0)), "1,099,511,627,776 tensors", 8),
    "more kvs than the file holds": (gguf([], [], counts=(0, 100)), "100 metadata keys", 16),
    "version 1": (gguf([], [], version=1), "version 1 ", 4),
    "a big-endian file": (gguf([], [], version=3 << 24), "version 50331648", 4),
    "no magic": (b"GGML" + bytes(60), "no GGUF magic", 0),
}


@pytest.mark.parametrize("what", list(BAD))
def test_a_malformed_file_is_refused_saying_what_and_where(tmp_path, what):
    data, says, where = BAD[what]
    path = write(tmp_path, data)
    with pytest.raises(ModelFileError, match="not a well-formed GGUF model file") as err:
        check_gguf(path)
    assert says in str(err.value) and err.value.offset == where, (str(err.value), err.value.offset)
    assert f"at byte {where:,}" in str(err.value) and str(path) in str(err.value)


def test_every_cut_of_a_header_is_refused_as_truncated(tmp_path):
    whole = gguf(GOOD_KVS, GOOD_TENSORS)
    check_gguf(write(tmp_path, whole))
    for n in range(len(whole)):  # (a cut in the tensor data is tensor data past the end)
        with pytest.raises(ModelFileError):
            check_gguf(write(tmp_path, whole[:n]))


def test_a_declared_huge_length_is_refused_at_once_without_being_allocated(tmp_path):
    """A header declaring a 2^60-byte string, a 2^20-element array of strings, and a tensor of 2^62 bytes:
    refused quickly, the check's memory never near what is declared."""
    cases = [BAD["a 2^60-byte string value"][0], BAD["a 2^60-byte key"][0], BAD["a tensor offset past the end"][0],
             gguf([s("k") + u32(9) + u32(8) + u64(1 << 20)], [], data=(1 << 20) * 8 - 64)]
    for i, data in enumerate(cases):
        path = write(tmp_path, data, f"{i}.gguf")
        tracemalloc.start()
        t0 = time.perf_counter()
        with pytest.raises(ModelFileError):
            check_gguf(path)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 4 << 20 and (seconds < 0.1 or i == 3), (i, peak, seconds)


def test_the_type_table_is_the_installed_llama_cpps():
    """Block sizes and bytes per block as the libggml this homemesh loads models with has them."""
    llama_cpp = pytest.importorskip("llama_cpp")
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_blck_size.restype, lib.ggml_type_size.restype = ctypes.c_int64, ctypes.c_size_t
    known = {t: (lib.ggml_blck_size(t), lib.ggml_type_size(t)) for t in range(llama_cpp.GGML_TYPE_COUNT)}
    assert TYPES == {t: v for t, v in known.items() if v[0] > 0}


def test_the_registry_and_the_model_runner_refuse_a_malformed_file(tmp_path):
    path = write(tmp_path, BAD["n_dims 9"][0], "evil.gguf")
    with pytest.raises(ConfigError, match="9 dimensions"):
        Registry(tmp_path / "home").add(path)
    assert not (tmp_path / "home" / "models.json").exists()
    pytest.importorskip("llama_cpp")
    from mesh.steps.llm import Model

    with pytest.raises(ModelFileError, match="9 dimensions"):  # (llama.cpp never sees it)
        Model(path, "0" * 64)


def kv_u32(key: str, value: int) -> bytes:
    return s(key) + u32(4) + u32(value)


def vocab(tokens: list[bytes], model: str = "llama", types: int | None = None) -> list[bytes]:
    """An SPM vocabulary of these tokens: its model, tokens, scores and types (`types` of them)."""
    n = len(tokens)
    types = n if types is None else types
    return [kv_str("tokenizer.ggml.model", model),
            s("tokenizer.ggml.tokens") + u32(9) + u32(8) + u64(n) + b"".join(s(t) for t in tokens),
            s("tokenizer.ggml.scores") + u32(9) + u32(6) + u64(n) + bytes(4 * n),
            s("tokenizer.ggml.token_type") + u32(9) + u32(5) + u64(types) + bytes(4 * types)]


BYTES = [b"<unk>", b"<s>", b"</s>"] + [f"<0x{i:02X}>".encode() for i in range(256)]  # SPM byte fallback
ARCH = [kv_str("general.architecture", "llama")]
ABORTS = {  # what llama.cpp asserts on (an abort of the model runner) or throws uncaught on → what the error says
    "513 layers": (ARCH + [kv_u32("llama.block_count", 513)] + vocab(BYTES), "llama.block_count is 513, not 1 to 512"),
    "0 layers": ([kv_u32("llama.block_count", 0)] + ARCH, "llama.block_count is 0, not 1 to 512"),
    "1,025 experts": (ARCH + [kv_u32("llama.expert_count", 1025)], "llama.expert_count is 1,025, not 0 to 1,024"),
    "100,000 experts used": ([kv_u32("x.expert_used_count", 100_000)], "not 0 to 1,024"),
    "more experts used than there are": ([kv_u32("llama.expert_used_count", 9), kv_u32("llama.expert_count", 4)]
                                         + ARCH, "expert_used_count is 9 of llama.expert_count 4 experts"),
    "experts, none used": (ARCH + [kv_u32("llama.expert_count", 4)], "expert_used_count is 0 of"),
    "experts used of none (per layer)": (ARCH + [s("llama.expert_used_count") + u32(9) + u32(4) + u64(2) + u32(0)
                                                 + u32(2)], "expert_used_count is 2 of llama.expert_count 0"),
    "a bos id past the vocabulary": ([kv_u32("tokenizer.ggml.bos_token_id", 259)] + vocab(BYTES),
                                     "bos_token_id is 259, past the vocabulary's 259 tokens"),
    "a padding id past the vocabulary": (vocab(BYTES) + [kv_u32("tokenizer.ggml.padding_token_id", 1 << 31)],
                                         "padding_token_id is 2,147,483,648, past"),
    "token types fewer than tokens": (vocab(BYTES, types=1), "arrays differ in length (tokens: 259, scores: 259, "
                                                             "token_type: 1)"),
    "an SPM vocabulary without byte fallback": (vocab([b"t0", b"t1", b"\xe2"] + BYTES[3 + 1:3 + 0xE2]),
                                                "no token for byte 0x00"),
    "an SPM vocabulary missing one byte": (vocab(BYTES[:3 + 0x41] + [b"B"] + BYTES[3 + 0x43:]),
                                           "no token for byte 0x41"),
}


@pytest.mark.parametrize("what", list(ABORTS))
def test_a_value_llama_cpp_would_abort_on_is_refused(tmp_path, what):
    kvs, says = ABORTS[what]
    path = write(tmp_path, gguf(kvs, GOOD_TENSORS))
    with pytest.raises(ModelFileError, match="not a well-formed GGUF model file") as err:
        check_gguf(path)
    assert says in str(err.value) and 24 <= err.value.offset < path.stat().st_size, str(err.value)


def test_values_at_llama_cpps_bounds_pass(tmp_path):
    """The most layers and experts it takes, per-layer expert counts, the bytes as themselves or as <0xXX>, and
    ids, lengths and keys it ignores (another architecture's experts, a long architecture name, a BPE vocabulary
    without byte tokens)."""
    as_bytes = BYTES[:3] + [bytes([b]) if b % 2 else f"<0x{b:02X}>".encode() for b in range(256)]
    cases = [ARCH + [kv_u32("llama.block_count", 512), kv_u32("llama.expert_count", 1024),
                     kv_u32("llama.expert_used_count", 1024), kv_u32("tokenizer.ggml.eos_token_id", 258)]
             + vocab(as_bytes),
             [kv_u32("llama.expert_count", 8), s("llama.expert_used_count") + u32(9) + u32(4) + u64(2) + u32(2) + u32(8),
              kv_u32("qwen2moe.expert_used_count", 2)] + ARCH,
             [kv_str("general.architecture", "a" * 65), kv_u32("tokenizer.ggml.bos_token_id", 1)] + vocab(BYTES),
             vocab([b"a", b"b"], model="gpt2") + [kv_u32("tokenizer.ggml.unknown_token_id", 1)]]
    for i, kvs in enumerate(cases):
        assert check_gguf(write(tmp_path, gguf(kvs, GOOD_TENSORS), f"{i}.gguf")).tensors == 2


def test_eight_million_empty_strings_are_refused_at_once(tmp_path):
    """64 MB of empty vocabulary strings cost llama.cpp 44 s and 1.4 GB before it refused them: refused here
    at their count, before one is read."""
    for key in ("tokenizer.ggml.tokens", "x.junk"):
        path = write(tmp_path, gguf([s(key) + u32(9) + u32(8) + u64(8_000_000) + u64(0) * 8_000_000], []))
        t0 = time.perf_counter()
        with pytest.raises(ModelFileError, match="more than 1,048,576 strings"):
            check_gguf(path)
        assert time.perf_counter() - t0 < 1.0


def test_the_registry_neither_hashes_nor_checks_again_a_file_its_caller_did(tmp_path, monkeypatch):
    """A fetched model was hashed and checked by the fetch (modelshare._check_file): its install is not
    hashed and checked again (each held the node's event loop for seconds on a large model)."""
    import mesh.steps.registry as registry

    path = tiny_gguf(tmp_path / "tiny.gguf") and tmp_path / "tiny.gguf"
    sha = registry.sha256_file(path)

    def refuse(*_):
        raise AssertionError("done again")

    monkeypatch.setattr(registry, "sha256_file", refuse)
    monkeypatch.setattr(registry, "check_gguf", refuse)
    assert Registry(tmp_path / "home").add(path, "t", checked_sha=sha).sha256 == sha
    with pytest.raises(AssertionError, match="done again"):
        Registry(tmp_path / "home").add(path, "u")
