"""grok.checkpoint.tensor_file: a file's arrays are located from its header, and blocks read byte-exactly."""

import builtins
import os
import pickle
from concurrent.futures import ThreadPoolExecutor

import ml_dtypes
import numpy as np
import pytest

from grok.checkpoint import loader, store as ckpt, stored_array, tensor_file
from grok.ops.quantization import QuantizedWeight8bit

PAGE = 4096  # tensor_file reads whole rows where a row of the block is shorter than this


class CountingFile:
    """A file that counts the bytes read through it (read, readline, readinto)."""

    def __init__(self, f, counter):
        self._f, self._counter = f, counter

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def _count(self, n):
        self._counter[0] += n
        return n

    def read(self, *args):
        data = self._f.read(*args)
        self._count(len(data))
        return data

    def readline(self, *args):
        data = self._f.readline(*args)
        self._count(len(data))
        return data

    def readinto(self, buffer):
        return self._count(self._f.readinto(buffer) or 0)


@pytest.fixture
def bytes_read(monkeypatch):
    """[n]: every byte the checkpoint reader reads from any file, counted where it is read (all
    its files are opened by grok.checkpoint.stored_array.open_regular)."""
    counter = [0]
    monkeypatch.setattr(stored_array, "open",
                        lambda *a, **k: CountingFile(builtins.open(*a, **k), counter),
                        raising=False)
    return counter


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory):
    """(path, array): an int8 [8, 64, 344] weight file, 176 KiB."""
    array = np.random.default_rng(0).integers(-127, 128, (8, 64, 344)).astype(np.int8)
    path = tmp_path_factory.mktemp("weights") / "tensor00000_000"
    tensor_file.write_tensor_file(path, array)
    return path, array


def test_locating_reads_the_header_only(weight_file, bytes_read):
    path, array = weight_file
    located = tensor_file.locate_tensor_file(path)
    assert (located.shape, located.dtype, located.fortran) == (array.shape, np.int8, False)
    assert 0 < bytes_read[0] < 1000 < array.nbytes
    assert os.path.getsize(path) - located.offset - array.nbytes < 100  # the payload, near the end
    with open(path, "rb") as f:
        f.seek(located.offset)
        assert f.read(array.nbytes) == array.tobytes()


@pytest.mark.parametrize("box, fraction", [
    ((slice(0, 4),), 1 / 2),                                   # 2 ways on the first axis
    ((slice(4, 8),), 1 / 2),
    ((slice(None), slice(16, 32)), 1 / 4),                      # rows of 16 * 344 bytes
    ((slice(2, 3), slice(8, 40), slice(0, 344)), 1 / 8 * 1 / 2),
])
def test_a_block_reads_only_its_bytes(weight_file, bytes_read, box, fraction):
    path, array = weight_file
    located = tensor_file.locate_tensor_file(path)
    bytes_read[0] = 0
    block = located.read(box)
    np.testing.assert_array_equal(block, array[box])
    assert bytes_read[0] == located.bytes_to_read(box) == array.nbytes * fraction


def test_a_block_of_short_rows_reads_whole_pages_at_most(weight_file, bytes_read):
    """4 ways on the last axis: 86-byte runs, each within one page anyway."""
    path, array = weight_file
    located = tensor_file.locate_tensor_file(path)
    box = (slice(None), slice(None), slice(86, 172))
    bytes_read[0] = 0
    np.testing.assert_array_equal(located.read(box), array[box])
    runs = array.shape[0] * array.shape[1]
    assert bytes_read[0] == located.bytes_to_read(box) <= array.nbytes / 4 + runs * PAGE


def test_a_block_of_long_rows_on_the_last_axis_is_exact(tmp_path, bytes_read):
    array = np.arange(4 * 16 * 4 * PAGE, dtype=np.int32).astype(np.int8).reshape(4, 16, 4 * PAGE)
    path = tmp_path / "t"
    tensor_file.write_tensor_file(path, array)
    located = tensor_file.locate_tensor_file(path)
    for shard in range(4):                                          # 4 ways on the last axis
        box = (slice(None), slice(None), slice(shard * PAGE, (shard + 1) * PAGE))
        bytes_read[0] = 0
        np.testing.assert_array_equal(located.read(box), array[box])
        assert bytes_read[0] == array.nbytes // 4


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_blocks_of_every_layout_and_dtype(tmp_path):
    rng = np.random.default_rng(1)
    cases = [rng.standard_normal((5, 6, 7)).astype(np.float32),
             rng.standard_normal((5, 6, 7)).astype(">f4"),
             np.asfortranarray(rng.standard_normal((5, 6, 7)).astype(np.float16)),
             rng.standard_normal((9, 3)).astype(ml_dtypes.bfloat16),
             rng.standard_normal(11).astype(np.float32)]
    path = tmp_path / "t"
    for array in cases:
        path.write_bytes(pickle.dumps(array, protocol=4))
        located = tensor_file.locate_tensor_file(path)
        for _ in range(20):
            box = tuple(slice(*sorted(rng.choice(n + 1, 2, replace=False))) for n in array.shape)
            np.testing.assert_array_equal(located.read(box), array[box])
            cast = np.empty(array[box].shape, np.float32)               # read_into casts
            located.read_into(cast, box)
            np.testing.assert_array_equal(cast, array[box].astype(np.float32))
        np.testing.assert_array_equal(tensor_file.read_tensor_file(path), array)


def test_blocks_of_a_quantized_weight(tmp_path):
    weight = np.arange(2 * 8 * 6, dtype=np.int8).reshape(2, 8, 6)
    scales = np.linspace(0.5, 2, 2 * 2 * 6).astype(ml_dtypes.bfloat16).reshape(2, 2, 6)
    tensor_file.write_tensor_file(tmp_path / "q", QuantizedWeight8bit(weight, scales))
    located = tensor_file.locate_tensor_file(tmp_path / "q")
    assert isinstance(located, QuantizedWeight8bit)
    assert located.weight.offset + weight.nbytes <= located.scales.offset
    np.testing.assert_array_equal(located.weight.read((slice(1, 2), slice(4, 8))), weight[1:, 4:])
    np.testing.assert_array_equal(located.scales.read((slice(None), slice(1, 2))).view(np.uint16),
                                  scales[:, 1:2].view(np.uint16))


def test_a_truncated_payload_is_found_when_locating(weight_file, tmp_path):
    path, _ = weight_file
    cut = tmp_path / "cut"
    cut.write_bytes(path.read_bytes()[:-2000])
    with pytest.raises(ckpt.CheckpointError, match=r"cut \(tensor 7\): truncated or corrupt "
                                                   r"\(a 176128-byte payload"):
        tensor_file.locate_tensor_file(cut, "tensor 7")


def test_a_file_shortened_after_locating_fails_to_read(weight_file, tmp_path):
    path, _ = weight_file
    copy = tmp_path / "copy"
    copy.write_bytes(path.read_bytes())
    located = tensor_file.locate_tensor_file(copy, "tensor 7: x/w")
    os.truncate(copy, located.offset + 1000)
    with pytest.raises(ckpt.CheckpointError, match=r"copy \(tensor 7: x/w\): truncated"):
        located.read()


def test_blocks_must_be_slices(weight_file):
    located = tensor_file.locate_tensor_file(weight_file[0])
    with pytest.raises(ValueError, match="step-1 slices"):
        located.read((slice(0, 8, 2),))
    with pytest.raises(ValueError, match="buffer"):
        located.read_into(np.empty((8, 64, 343), np.int8))


# --- the loader reads each process's block once ---------------------------------------------

def tiny_config(num_layers):
    from grok.config import LanguageModelConfig, TransformerConfig
    return LanguageModelConfig(model=TransformerConfig(
        emb_size=32, key_size=8, num_q_heads=4, num_kv_heads=2, num_layers=num_layers,
        num_experts=4, num_selected_experts=2), vocab_size=256, sequence_len=64)


class HalfOnThisProcess:
    """A sharding stand-in whose process holds the shards of the first half of axis 0."""

    def addressable_devices_indices_map(self, shape):
        half = shape[0] // 2
        return {device: (slice(start, start + half // 2), *(slice(None),) * (len(shape) - 1))
                for device, start in (("d0", 0), ("d1", half // 2))}


def test_the_process_block_bounds_its_devices_shards():
    assert loader._process_block((8, 6), HalfOnThisProcess()) == (slice(0, 4), slice(0, 6))


def test_a_stacked_leaf_block_reads_each_layer_files_part(tmp_path, bytes_read):
    config = tiny_config(num_layers=4)
    tensors = ckpt.quantize_tensors(ckpt.random_tensors(config, seed=2), config)
    ckpt_dir = ckpt.save_checkpoint(tensors, tmp_path, config)
    host = ckpt.stack_params(tensors, config)["transformer/decoder_layer/moe/linear"]["w"]
    with ThreadPoolExecutor(2) as pool:
        leaf = loader._locate(ckpt_dir, ckpt.checkpoint_layout(config), pool)[
            ("transformer/decoder_layer/moe/linear", "w")]
        box = (slice(1, 3), slice(2, 4), slice(None), slice(0, 176))       # [L, E, D, F]
        bytes_read[0], counted = 0, []
        block = loader._read_leaf_block(leaf.weight, box, pool, counted.append)
    np.testing.assert_array_equal(block, host.weight[box])
    assert bytes_read[0] == sum(counted) == block.nbytes == host.weight.nbytes // 4


def test_loading_on_a_mesh_reads_each_payload_byte_once(tmp_path, bytes_read):
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    config = tiny_config(num_layers=2)
    tensors = ckpt.quantize_tensors(ckpt.random_tensors(config, seed=3), config)
    ckpt_dir = ckpt.save_checkpoint(tensors, tmp_path, config)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    host = ckpt.stack_params(tensors, config)
    shardings = jax.tree.map(lambda x: NamedSharding(mesh, P(*[None] * (x.ndim - 1), "model")
                                                     if x.shape[-1] % 4 == 0 else P()), host)
    params = ckpt.load_checkpoint(tmp_path, config, shardings, progress=False)
    payload = sum(x.nbytes for x in jax.tree.leaves(tensors))
    headers = sum(os.path.getsize(os.path.join(ckpt_dir, n)) for n in os.listdir(ckpt_dir))
    assert payload <= bytes_read[0] <= headers            # 8 devices, yet every byte read once
    for loaded, expected in zip(jax.tree.leaves(params), jax.tree.leaves(host)):
        np.testing.assert_array_equal(np.asarray(loaded).view(np.uint8), expected.view(np.uint8))


# --- offsets re-checked where bytes are read; regular files only (issue 8, items 1 and 7) ----

@pytest.mark.parametrize("offset, words", [
    (-1, "corrupt array location"), ("0", "corrupt array location"),
    (True, "corrupt array location"), (2 ** 62, "runs past the end"),
])
def test_a_located_array_is_rechecked_where_it_is_read(weight_file, offset, words):
    """Whoever built the description, reading checks offset and length against the file."""
    import dataclasses
    located = dataclasses.replace(tensor_file.locate_tensor_file(weight_file[0]), offset=offset,
                                  what="tensor 7: w")
    for read in (located.read, lambda: located.read_into(np.empty(located.shape, np.int8))):
        with pytest.raises(ckpt.CheckpointError) as info:
            read()
        assert f"{weight_file[0]} (tensor 7: w)" in str(info.value) and words in str(info.value)


def test_a_small_file_cannot_claim_terabytes(weight_file):
    import dataclasses
    located = dataclasses.replace(tensor_file.locate_tensor_file(weight_file[0]),
                                  shape=(2 ** 20, 2 ** 22))                  # 4 TiB of int8
    with pytest.raises(ckpt.CheckpointError, match="4398046511104-byte array"):
        located.read()                                                  # before allocating


def make_fifo(path):
    os.mkfifo(path)
    return "a FIFO"


def make_directory(path):
    os.mkdir(path)
    return "a directory"


def make_dev_zero_link(path):
    os.symlink("/dev/zero", path)
    return "a symlink to /dev/zero (a character device)"


def make_dangling_link(path):
    os.symlink(str(path) + ".absent", path)
    return "which is missing"


@pytest.fixture
def no_hang():
    """Fails a test that blocks for HANG_SECONDS (e.g. opening a FIFO that has no writer)."""
    import signal

    def hung(*_):
        raise TimeoutError("blocked: opening a FIFO hangs")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_SECONDS)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


HANG_SECONDS = 20


@pytest.mark.parametrize("make", [make_fifo, make_directory, make_dev_zero_link,
                                  make_dangling_link])
def test_only_regular_files_are_read(tmp_path, no_hang, make):
    """A FIFO (opening it must not hang), a directory, a device: the message says what it is."""
    path = tmp_path / "tensor00003_000"
    what = make(path)
    with pytest.raises(ckpt.CheckpointError) as info:
        tensor_file.locate_tensor_file(path, "tensor 3: x/w")
    message = str(info.value)
    assert f"{path} (tensor 3: x/w)" in message and what in message, message
    if make is not make_dangling_link:
        assert "not a regular file" in message and "missing" not in message, message


def test_a_symlink_to_a_regular_file_is_read(weight_file, tmp_path):
    link = tmp_path / "link"
    os.symlink(weight_file[0], link)
    np.testing.assert_array_equal(tensor_file.read_tensor_file(link), weight_file[1])
