"""From model metadata and options to a dataset: what each input gets, and the requests' tensors.

A dataset is a list of entries; entry ``k`` has batch size ``bs[k mod len(bs)]``. Its length is
independent of how many requests the workload sends (requests cycle through the dataset).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ovms_users import data
from ovms_users.data import DataMethod
from ovms_users.errors import OptionError
from ovms_users.options import BenchOptions
from ovms_wire.dtypes import DType, by_name
from ovms_wire.spec import ModelSpec, TensorSpec

__all__ = ["InputPlan", "Entry", "plan_inputs", "build_dataset", "batch_sizes"]

log = logging.getLogger("ovms_users")
BYTES = by_name("BYTES")


@dataclass(frozen=True)
class InputPlan:
    spec: TensorSpec
    method: DataMethod
    shape: tuple[int, ...]                  # the tensor shape with the batch dimension first (value ignored)
    image_hwc: tuple[int, int, int] | None  # height, width, channels for image methods
    npy: np.ndarray | None = None
    strings: tuple[str, ...] = data.SAMPLE_STRINGS

    @property
    def wire_dtype(self) -> DType:
        return BYTES if self.method.binary or (self.method.kind == "string") else self.spec.dtype


@dataclass(frozen=True)
class Entry:
    batch_size: int
    inputs: dict[str, tuple[DType, np.ndarray]]


def _split_data_items(items: Sequence[str], spec: ModelSpec) -> tuple[str | None, dict[str, str]]:
    names = {s.name for s in spec.inputs}
    default: str | None = None
    per: dict[str, str] = {}
    for item in items:
        name, sep, method = item.partition(":")
        if sep and name in names:
            if name in per:
                raise OptionError("--data", f"input {name!r} is given twice")
            per[name] = method
            continue
        if sep and not item.lower().endswith((".npy", ".png", ".jpg", ".jpeg", ".txt")):
            raise OptionError("--data", f"{name!r} is not an input of model {spec.name} (its inputs: "
                                        f"{', '.join(sorted(names))})")
        if default is not None:
            raise OptionError("--data", f"two defaults ({default!r} and {item!r}); name the input of each, as "
                                        "NAME:METHOD")
        default = item
    return default, per


def _image_hwc(shape: tuple[int, ...], spec: TensorSpec, forced: bool) -> tuple[int, int, int]:
    dims = shape[1:]
    if len(dims) == 3:
        if dims[-1] in (1, 3, 4):
            h, w, c = dims            # NHWC
        elif dims[0] in (1, 3, 4):
            c, h, w = dims            # NCHW
        else:
            raise OptionError("--shape", f"input {spec.name}: cannot tell channels in {list(shape)}; give the image "
                                         f"as --shape '{spec.name}: 1 H W 3'")
        if min(h, w) > 0:
            return h, w, c
    hint = f"--shape '{spec.name}: 1 224 224 3' (N H W C)"
    if forced:
        raise OptionError("--shape", f"input {spec.name}: an image shape needs 4 dimensions N H W C, got "
                                     f"{list(shape)}; for example {hint}")
    raise OptionError("--shape", f"input {spec.name} ({spec.dtype.name}{list(spec.shape)}) does not say the image "
                                 f"size; give it with {hint}")


def plan_inputs(spec: ModelSpec, opts: BenchOptions) -> list[InputPlan]:
    """Decide, for every model input, its data method and shape; every mismatch is an OptionError."""
    unknown = [n for n in opts.shape.per_input if spec.input(n) is None]
    if unknown:
        raise OptionError("--shape", f"{unknown[0]!r} is not an input of model {spec.name} (its inputs: "
                                     f"{', '.join(s.name for s in spec.inputs)})")
    if not spec.inputs:
        raise OptionError("--model_name", f"model {spec.name} has no inputs in its metadata")
    default, per = _split_data_items(opts.data, spec)
    plans = []
    for tspec in spec.inputs:
        method = data.parse_method(per.get(tspec.name, default or "random"))
        forced = opts.shape.for_input(tspec.name)
        shape = tuple(forced) if forced else tspec.shape
        if forced and not method.image and not tspec.dtype.is_bytes:
            if len(forced) != len(tspec.shape):
                raise OptionError("--shape", f"input {tspec.name} has {len(tspec.shape)} dimensions "
                                             f"{list(tspec.shape)}, the forced shape {list(forced)} has {len(forced)}")
            if any(m not in (-1, f) for m, f in zip(tspec.shape[1:], forced[1:], strict=True)):
                raise OptionError("--shape", f"input {tspec.name} of model {spec.name} takes {list(tspec.shape)}; "
                                             f"the forced shape {list(forced)} does not fit its fixed dimensions")
        image = None
        npy = None
        strings = data.SAMPLE_STRINGS
        if method.image:
            image = _image_hwc(shape, tspec, forced is not None)
            if not tspec.dtype.is_bytes and len(tspec.shape) != 4:
                raise OptionError("--data", f"image data needs a BYTES input or a 4-dimensional image input; "
                                            f"{tspec.describe()} is neither")
        elif method.kind == "file":
            data.check_image_file(method.path)   # fail now, not when the dataset is built
        elif method.kind == "string":
            if not tspec.dtype.is_bytes:
                raise OptionError("--data", f"string data needs a BYTES (string) input; {tspec.describe()} is "
                                            "numeric: use random, an image method or a .npy file")
            if method.path:
                strings = data.load_strings(method.path)
        elif method.kind == "npy":
            npy = data.load_npy(method.path)
            if tspec.dtype.is_bytes:
                raise OptionError("--data", f"{method.path} holds numbers, but input {tspec.name} takes BYTES")
            if not np.can_cast(npy.dtype, tspec.dtype.numpy, casting="same_kind"):
                raise OptionError("--data", f"{method.path} holds {npy.dtype}, which does not convert to "
                                            f"{tspec.dtype.name} for input {tspec.name}; save it as "
                                            f"{tspec.dtype.numpy.name}")
            model_rows = tspec.shape[1:]
            if len(npy.shape) != len(tspec.shape) or any(m not in (-1, f) for m, f in zip(model_rows, npy.shape[1:],
                                                                                           strict=False)):
                raise OptionError("--data", f"{method.path} has rows of shape {list(npy.shape[1:])}, input "
                                            f"{tspec.name} takes {list(tspec.shape)}")
            shape = (-1, *npy.shape[1:])
        else:   # random
            if tspec.dtype.is_bytes:
                raise OptionError("--data", f"input {tspec.name} takes BYTES: use string, png, jpeg or a file "
                                            f"(e.g. --data {tspec.name}:string)")
            if any(d < 1 for d in shape[1:]):
                raise OptionError("--shape", f"input {tspec.name} of model {spec.name} has dynamic dimensions "
                                             f"{list(tspec.shape)}; give its shape, e.g. --shape '{tspec.name}: "
                                             f"{' '.join(str(d if d > 0 else 1) for d in tspec.shape)}' (the first "
                                             "dimension is the batch)")
        plans.append(InputPlan(tspec, method, shape, image, npy, strings))
    return plans


def batch_sizes(plans: Sequence[InputPlan], opts: BenchOptions) -> tuple[int, ...]:
    """--bs if given; else the first dimension of --shape; else the model's batch dimension; else 1."""
    if opts.batch_sizes:
        return opts.batch_sizes
    for p in plans:
        forced = opts.shape.for_input(p.spec.name)
        if forced and forced[0] > 0:
            return (forced[0],)
    for p in plans:
        if p.spec.shape and p.spec.shape[0] > 0:
            return (p.spec.shape[0],)
    return (1,)


def _default_length(plans: Sequence[InputPlan], sizes: Sequence[int]) -> int:
    npys = [p.npy for p in plans if p.npy is not None]
    if not npys:
        return len(sizes)
    rows = min(len(a) for a in npys)
    n, used = 0, 0
    while used + sizes[n % len(sizes)] <= rows:
        used += sizes[n % len(sizes)]
        n += 1
    if n == 0:
        raise OptionError("--data", f"the .npy file has {rows} rows, fewer than the batch size {sizes[0]}")
    return n


def build_dataset(spec: ModelSpec, opts: BenchOptions, plans: Sequence[InputPlan] | None = None,
                  limit: int | None = None) -> list[Entry]:
    """The dataset's entries (``limit`` builds only the first few, to validate options cheaply)."""
    plans = list(plans) if plans is not None else plan_inputs(spec, opts)
    sizes = batch_sizes(plans, opts)
    length = opts.dataset_length or _default_length(plans, sizes)
    if length < len(sizes):
        log.warning("--dataset_length %d is below the %d batch sizes; using %d", length, len(sizes), len(sizes))
        length = len(sizes)
    npy_rows = min((len(p.npy) for p in plans if p.npy is not None), default=None)
    if npy_rows is not None:
        fits = _default_length(plans, sizes)
        if length > fits:
            log.warning("the .npy data fills %d requests of batch sizes %s, not %d; using %d", fits,
                        list(sizes), length, fits)
            length = fits
    if limit is not None:
        length = min(length, limit)
    rng = np.random.default_rng(opts.seed)
    started = time.monotonic()
    entries, row = [], 0
    for k in range(length):
        bs = sizes[k % len(sizes)]
        inputs = {p.spec.name: _make(p, bs, rng, opts, row, k) for p in plans}
        row += bs
        entries.append(Entry(bs, inputs))
        if length > 50 and (k + 1) % max(1, length // 10) == 0:
            log.info("dataset: %d of %d requests built (%.1f s)", k + 1, length, time.monotonic() - started)
    return entries


def _make(p: InputPlan, bs: int, rng: np.random.Generator, opts: BenchOptions, row: int,
          k: int) -> tuple[DType, np.ndarray]:
    method = p.method
    if method.kind == "random":
        return p.spec.dtype, data.random_tensor(rng, p.spec.dtype, (bs, *p.shape[1:]), opts.min_value,
                                                opts.max_value)
    if method.kind == "npy":
        assert p.npy is not None
        return p.spec.dtype, np.ascontiguousarray(p.npy[row:row + bs]).astype(p.spec.dtype.numpy)
    if method.kind == "string":
        pool = p.strings
        tail = tuple(d if d > 0 else 1 for d in p.spec.shape[1:])
        count = bs * int(np.prod(tail)) if tail else bs
        arr = np.empty(count, dtype=object)
        arr[:] = data.string_batch(rng, count, pool)
        return BYTES, arr.reshape((bs, *tail))
    if method.kind == "file":
        assert method.path is not None
        blob = data.load_file_bytes(method.path)
        blobs = [blob] * bs
    else:
        assert p.image_hwc is not None
        h, w, c = p.image_hwc
        blobs = data.image_blobs(rng, method, bs, h, w, c, xrand=opts.xrand)
        if opts.dump_dir:
            _dump(opts.dump_dir, p.spec.name, k, blobs, "jpg" if method.kind == "jpeg" else "png")
    arr = np.empty(bs, dtype=object)
    arr[:] = blobs
    return BYTES, arr


def _dump(folder: Path, name: str, k: int, blobs: Sequence[bytes], ext: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for i, blob in enumerate(blobs):
            (folder / f"{name.replace('/', '_')}-{k:05d}-{i:03d}.{ext}").write_bytes(blob)
    except OSError as exc:
        raise OptionError("--dump_dir", f"cannot write images into {folder}: {exc.strerror}") from None
