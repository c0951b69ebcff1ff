"""Resource limits (issue 8, point 5): bounded memory for large image sets, and out-of-memory errors that say
what to do. Decoding is mocked, so 100,000 "images" take seconds. Adding a command to the out-of-memory tests is
one more ``OOM_SITES`` entry (where its heavy work can be made to raise).
"""

from __future__ import annotations

import gc
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from shiftkit.cli import app
from shiftkit.data import cache as cache_module
from shiftkit.data.cache import ImageCache
from shiftkit.data.preprocess import Preprocessing
from shiftkit.data.table import ImageRecord, ImageTable
from shiftkit.data.validate import CacheOverflowWarning, decode_all

runner = CliRunner()
SIZE = 8  # crop of the mocked images: 1 x 8 x 8 uint8 = 64 bytes each


def _table(n: int) -> ImageTable:
    records = tuple(ImageRecord(path=Path(f"/nowhere/img{i:06d}.png"), labels=("a" if i % 2 else "b",))
                    for i in range(n))
    return ImageTable(records=records, classes=("a", "b"), source="synthetic")


class LiveImages:
    """Mocked decoder that counts how many decoded images are alive at once."""

    def __init__(self) -> None:
        self.alive = 0
        self.peak = 0
        self.decodes = 0

    def _gone(self) -> None:
        self.alive -= 1

    def decode(self, cache: ImageCache, path: Path) -> torch.Tensor:
        self.decodes += 1
        tensor = torch.full((1, SIZE, SIZE), len(path.name) % 255, dtype=torch.uint8)
        self.alive += 1
        self.peak = max(self.peak, self.alive)
        weakref.finalize(tensor, self._gone)
        return tensor


@pytest.fixture()
def live(monkeypatch) -> LiveImages:
    counter = LiveImages()
    monkeypatch.setattr(ImageCache, "_decode", lambda self, path: counter.decode(self, path))
    return counter


def test_the_image_cache_of_100000_images_stays_within_its_budget(live):
    budget = 1000 * SIZE * SIZE  # room for 1,000 of 100,000 images
    cache = ImageCache(Preprocessing(resize=SIZE, crop=SIZE), max_memory_bytes=budget)
    table = _table(100_000)
    with pytest.warns(CacheOverflowWarning, match="99000 image.*did not fit the in-memory image cache.*--cache-dir"):
        kept, skipped = decode_all(table, cache, threads=2)
    assert len(kept) == 100_000 and skipped == []
    assert live.decodes == 100_000
    assert cache.memory_bytes == budget and len(cache._memory) == 1000
    gc.collect()
    assert live.alive == 1000  # only the cached ones survive the pass
    # the cached share is served without decoding; the rest is decoded again when used
    first, last = table.records[0].path, table.records[-1].path
    cache.get(first)
    assert live.decodes == 100_000
    cache.get(last)
    assert live.decodes == 100_001


def test_a_zero_budget_keeps_nothing(live):
    cache = ImageCache(Preprocessing(resize=SIZE, crop=SIZE), max_memory_bytes=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deliberate zero budget is not "overflow"
        decode_all(_table(500), cache, threads=2)
    gc.collect()
    assert cache.memory_bytes == 0 and live.alive == 0


@pytest.mark.parametrize("value, expected", [("", 4 * 1024**3), ("0.5", 512 * 1024**2), ("lots", 4 * 1024**3)])
def test_the_default_budget_is_4_gib_or_the_environment_variable(monkeypatch, value, expected):
    monkeypatch.setenv("SHIFTKIT_CACHE_MEMORY_GB", value)
    assert cache_module.default_memory_bytes() == expected
    assert ImageCache(Preprocessing(resize=SIZE, crop=SIZE)).max_memory_bytes == expected


def _tiny_model():
    from shiftkit.models.registry import AdaptedModel

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 6), nn.Linear(6, 2))
    return AdaptedModel(arch="tiny", model=model, head_path="2", blocks=[("all", ["0", "1", "2"])],
                        preprocessing=Preprocessing(resize=SIZE, crop=SIZE), weights="none")


def test_embedding_streams_batches_and_keeps_no_image(live):
    """diagnose embeds in batches: at most one batch of decoded images is alive, whatever the set's size."""
    from shiftkit.features import extract

    table = _table(5_000)
    rep = extract(table, _tiny_model(), torch.device("cpu"), batch_size=64)
    assert rep.embeddings.shape == (5_000, 6) and np.isfinite(rep.embeddings).all()
    assert live.decodes == 5_000
    assert live.peak <= 2 * 64, f"{live.peak} decoded images were alive at once"


# -- out of memory: one line that names the option to change ------------------------------------------------------

FINETUNE = ["--arch", "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "1", "--device", "cpu"]
DIAGNOSE = ["--arch", "resnet18", "--weights", "none", "--image-size", "32", "--device", "cpu"]
# command -> (argv for (data, out), the function whose heavy work runs out of memory)
OOM_SITES = {
    "finetune": (lambda data, out: ["finetune", data, "--out", out, *FINETUNE], "shiftkit.finetune.trainer.Trainer.fit"),
    "diagnose": (lambda data, out: ["diagnose", data, data, "--out", out, *DIAGNOSE], "shiftkit.shift.diagnose.extract"),
}
ERRORS = {
    "torch.OutOfMemoryError": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "torch.cuda.OutOfMemoryError": lambda: torch.cuda.OutOfMemoryError("CUDA out of memory."),
    "RuntimeError out of memory": lambda: RuntimeError("CUDA error: out of memory"),
    "MemoryError": lambda: MemoryError(),
}


def _raiser(error):
    def raise_it(*args, **kwargs):
        raise error()
    return raise_it


@pytest.mark.parametrize("error", list(ERRORS))
@pytest.mark.parametrize("command", list(OOM_SITES))
def test_out_of_memory_suggests_a_smaller_batch(phantom_dir, tmp_path, monkeypatch, command, error):
    argv, site = OOM_SITES[command]
    monkeypatch.setattr(site, _raiser(ERRORS[error]))
    result = runner.invoke(app, [str(a) for a in argv(phantom_dir, tmp_path / "out")])
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "ran out of memory" in lines[0] and "--batch-size" in lines[0], lines[0]
    assert not list((tmp_path / "out").glob("*.json")) if (tmp_path / "out").exists() else True


def test_other_runtime_errors_keep_their_traceback(phantom_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("shiftkit.finetune.trainer.Trainer.fit", _raiser(lambda: RuntimeError("shape mismatch")))
    result = runner.invoke(app, ["finetune", str(phantom_dir), "--out", str(tmp_path / "out"), *FINETUNE])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)


def test_a_budget_too_small_changes_decoding_never_the_images(phantom_dir, monkeypatch):
    """Images beyond the budget are decoded again when used: identical tensors, more decodes."""
    from shiftkit.data import ImageDataset, load_table

    table = load_table(phantom_dir)
    preprocessing = Preprocessing(resize=32, crop=32)
    roomy = ImageDataset(table, ImageCache(preprocessing))
    monkeypatch.setenv("SHIFTKIT_CACHE_MEMORY_GB", str(10 * 32 * 32 / 1024**3))  # room for 10 of 36 images
    tight = ImageDataset(table, ImageCache(preprocessing))
    with pytest.warns(CacheOverflowWarning, match="26 image"):
        tight.warm()
    roomy.warm()
    for _ in range(2):  # two "epochs"
        for index in range(len(table)):
            assert torch.equal(roomy[index][0], tight[index][0])
    assert roomy.cache.decodes == 36 and tight.cache.decodes == 36 + 2 * 26
    assert tight.cache.memory_bytes == 10 * 32 * 32


# -- decompressed size (issue 13, item 8): the header's size is checked before a pixel is decoded -------------------

def _nifti_claiming(path: Path, dims: tuple[int, int, int]) -> Path:
    """A few-hundred-byte .nii.gz whose header announces ``dims`` uint8 voxels (its data is a 4^3 volume)."""
    import gzip
    import struct

    import SimpleITK as sitk

    plain = path.with_suffix("")  # x.nii
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 4, 4), np.uint8)), str(plain))
    header = bytearray(plain.read_bytes())
    header[40:48] = struct.pack("<4h", 3, *dims)  # dim[0..3]
    path.write_bytes(gzip.compress(bytes(header)))
    plain.unlink()
    return path


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header (IHDR) announces ``width x height`` RGB pixels, followed by a token of data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_a_volume_announcing_a_billion_voxels_is_refused_from_its_header(tmp_path, monkeypatch):
    import SimpleITK as sitk

    from shiftkit.data.readers import read_image
    from shiftkit.errors import ImageReadError

    monkeypatch.delenv("SHIFTKIT_MAX_IMAGE_GB", raising=False)
    bomb = _nifti_claiming(tmp_path / "bomb.nii.gz", (1000, 1000, 1000))
    assert bomb.stat().st_size < 2000
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", lambda self: pytest.fail("pixels read despite the header"))
    with pytest.raises(ImageReadError) as error:
        read_image(bomb)
    assert str(error.value) == (f"{bomb}: image is 1000x1000x1000 voxels, which would take 1.9 GB to decode, above "
                                "the limit of 1.0 GB per image (set SHIFTKIT_MAX_IMAGE_GB to raise it)")


def test_a_huge_png_is_refused_from_its_header_without_pillow_warnings(tmp_path, monkeypatch, recwarn):
    from shiftkit.data.readers import read_image
    from shiftkit.errors import ImageReadError

    monkeypatch.delenv("SHIFTKIT_MAX_IMAGE_GB", raising=False)
    big = _png_claiming(tmp_path / "big.png", 12000, 12000)
    with pytest.raises(ImageReadError, match=r"big.png: image is 12000x12000 pixels, which would take 2.0 GB to "
                                             r"decode, above the limit of 1.0 GB per image \(set SHIFTKIT_MAX_IMAGE_GB"):
        read_image(big)
    huge = _png_claiming(tmp_path / "huge.png", 40000, 40000)  # past Pillow's own (raised) limit too
    with pytest.raises(ImageReadError, match=r"huge.png: image has 1600000000 pixels, which would take at least "
                                             r"7.5 GB to decode, above the limit of 1.0 GB"):
        read_image(huge)
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__], [str(w) for w in recwarn]


def test_the_image_size_limit_is_the_environment_variable(tmp_path, monkeypatch):
    from PIL import Image

    from shiftkit.data.readers import read_image
    from shiftkit.errors import ConfigError, ImageReadError

    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(small)
    monkeypatch.setenv("SHIFTKIT_MAX_IMAGE_GB", str(15_000 / 1024**3))  # 15 kB: a 64^2 8-bit image needs 20 kB
    with pytest.raises(ImageReadError, match="small.png: image is 64x64 pixels, which would take 20 kB to decode, "
                                             "above the limit of 15 kB"):
        read_image(small)
    monkeypatch.setenv("SHIFTKIT_MAX_IMAGE_GB", "0")  # no limit
    assert read_image(small).shape == (64, 64)
    volume = _nifti_claiming(tmp_path / "volume.nii.gz", (40, 40, 40))  # 125 kB to decode
    with pytest.raises(ImageReadError, match="volume.nii.gz: image is 40x40x40 voxels, which would take 125 kB"):
        monkeypatch.setenv("SHIFTKIT_MAX_IMAGE_GB", str(100_000 / 1024**3))
        read_image(volume)
    monkeypatch.setenv("SHIFTKIT_MAX_IMAGE_GB", "lots")
    with pytest.raises(ConfigError, match="SHIFTKIT_MAX_IMAGE_GB='lots' must be a number of GB"):
        read_image(small)
