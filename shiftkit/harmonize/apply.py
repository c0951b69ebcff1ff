"""Apply image harmonizers to files: fit on a reference table, write harmonized images and a manifest, and measure
the shift to the reference before and after (the library behind ``shiftkit harmonize``).

What is written for each input kind (README, "Harmonization"):

| input | harmonized in | written as |
|---|---|---|
| 8-bit PNG/JPEG/TIFF/BMP (gray, RGB; palette/alpha converted as the reader does) | 0..255 | 8-bit PNG (no JPEG re-compression) |
| 16-bit PNG/TIFF | raw values | 16-bit PNG, clipped to 0..65535 |
| 32-bit integer or float TIFF (one channel) | raw values | float32 TIFF |
| NIfTI | raw values (whole volume) | float32 ``.nii.gz`` with the input's spacing, origin, direction |
| DICOM, NRRD, MetaImage | raw values (whole volume) | float32 ``.mha`` with the input's spacing, origin, direction |

Intensity methods work on raw stored values (not the [0, 1] the network sees), on the whole image or volume.
Values are rounded and clipped to the output type's range; z-score with ``scale="unit"`` is refused for 8- and
16-bit inputs, whose outputs could not hold negative values. Spacing comes from the manifest's ``spacing`` column
when present (it overrides the header), else from the header of medical formats; PNG/JPEG have none.

Non-finite pixels (NaN, +-inf in float TIFFs and medical volumes) are left out of the fit and of each image's own
statistics and written back unchanged (resampling interpolates, so a NaN also blanks its output neighbours). Every
output is checked before it is written: a harmonizer that would turn finite pixels into NaN/infinity, or a
non-constant image into a constant one (after rounding and clipping to the output type), is refused, naming the file.
"""

from __future__ import annotations

import csv
import inspect
import io
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from shiftkit.data.preprocess import check_image_size
from shiftkit.data.readers import ReadOptions
from shiftkit.data.table import LABEL_SEPARATOR, ImageRecord, ImageTable, load_table, read_manifest
from shiftkit.errors import ConfigError, DataError, ImageReadError
from shiftkit.harmonize.colour import Macenko, Reinhard
from shiftkit.harmonize.intensity import (
    Harmonizer,
    HistogramMatching,
    NyulStandardization,
    ZScore,
    check_state,
    read_harmonizer_dict,
)
from shiftkit.harmonize.resample import Resampler, check_resampled_size
from shiftkit.io import atomic_write, write_json, write_text
from shiftkit.overwrite import refuse_overwriting_inputs

METHODS = ("resample", "histmatch", "nyul", "zscore", "colour")
COLOUR_METHODS = ("reinhard", "macenko")
KINDS: dict[str, type[Harmonizer]] = {
    cls.kind: cls for cls in (Resampler, HistogramMatching, NyulStandardization, ZScore, Reinhard, Macenko)
}
MIN_IMAGES = 4  # per domain for the before/after shift tests, as diagnose
OUTPUT_FILES = ("manifest.csv", "harmonizer.json", "harmonize.json", "report.html")  # besides the images


def method_of(kind: str) -> str:
    """The ``--method`` a harmonizer kind belongs to (``reinhard`` and ``macenko`` are ``colour``)."""
    return "colour" if kind in COLOUR_METHODS else kind


def make_harmonizer(method: str, **options: Any) -> Harmonizer:
    """An unfitted harmonizer for ``method`` (one of :data:`METHODS`, or ``reinhard``/``macenko``).

    ``options`` are the class's constructor arguments; ``colour`` also takes ``colour_method`` (default
    ``reinhard``). An option the method does not take is refused, naming it."""
    options = {k: v for k, v in options.items() if v is not None}
    if method == "colour":
        method = options.pop("colour_method", "reinhard")
        if method not in COLOUR_METHODS:
            raise ConfigError(f"unknown colour method '{method}' (choose {', '.join(COLOUR_METHODS)})")
    elif "colour_method" in options:
        raise ConfigError(f"--colour-method applies to --method colour, not {method}")
    if method not in KINDS:
        raise ConfigError(f"unknown harmonization method '{method}' (choose {', '.join(METHODS)})")
    cls = KINDS[method]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"option '{unknown[0]}' does not apply to {method} "
                          f"(it takes: {', '.join(sorted(accepted)) or 'no options'})")
    return cls(**options)


def load_harmonizer(path: str | Path, method: str | None = None) -> Harmonizer:
    """A harmonizer saved by :meth:`Harmonizer.save`; ``method`` (when given) must match its kind."""
    data = read_harmonizer_dict(path)
    kind = data["kind"]
    if kind not in KINDS:
        raise DataError(f"{path}: a '{kind}' harmonizer is not an image harmonizer "
                        f"(expected one of {', '.join(KINDS)})")
    if method is not None and method not in (kind, method_of(kind)):
        raise DataError(f"{path}: this is a '{kind}' harmonizer, not {method}")
    try:
        check_state(data["state"])
        return KINDS[kind].from_dict(data)
    except DataError as exc:
        raise DataError(f"{path}: invalid {kind} harmonizer: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: invalid {kind} harmonizer ({exc})") from None


# ------------------------------------------------------------------------------------------------ raw image IO

@dataclass
class RawImage:
    """An image at its stored intensities: ``array`` is channel-last float64 (``H x W x C`` or ``D x H x W x C``)."""

    array: np.ndarray
    kind: str  # "8bit", "16bit", "float" (PIL) or "medical" (SimpleITK)
    spacing: tuple[float, ...] | None  # SimpleITK order (x, y[, z])
    sitk_image: Any = None  # medical images: the geometry (spacing, origin, direction) to keep
    nifti: bool = False


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def read_raw(record: ImageRecord) -> RawImage:
    """Decode ``record.path`` at its stored intensities (errors name the file)."""
    from shiftkit.data.paths import path_problem
    from shiftkit.data.readers import PIL_SUFFIXES, SITK_SUFFIXES

    path = Path(record.path)
    problem = path_problem(path)  # a device, pipe, folder or loop is named for what it is, not "not found"
    if problem is not None:
        where = record.origin if record.origin and record.origin != str(path) else None  # a manifest row
        raise ImageReadError(f"{where}: {problem} ({path})" if where else f"{path}: {problem}")
    name = path.name.lower()
    try:
        if name.endswith(PIL_SUFFIXES):
            return _read_pil_raw(path, record.spacing)
        if name.endswith(SITK_SUFFIXES):
            return _read_sitk_raw(path, record.spacing)
    except (ImageReadError, DataError, ConfigError):
        raise
    except Exception as exc:  # PIL and SimpleITK raise many types for corrupt files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageReadError(f"{path}: cannot decode image ({reason})") from exc
    raise ImageReadError(f"{path}: unsupported file type")


def _read_pil_raw(path: Path, spacing: tuple[float, ...] | None) -> RawImage:
    from shiftkit.data.readers import open_pil

    with open_pil(path) as image:  # refused from the header above the decoded-size limit
        image.load()
        mode = image.mode
        if mode.startswith("I;16") or (mode == "I" and path.suffix.lower() == ".png"):
            kind = "16bit"
        elif mode in ("I", "F"):
            kind = "float"
        else:
            kind = "8bit"
            if mode not in ("L", "RGB"):
                image = image.convert("L" if mode in ("1", "LA", "La") else "RGB")
        array = np.asarray(image).astype(np.float64)
    if array.ndim == 2:
        array = array[..., None]
    if spacing is not None and len(spacing) != 2:
        raise DataError(f"{path}: manifest spacing {spacing} must have 2 values for a 2-D image")
    return RawImage(array, kind, spacing)


def _read_sitk_raw(path: Path, spacing: tuple[float, ...] | None) -> RawImage:
    import SimpleITK as sitk

    from shiftkit.data.readers import read_sitk

    image = read_sitk(path)  # refused from the header above the decoded-size limit
    if spacing is not None:
        if len(spacing) != image.GetDimension():
            raise DataError(f"{path}: manifest spacing {spacing} has {len(spacing)} value(s) but the image is "
                            f"{image.GetDimension()}-D")
        image.SetSpacing(spacing)
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    if image.GetNumberOfComponentsPerPixel() == 1:
        array = array[..., None]
    return RawImage(array, "medical", tuple(image.GetSpacing()), image, _is_nifti(path))


def output_suffix(raw: RawImage) -> str:
    if raw.kind == "medical":
        return ".nii.gz" if raw.nifti else ".mha"
    return ".tiff" if raw.kind == "float" else ".png"


def to_sitk(raw: RawImage, array: np.ndarray | None = None):
    """The image as SimpleITK sees it (float32), with the medical header's geometry or the manifest spacing."""
    import SimpleITK as sitk

    array = raw.array if array is None else array
    vector = array.shape[-1] > 1
    image = sitk.GetImageFromArray((array if vector else array[..., 0]).astype(np.float32), isVector=vector)
    if raw.sitk_image is not None:
        image.SetSpacing(raw.sitk_image.GetSpacing())
        image.SetOrigin(raw.sitk_image.GetOrigin())
        image.SetDirection(raw.sitk_image.GetDirection())
    elif raw.spacing is not None:
        image.SetSpacing(raw.spacing)
    return image


def from_sitk(raw: RawImage, image) -> RawImage:
    """A resampled SimpleITK image back as a :class:`RawImage` of the same kind."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image).astype(np.float64)
    if image.GetNumberOfComponentsPerPixel() == 1:
        array = array[..., None]
    return RawImage(array, raw.kind, tuple(image.GetSpacing()), image if raw.kind == "medical" else None, raw.nifti)


def stored_values(raw: RawImage) -> np.ndarray:
    """The pixel values :func:`write_raw` stores: rounded and clipped for 8- and 16-bit PNGs, float32 otherwise."""
    if raw.kind in ("8bit", "16bit"):
        top, dtype = (255, np.uint8) if raw.kind == "8bit" else (65535, np.uint16)
        return np.clip(np.rint(np.nan_to_num(raw.array, nan=0.0)), 0, top).astype(dtype)
    return raw.array.astype(np.float32)


def check_output(harmonizer: Harmonizer, before: RawImage, after: RawImage) -> None:
    """Refuse an output that gained non-finite pixels, or that became constant while its input was not: written,
    it would silently blank an image (errors are prefixed with the file by the caller)."""
    stored = stored_values(after)
    finite_in, finite_out = np.isfinite(before.array), np.isfinite(stored)
    if stored.shape == before.array.shape:
        gained = int((finite_in & ~finite_out).sum())
    else:  # resampled: another grid; only an input without non-finite pixels can be compared
        gained = int((~finite_out).sum()) if finite_in.all() else (0 if finite_out.any() else stored.size)
    if gained:
        raise DataError(f"the {harmonizer.kind} harmonizer turned {gained} finite pixel(s) into non-finite values "
                        "(NaN or infinity); refused rather than written")
    for c in range(before.array.shape[-1]):
        values_in = before.array[..., c][finite_in[..., c]]
        values_out = stored[..., c][finite_out[..., c]]
        if values_in.size and np.ptp(values_in) > 0 and values_out.size and np.ptp(values_out) == 0:
            raise DataError(f"the {harmonizer.kind} harmonizer turned a non-constant image into a constant one "
                            f"(every stored pixel {float(values_out[0]):g}"
                            f"{'' if before.array.shape[-1] == 1 else f' in channel {c}'}); refused rather than "
                            "written: check the reference's intensity range against this image's type")


def write_raw(raw: RawImage, path: Path) -> None:
    """Write ``raw`` as its kind's output format (table in the module docstring), atomically."""
    array = raw.array
    if raw.kind in ("8bit", "16bit"):
        from PIL import Image

        pixels = stored_values(raw)
        pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels

        def save(tmp: Path) -> None:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            tmp.write_bytes(buffer.getvalue())
    elif raw.kind == "float":
        from PIL import Image

        pixels = array[..., 0].astype(np.float32)

        def save(tmp: Path) -> None:
            buffer = io.BytesIO()
            Image.fromarray(pixels, mode="F").save(buffer, format="TIFF")
            tmp.write_bytes(buffer.getvalue())
    else:
        import SimpleITK as sitk

        image = to_sitk(raw)

        def save(tmp: Path) -> None:
            # SimpleITK picks the writer from the file name, so write beside tmp with the real suffix first
            named = tmp.with_name(tmp.name + output_suffix(raw))
            try:
                sitk.WriteImage(image, str(named), useCompression=True)
                os.replace(named, tmp)
            finally:
                named.unlink(missing_ok=True)

    atomic_write(path, save)


# -------------------------------------------------------------------------------------------- fit and transform

def _spacing_of(record: ImageRecord) -> tuple[float, ...]:
    """The record's spacing: the manifest's, else the medical header's (read without the pixels)."""
    if record.spacing is not None:
        return record.spacing
    from shiftkit.data.readers import SITK_SUFFIXES

    if record.path.name.lower().endswith(SITK_SUFFIXES):
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(record.path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise ImageReadError(f"{record.path}: cannot read the header ({reason})") from None
        return tuple(reader.GetSpacing())
    raise DataError(f"{record.origin or record.path}: no spacing (PNG/JPEG have none: add a 'spacing' column "
                    "to the manifest, e.g. 0.5,0.5)")


def _header_geometry(record: ImageRecord) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
    """(size, spacing) in SimpleITK order from the header alone (no pixels), as :func:`read_raw` will see them;
    ``None`` when the header cannot be read (reading the image then names the problem)."""
    from shiftkit.data.readers import PIL_SUFFIXES, SITK_SUFFIXES

    name = record.path.name.lower()
    try:
        if name.endswith(PIL_SUFFIXES):
            from shiftkit.data.readers import open_pil

            with open_pil(record.path) as image:  # no raw DecompressionBombWarning; too large: read_raw says so
                size = tuple(image.size)
            return size, record.spacing or (1.0,) * len(size)
        if name.endswith(SITK_SUFFIXES):
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(record.path))
            reader.ReadImageInformation()
            return tuple(reader.GetSize()), record.spacing or tuple(reader.GetSpacing())
    except Exception:  # noqa: BLE001  corrupt or unreadable: read_raw gives the one-line error
        return None
    return None


def _check_resampled_sizes(harmonizer: Resampler, table: ImageTable) -> None:
    """Refuse, before any image is written, a target spacing that makes one of ``table``'s images too large."""
    target = harmonizer.target_spacing
    for record in table.records:
        geometry = _header_geometry(record)
        if geometry is None or len(geometry[0]) != len(target):  # a dimension mismatch is named by transform
            continue
        try:
            check_resampled_size(*geometry, target)
        except DataError as exc:
            raise DataError(f"{record.origin or record.path}: {record.path.name} is {exc}") from None


def _check_input(harmonizer: Harmonizer, raw: RawImage, record: ImageRecord) -> None:
    where = record.origin or str(record.path)
    if isinstance(harmonizer, (Reinhard, Macenko)) and (raw.kind != "8bit" or raw.array.shape[-1] != 3):
        raise DataError(f"{where}: {harmonizer.kind} colour normalization needs 8-bit RGB images "
                        f"({record.path.name} is {raw.kind} with {raw.array.shape[-1]} channel(s))")
    if isinstance(harmonizer, ZScore) and harmonizer.scale == "unit" and raw.kind in ("8bit", "16bit"):
        raise ConfigError(f"{where}: z-score with scale 'unit' gives negative values, which an {raw.kind} PNG "
                          "cannot hold; use scale 'source' (the default)")


def fit_harmonizer(harmonizer: Harmonizer, reference: ImageTable,
                   on_image: Callable[[], None] | None = None) -> Harmonizer:
    """Fit ``harmonizer`` on every image of ``reference`` (the source domain)."""
    if len(reference) == 0:
        raise DataError(f"{reference.source or 'reference'}: the reference has no images")
    tick = on_image or (lambda: None)
    if isinstance(harmonizer, Resampler):
        spacings = []
        if harmonizer.spacing is None:
            for record in reference.records:
                spacings.append(_spacing_of(record))
                tick()
        return harmonizer.fit(spacings)

    current: list[ImageRecord] = []

    def images():
        for record in reference.records:
            current[:] = [record]
            raw = read_raw(record)
            _check_input(harmonizer, raw, record)
            tick()
            yield raw.array

    try:
        return harmonizer.fit(images())
    except DataError as exc:  # name the image (no finite pixel) or the reference (all constant)
        where = (current[0].origin or str(current[0].path)) if "no finite pixel" in str(exc) and current else (
            reference.source or "reference")
        raise type(exc)(f"{where}: {exc}") from None


def transform_raw(harmonizer: Harmonizer, raw: RawImage) -> RawImage:
    """Harmonize one decoded image; the result keeps the input's kind (and geometry, except after resampling)."""
    if isinstance(harmonizer, Resampler):
        result = from_sitk(raw, harmonizer.transform(to_sitk(raw)))
    else:
        result = replace(raw, array=np.asarray(harmonizer.transform(raw.array),
                                               dtype=np.float64).reshape(raw.array.shape))
    check_output(harmonizer, raw, result)
    return result


def _input_root(table: ImageTable) -> Path:
    """The folder the output mirrors: the input folder, or the manifest's folder when every image lies below it,
    else the images' deepest common folder."""
    source = Path(table.source) if table.source else None
    parents = [str(r.path.resolve().parent) for r in table.records]
    if source is not None:
        base = (source if source.is_dir() else source.parent).resolve()
        if all(p == str(base) or p.startswith(str(base) + os.sep) for p in parents):
            return base
    return Path(os.path.commonpath(parents))


def _strip_suffix(relative: Path) -> Path:
    name = relative.name
    lowered = name.lower()
    for suffix in (".nii.gz",):
        if lowered.endswith(suffix):
            return relative.with_name(name[: -len(suffix)])
    return relative.with_suffix("")


def _format_spacing(spacing: tuple[float, ...] | None) -> str:
    return "x".join(f"{s:.6g}" for s in spacing) if spacing else ""


def write_manifest(path: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    """``path,label[,site][,spacing]`` CSV that ``load_table`` reads back (paths relative to its folder)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def harmonize_table(table: ImageTable, reference: ImageTable, method: str, out_dir: Path, *,
                    options: dict | None = None,
                    on_image: Callable[[], None] | None = None,
                    harmonizer: Harmonizer | None = None) -> tuple[ImageTable, Harmonizer]:
    """Fit ``method`` on ``reference``, write the harmonized images of ``table`` under ``out_dir`` (same relative
    layout, suffix by input kind) plus ``out_dir/manifest.csv``, and return the new table (same labels, sites and
    class vocabulary) and the fitted harmonizer. ``harmonizer``: an already fitted one (``reference`` unused).
    ``on_image`` is called once per image fitted on and once per image written."""
    if len(table) == 0:
        raise DataError(f"{table.source or 'input'}: the input has no images")
    if harmonizer is None:
        harmonizer = fit_harmonizer(make_harmonizer(method, **(options or {})), reference, on_image)
    elif not harmonizer.fitted:
        raise ConfigError(f"the {harmonizer.kind} harmonizer is not fitted")
    out_dir = Path(out_dir)
    if isinstance(harmonizer, Resampler):
        _check_resampled_sizes(harmonizer, table)
    root = _input_root(table)
    refuse_overwriting_inputs(out_dir, [out_dir / "manifest.csv"],
                              {"input": Path(table.source) if table.source else None, "input's image folder": root})
    tick = on_image or (lambda: None)
    rows, seen = [], {}
    any_site = any(r.site for r in table.records)
    any_spacing = False
    for record in table.records:
        raw = read_raw(record)
        _check_input(harmonizer, raw, record)
        try:
            result = transform_raw(harmonizer, raw)
        except DataError as exc:
            raise type(exc)(f"{record.origin or record.path}: {exc}") from None
        relative = _strip_suffix(record.path.resolve().relative_to(root))
        relative = relative.with_name(relative.name + output_suffix(raw))
        if relative in seen:
            raise DataError(f"{record.origin or record.path}: its output {relative} would overwrite the output of "
                            f"{seen[relative]} (same name, different suffix)")
        seen[relative] = record.origin or str(record.path)
        if (out_dir / relative).resolve() == record.path.resolve():
            raise ConfigError(f"{record.origin or record.path}: writing the output to {out_dir} would overwrite "
                              "the input image; choose another --out")
        write_raw(result, out_dir / relative)
        spacing = result.spacing if result.kind != "medical" else None  # medical: the header carries it
        any_spacing |= spacing is not None
        rows.append({"path": relative.as_posix(), "label": LABEL_SEPARATOR.join(record.labels),
                     "site": record.site or "", "spacing": _format_spacing(spacing)})
        tick()
    columns = ["path", "label"] + (["site"] if any_site else []) + (["spacing"] if any_spacing else [])
    manifest = out_dir / "manifest.csv"
    write_manifest(manifest, rows, columns)
    new_table = read_manifest(manifest)
    if new_table.records and not new_table.labeled and table.labeled:
        raise DataError(f"{manifest}: labels were lost")  # a bug guard: labels must survive
    new_table = replace(new_table, classes=table.classes, multilabel=table.multilabel, _index={})
    return new_table, harmonizer


# ------------------------------------------------------------------------------------------ shift before/after

@dataclass
class MeasureSettings:
    """How the shift to the reference is measured (the diagnose module's embedding and tests)."""

    arch: str = "efficientnet_lite0"
    weights: str = "imagenet"
    image_size: int | None = None
    max_images: int | None = None
    permutations: int = 1000
    pca: int = 32
    seed: int = 0
    device: str = "auto"
    batch_size: int = 128
    cache_dir: Path | None = None
    read_options: ReadOptions = field(default_factory=ReadOptions)


def check_settings(settings: MeasureSettings) -> None:
    """Refuse bad measurement options before any image is written."""
    if settings.max_images is not None and settings.max_images < MIN_IMAGES:
        raise ConfigError(f"--max-images must be at least {MIN_IMAGES}")
    if settings.permutations < 1 or settings.batch_size < 1 or settings.pca < 0:
        raise ConfigError("--permutations and --batch-size must be at least 1 and --pca 0 or more")
    check_image_size(settings.image_size)


def _subset(table: ImageTable, limit: int | None, seed: int) -> ImageTable:
    if limit is None or len(table) <= limit:
        return table
    keep = np.sort(np.random.default_rng(seed).choice(len(table), limit, replace=False))
    return table.subset(keep.tolist())


def measure_shift(reference: ImageTable, before: ImageTable, after: ImageTable, settings: MeasureSettings,
                  on_stage: Callable[[str, int], Callable[[], None]] | None = None) -> dict[str, Any]:
    """MMD (on ``pca`` components fitted on each pooled pair, as ``diagnose``) and the domain classifier (full
    embedding) between ``reference`` and ``before``, and between ``reference`` and ``after``. ``before`` and
    ``after`` must list the same images in the same order: the same subset of both is measured."""
    from shiftkit.features import extract, fit_pca
    from shiftkit.finetune.trainer import resolve_device
    from shiftkit.models.registry import build_model
    from shiftkit.shift.covariate import domain_classifier_test, mmd_test

    if len(before) != len(after):
        raise DataError("before and after tables differ in length")
    check_settings(settings)
    reference = _subset(reference, settings.max_images, settings.seed)
    before = _subset(before, settings.max_images, settings.seed + 1)
    after = _subset(after, settings.max_images, settings.seed + 1)
    for name, table in (("reference", reference), ("input", before)):
        if len(table) < MIN_IMAGES:
            raise DataError(f"{table.source}: the {name} has {len(table)} image(s); a shift test needs at least "
                            f"{MIN_IMAGES}")
    device = resolve_device(settings.device)
    adapted = build_model(settings.arch, 1, settings.weights, settings.image_size)
    started = time.perf_counter()
    embeddings = {}
    for name, table in (("reference", reference), ("before", before), ("after", after)):
        tick = on_stage(f"embedding {name}", -(-len(table) // settings.batch_size)) if on_stage else None
        embeddings[name] = extract(table, adapted, device, batch_size=settings.batch_size,
                                   read_options=settings.read_options, cache_dir=settings.cache_dir,
                                   on_batch=tick).embeddings
    result: dict[str, Any] = {}
    for name in ("before", "after"):
        ref, tgt = embeddings["reference"], embeddings[name]
        pca = fit_pca(np.vstack([ref, tgt]), settings.pca, settings.seed) if settings.pca else None
        ref_low, tgt_low = (pca.transform(ref), pca.transform(tgt)) if pca else (ref, tgt)
        mmd = mmd_test(ref_low, tgt_low, permutations=settings.permutations, seed=settings.seed,
                       device=settings.device)
        classifier = domain_classifier_test(ref, tgt, seed=settings.seed)
        result[name] = {"mmd": mmd.to_dict(), "domain_classifier": classifier.to_dict()}
    result["settings"] = {
        "arch": adapted.arch, "weights": adapted.weights, "image_size": settings.image_size,
        "max_images": settings.max_images, "n_reference": len(reference), "n_input": len(before),
        "permutations": settings.permutations, "pca": settings.pca, "seed": settings.seed,
        "seconds": round(time.perf_counter() - started, 2),
        "note": "PCA and the MMD bandwidth (median heuristic) are fitted on each pooled pair, as diagnose does; "
                "compare p-values and the domain-classifier AUC across before/after, and MMD² as a guide",
    }
    return result


# ------------------------------------------------------------------------------------------------ the command

@dataclass
class HarmonizeRequest:
    input: Path
    out: Path
    method: str | None = None
    reference: Path | None = None
    harmonizer: Path | None = None  # a saved harmonizer to apply instead of fitting
    options: dict[str, Any] = field(default_factory=dict)
    measure: bool = True
    settings: MeasureSettings = field(default_factory=MeasureSettings)


def run_harmonize(request: HarmonizeRequest,
                  on_stage: Callable[[str, int], Callable[[], None]] | None = None) -> dict[str, Any]:
    """Fit (or load), write images + ``manifest.csv`` + ``harmonizer.json``, measure the shift before and after,
    write ``harmonize.json`` and return its content."""
    started = time.perf_counter()
    if request.harmonizer is None:
        if request.method is None:
            raise ConfigError("give --method (or --harmonizer FILE to apply a saved harmonizer)")
        if request.reference is None:
            raise ConfigError("give --reference SOURCE to fit on (or --harmonizer FILE to apply a saved harmonizer)")
        make_harmonizer(request.method, **request.options)  # refuse a bad method/option before reading anything
    elif request.options:
        raise ConfigError(f"option '{next(iter(request.options))}' cannot change a saved harmonizer "
                          f"({request.harmonizer})")
    if request.measure:
        check_settings(request.settings)
    # before the folders are read: an --out inside one would be read as part of it (a new class, more images)
    refuse_overwriting_inputs(request.out, [], {"input": request.input, "reference": request.reference},
                              scanned=("input", "reference"))
    table = load_table(request.input)
    reference = load_table(request.reference) if request.reference is not None else None
    if reference is not None and len(reference) == 0:
        raise DataError(f"{request.reference}: the reference has no images")
    refuse_overwriting_inputs(request.out, [request.out / name for name in OUTPUT_FILES], {
        "input": request.input, "input's image folder": _input_root(table) if len(table) else None,
        "reference": request.reference, "reference's image folder": _input_root(reference) if reference else None,
        "saved harmonizer": request.harmonizer})
    stage = on_stage or (lambda description, total: (lambda: None))
    if request.harmonizer is not None:
        harmonizer = load_harmonizer(request.harmonizer, request.method)
    else:
        total = 0 if request.method == "resample" and request.options.get("spacing") else len(reference)
        harmonizer = fit_harmonizer(make_harmonizer(request.method, **request.options), reference,
                                    stage(f"fitting {request.method} on the reference", total))
    new_table, _ = harmonize_table(table, reference or table, method_of(harmonizer.kind), request.out,
                                   harmonizer=harmonizer, on_image=stage("writing harmonized images", len(table)))
    harmonizer_path = harmonizer.save(request.out / "harmonizer.json")
    shift = None
    if request.measure and reference is not None:
        shift = measure_shift(reference, table, new_table, request.settings, on_stage)
    kinds: dict[str, int] = {}
    for record in new_table.records:
        suffix = ".nii.gz" if record.path.name.endswith(".nii.gz") else record.path.suffix
        kinds[suffix] = kinds.get(suffix, 0) + 1
    from shiftkit import __version__

    report = {
        "method": method_of(harmonizer.kind), "kind": harmonizer.kind, "input": str(request.input),
        "reference": str(request.reference) if request.reference else None,
        "harmonizer": str(harmonizer_path), "loaded_from": str(request.harmonizer) if request.harmonizer else None,
        "params": harmonizer.params(), "n_images": len(new_table), "outputs": kinds,
        "manifest": str(request.out / "manifest.csv"),
        "shift": shift,
        "shift_not_measured": None if shift is not None else (
            "no --reference to compare with" if reference is None else "--no-measure"),
        "seconds": round(time.perf_counter() - started, 2), "shiftkit": __version__,
    }
    write_json(request.out / "harmonize.json", report)
    return report
