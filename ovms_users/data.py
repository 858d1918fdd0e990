"""Data generation: random tensors in every precision, PNG/JPEG images, strings, .npy rows.

Everything is vectorized numpy and driven by a ``numpy.random.Generator``, so a seed makes a
dataset reproducible. Images are generated at the size the caller asks for, with width and height
in their right places (the OVMS client swapped them), and encoded with Pillow.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ovms_users.errors import OptionError
from ovms_wire.dtypes import DType

__all__ = ["DataMethod", "parse_method", "random_tensor", "urandom_image", "xrandom_image", "encode_image",
           "image_blobs", "string_batch", "load_npy", "load_file_bytes", "SAMPLE_STRINGS"]

_PNG = re.compile(r"^png(\d*)(-random|-urandom)?$")
IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
SAMPLE_STRINGS = (
    "dog",
    "The quick brown fox jumps over the lazy dog.",
    "A benchmark client must not be what it measures; it should cost far less per request than the server it "
    "loads, and report numbers that mean the same thing whether one process sent them or forty.",
)


@dataclass(frozen=True)
class DataMethod:
    """One way of making an input's data, parsed from a ``--data`` item."""
    kind: str                  # random | png | xrandom | jpeg | string | npy | file
    blur: int = 1              # png: blur passes (png0 = pure noise)
    path: Path | None = None   # npy / file / string (text file, one string a line)

    @property
    def binary(self) -> bool:
        return self.kind in ("png", "xrandom", "jpeg", "file")

    @property
    def image(self) -> bool:
        return self.kind in ("png", "xrandom", "jpeg")


def parse_method(text: str) -> DataMethod:
    """The OVMS client's method names, plus file paths (.npy, .png, .jpg, .txt)."""
    t = text.strip()
    low = t.lower()
    if low in ("random", "urandom"):
        return DataMethod("random")
    m = _PNG.match(low)
    if m:
        return DataMethod("png", blur=int(m.group(1)) if m.group(1) else 1)
    if low in ("png-xrandom", "xrandom", "xrand"):
        return DataMethod("xrandom")
    if low in ("jpeg", "jpg", "vehicle-jpeg", "vehicle-jpg"):
        return DataMethod("jpeg")
    if low == "string":
        return DataMethod("string")
    path = Path(t)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return DataMethod("npy", path=path)
    if suffix in IMAGE_SUFFIXES:
        return DataMethod("file", path=path)
    if suffix == ".txt":
        return DataMethod("string", path=path)
    raise OptionError("--data", f"unknown data method {text!r}; use random, png, pngN, png-xrandom, jpeg, string, "
                                "or a path to a .npy, .png, .jpg or .txt file")


# ----------------------------------------------------------------------------- tensors

def _int_bounds(dtype: DType, lo: float, hi: float) -> tuple[int, int]:
    info = np.iinfo(dtype.numpy)
    a = max(int(np.ceil(lo)), int(info.min))
    b = min(int(np.floor(hi)), int(info.max))
    if a > b:
        raise OptionError("--min_value/--max_value", f"the range [{lo}, {hi}] holds no {dtype.name} value "
                                                     f"(its range is [{info.min}, {info.max}])")
    return a, b


def _float_bounds(dtype: DType, lo: float, hi: float) -> tuple[float, float]:
    """The lowest and highest values of ``dtype`` inside [lo, hi] (so a cast can never leave the range)."""
    np_type = dtype.numpy
    limit = float(np.finfo(np_type).max)
    a, b = max(lo, -limit), min(hi, limit)
    if a > b:
        raise OptionError("--min_value/--max_value", f"the range [{lo}, {hi}] holds no {dtype.name} value")
    a_d, b_d = np_type.type(a), np_type.type(b)   # the nearest values of the precision (|a|, |b| <= its max)
    if float(a_d) < a:
        a_d = np.nextafter(a_d, np_type.type(np.inf))
    if float(b_d) > b:
        b_d = np.nextafter(b_d, np_type.type(-np.inf))
    if a_d > b_d:   # [lo, hi] lies between two neighbouring values (e.g. 0.1 to 0.1 in FP32): the nearest one
        a_d = b_d = np_type.type(a / 2 + b / 2)
    return float(a_d) + 0.0, float(b_d) + 0.0   # + 0.0: -0.0 becomes 0.0 (numpy's uniform refuses [0.0, -0.0])


def random_tensor(rng: np.random.Generator, dtype: DType, shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
    """Uniform random values in [lo, hi], clipped to what ``dtype`` can hold (no wrap-around)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise OptionError("--min_value/--max_value", f"[{lo}, {hi}] is not a range of finite numbers")
    if lo > hi:
        raise OptionError("--min_value/--max_value", f"--min_value {lo} is above --max_value {hi}")
    if dtype.is_bytes:
        raise OptionError("--data", "random numbers cannot fill a BYTES input; use string, png, jpeg or a file")
    np_type = dtype.numpy
    if np_type.kind == "b":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np_type.kind == "f":
        a, b = _float_bounds(dtype, lo, hi)
        if np.isfinite(b - a):
            values = rng.uniform(a, b, size=shape)
        else:   # wider than float64 can subtract (FP64 near its limits): mix the ends instead
            u = rng.random(size=shape)
            values = a * (1.0 - u) + b * u
        return np.clip(values, a, b).astype(np_type)
    a, b = _int_bounds(dtype, lo, hi)
    return rng.integers(a, b, size=shape, endpoint=True, dtype=np_type)


# ------------------------------------------------------------------------------ images

def urandom_image(rng: np.random.Generator, height: int, width: int, channels: int = 3, blur: int = 1) -> np.ndarray:
    """Per-pixel noise, then ``blur`` passes of a 5-point cross average with wrap-around edges."""
    img = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint16)
    for _ in range(blur):
        img = (img + np.roll(img, 1, 0) + np.roll(img, -1, 0) + np.roll(img, 1, 1) + np.roll(img, -1, 1)) // 5
    return img.astype(np.uint8)


def xrandom_image(rng: np.random.Generator, height: int, width: int, channels: int = 3, seeds: int = 8,
                  lo: int = 0, hi: int = 255) -> np.ndarray:
    """A flat-colour Voronoi mosaic: each pixel takes the colour of its nearest of ``seeds`` points."""
    if seeds <= 0:
        raise OptionError("--xrand", f"needs at least one seed point, got {seeds}")
    ys = rng.integers(0, height, size=seeds)
    xs = rng.integers(0, width, size=seeds)
    pick = rng.integers(0, 4, size=(seeds, channels))          # 0: black, 1: full, 2-3: uniform in [lo, hi]
    colours = np.where(pick == 0, 0, np.where(pick == 1, 255, rng.integers(lo, hi + 1, size=(seeds, channels))))
    nearest = np.zeros((height, width), dtype=np.int64)
    best = np.full((height, width), np.iinfo(np.int64).max, dtype=np.int64)
    gy = np.arange(height, dtype=np.int64)[:, None]
    gx = np.arange(width, dtype=np.int64)[None, :]
    for k in range(seeds):   # one pass a seed keeps memory at H*W, even at 4k x 4k; first seed wins ties
        d = (gy - ys[k]) ** 2 + (gx - xs[k]) ** 2
        closer = d < best
        best = np.where(closer, d, best)
        nearest = np.where(closer, k, nearest)
    return colours[nearest].astype(np.uint8)


def encode_image(pixels: np.ndarray, fmt: str = "PNG", quality: int = 90) -> bytes:
    from PIL import Image

    mode = {1: "L", 3: "RGB", 4: "RGBA"}[pixels.shape[-1]]
    img = Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode=mode)
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB" if mode == "RGBA" else mode).save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def image_blobs(rng: np.random.Generator, method: DataMethod, count: int, height: int, width: int, channels: int,
                xrand: int = 8) -> list[bytes]:
    """``count`` distinct encoded images made by ``method``."""
    out = []
    for _ in range(count):
        if method.kind == "xrandom":
            pixels = xrandom_image(rng, height, width, channels, seeds=xrand)
        else:
            pixels = urandom_image(rng, height, width, channels, blur=method.blur if method.kind == "png" else 2)
        out.append(encode_image(pixels, "JPEG" if method.kind == "jpeg" else "PNG"))
    return out


# ------------------------------------------------------------------------ files, strings

def load_file_bytes(path: Path, option: str = "--data") -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OptionError(option, f"cannot read {path}: {exc.strerror}") from None
    if not data:
        raise OptionError(option, f"{path} is empty")
    return data


def check_image_file(path: Path) -> bytes:
    """The file's bytes, once Pillow has confirmed they are a PNG or JPEG image."""
    from PIL import Image, UnidentifiedImageError

    blob = load_file_bytes(path)
    try:
        with Image.open(io.BytesIO(blob)) as img:
            fmt = img.format
            img.verify()
    except UnidentifiedImageError:
        raise OptionError("--data", f"{path} is not a readable image (not a format Pillow knows); give a PNG or "
                                    "JPEG file") from None
    except (OSError, SyntaxError, ValueError) as exc:   # a known format, broken inside
        raise OptionError("--data", f"{path} is not a readable image ({exc}); give a PNG or JPEG file") from None
    if fmt not in ("PNG", "JPEG"):
        raise OptionError("--data", f"{path} is a {fmt} image; model servers take PNG or JPEG")
    return blob


def string_batch(rng: np.random.Generator, count: int, pool: tuple[str, ...] = SAMPLE_STRINGS) -> list[bytes]:
    picks = rng.integers(0, len(pool), size=count)
    return [pool[i].encode() for i in picks]


def load_strings(path: Path) -> tuple[str, ...]:
    text = load_file_bytes(path).decode("utf-8", errors="replace")
    lines = tuple(line for line in text.splitlines() if line)
    if not lines:
        raise OptionError("--data", f"{path} has no non-empty lines to send as strings")
    return lines


def load_npy(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise OptionError("--data", f"cannot read {path}: {exc.strerror or exc}") from None
    if magic != b"\x93NUMPY":   # np.load would try it as a pickle and say so
        raise OptionError("--data", f"{path} is not a readable .npy array (no .npy header); write it with "
                                    "numpy.save") from None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise OptionError("--data", f"{path} is not a readable .npy array ({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.ndim == 0:
        raise OptionError("--data", f"{path} holds no rows (a 0-dimensional array)")
    return arr
