"""What every fitted harmonizer shares: parameters read from its constructor, a JSON save/load, foreground masking,
and a registry by name.

Parameters follow scikit-learn's ``BaseEstimator.get_params`` convention: every argument of ``__init__`` is stored
on the object under the same name, so the saved JSON is derived from the signature and a new argument cannot be
forgotten on save (``from_dict`` rebuilds with ``cls(**params)``).

Adding a harmonizer is one class in one module::

    @register("mymethod")                 # ``--method mymethod``; ``register("k", method="colour")`` adds a sub-choice
    class MyMethod(Harmonizer):
        def __init__(self, strength: float = 1.0) -> None:
            super().__init__()
            self.strength = float(strength)   # stored under its own name: saved and reloaded
        def fit(self, images, masks=None): ...; self.state = {...}; return self
        def transform(self, image, mask=None): ...

The built-in harmonizers are registered when their modules (:data:`BUILTIN_MODULES`) are imported, which the
lookups below do first; a harmonizer defined elsewhere is registered when its module is imported.
"""

from __future__ import annotations

import importlib
import inspect
import json
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Optional, Sequence, TypeVar

import numpy as np

from shiftkit.errors import ConfigError, DataError
from shiftkit.harmonize.pixels import as_channels, check_foreground, checked_mask, foreground_mask
from shiftkit.io import write_json

FORMAT = "shiftkit-harmonizer"
FORMAT_VERSION = 1
# modules whose import registers the built-in harmonizers, in the order --method lists them
BUILTIN_MODULES = ("shiftkit.harmonize.resample", "shiftkit.harmonize.intensity", "shiftkit.harmonize.colour",
                   "shiftkit.harmonize.lab_match", "shiftkit.harmonize.constancy")
Masks = Optional[Iterable[Optional[np.ndarray]]]  # per-image foreground masks aligned with the images, or None


def constructor_params(obj: Any) -> dict[str, Any]:
    """``{name: value}`` for every argument of ``type(obj).__init__`` (not ``self``, not ``*args``/``**kwargs``),
    read from the attribute of the same name. A missing attribute is a programming error, raised at once
    (scikit-learn raises the same way) so that a parameter can never be silently dropped from a saved file."""
    names = _init_names(type(obj))
    missing = [name for name in names if not hasattr(obj, name)]
    if missing:
        raise AttributeError(f"{type(obj).__name__} stores no attribute for its constructor argument(s) "
                             f"{', '.join(missing)}: store each argument under its own name")
    return {name: getattr(obj, name) for name in names}


def _init_names(cls: type) -> list[str]:
    signature = inspect.signature(cls.__init__)
    return [name for name, p in signature.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _plain(value: Any) -> Any:
    """Tuples as lists (recursively): a parameter as JSON holds it, so ``params()`` equals what is saved."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------ base class

class Harmonizer:
    """What every image harmonizer offers: ``fit`` on source images, ``transform`` target images, and a JSON
    state (``params`` set at construction, ``state`` learned by ``fit``) that :meth:`save` writes and
    :func:`load_harmonizer` reads back (never pickle).

    Array harmonizers (``geometric = False``) fit on an iterable of channel-last pixel arrays (with optional
    ``masks``) and transform one array into an array of the same shape. Geometric ones (the resampler) fit on the
    reference's spacings and transform a SimpleITK image; :mod:`shiftkit.harmonize.apply` feeds each its input."""

    kind: ClassVar[str] = ""  # the name it is registered and saved under
    method: ClassVar[str] = ""  # the --method that chooses it (the kind, or a shared one such as "colour")
    geometric: ClassVar[bool] = False
    # channel counts --method auto tries it on (None: any its check_input accepts); --method a,b names it anyway
    auto_channels: ClassVar[Optional[tuple[int, ...]]] = None

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    @property
    def fitted(self) -> bool:
        return self.state is not None

    def params(self) -> dict[str, Any]:
        """The constructor's arguments as saved (tuples as lists), read from the signature."""
        return {name: _plain(value) for name, value in constructor_params(self).items()}

    # -------------------------------------------------------------------------------------- hooks for apply

    @property
    def reads_reference(self) -> bool:
        """Whether ``fit`` reads the reference's images (or headers); for the progress bar."""
        return True

    @classmethod
    def uses_seed(cls, options: dict[str, Any]) -> bool:
        """Whether the run's ``--seed`` is given to the constructor with these ``options``: when it takes a
        ``seed`` (a seeded pixel sample). Override when the seed is only used by some settings, so that it is not
        saved where it changes nothing."""
        return "seed" in _init_names(cls)

    def check_input(self, stored: str, channels: int, name: str) -> None:
        """Refuse, with one line, an input this harmonizer cannot write back: ``stored`` is the file's kind
        ("8bit", "16bit", "float" or "medical"), ``channels`` its channel count, ``name`` its file name."""

    def check_geometry(self, size: Sequence[int], spacing: Sequence[float]) -> None:
        """Geometric harmonizers: refuse, before any image is written, an input of this header ``size`` and
        ``spacing`` (SimpleITK order) whose output would be unusable (too large)."""

    # ---------------------------------------------------------------------------------------------- masking

    @property
    def foreground(self) -> str:
        """How a foreground is found when no mask is given: ``"none"`` (every pixel) or ``"otsu"``. Checked when
        set, so a harmonizer that takes ``foreground`` just stores it; one that does not uses every pixel."""
        return self.__dict__.get("_foreground", "none")

    @foreground.setter
    def foreground(self, value: str) -> None:
        self._foreground = check_foreground(value)

    def mask_for(self, image: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
        """The mask statistics are taken in: the given ``mask`` (checked against ``image``), else the
        :attr:`foreground` one (``None``: every pixel)."""
        return foreground_mask(image, self.foreground) if mask is None else checked_mask(image, mask)

    def fit_images(self, images: Iterable[np.ndarray], masks: Masks = None) -> Iterator[tuple[np.ndarray,
                                                                                        np.ndarray | None]]:
        """Yield (channel-last image, mask) pairs of the source, checking that they share one channel count and
        that there is at least one."""
        masks_iter = iter(masks) if masks is not None else None
        channels = None
        count = 0
        for image in images:
            array = as_channels(image)
            mask = self.mask_for(array, next(masks_iter) if masks_iter is not None else None)
            if channels is None:
                channels = array.shape[-1]
            elif array.shape[-1] != channels:
                raise DataError(f"source images mix {channels}-channel and {array.shape[-1]}-channel images")
            count += 1
            yield array, mask
        if count == 0:
            raise DataError("the reference (source) domain has no images to fit on")

    # ------------------------------------------------------------------------------------------------ state

    def _require_fitted(self) -> dict[str, Any]:
        if self.state is None:
            raise ConfigError(f"the {self.kind} harmonizer is not fitted: call fit() on source images first")
        return self.state

    def _fitted(self, state: dict[str, Any], spread: np.ndarray) -> dict[str, Any]:
        """Keep ``state`` as the fit, refusing a reference that gives constant outputs (``spread``: per channel, the
        range of what the reference's images are mapped onto) or numbers JSON cannot hold (NaN, infinity)."""
        flat = [v for v in np.ravel(np.asarray(_numbers(state), dtype=np.float64))]
        if not np.isfinite(flat).all():
            raise DataError(f"{self.kind}: the reference's intensities give non-finite statistics (values beyond "
                            "float64's range?); rescale the images")
        constant = [c for c, value in enumerate(np.ravel(spread)) if not value > 0]
        if constant:
            raise DataError(f"{self.kind}: every reference image is constant in channel {constant[0]} (one value "
                            f"per image); there is no intensity distribution to map onto, so every output would be "
                            f"constant; use a reference with contrast")
        self.state = state
        return state

    def _fitted_channels(self, image: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
        """The fitted state and ``image`` as H x W x C, refused when its channels differ from the source's."""
        state = self._require_fitted()
        array = as_channels(image)
        if array.shape[-1] != state["channels"]:
            raise DataError(f"the {self.kind} harmonizer was fitted on {state['channels']}-channel images; "
                            f"this image has {array.shape[-1]} channel(s)")
        return state, array

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": self.kind, "params": self.params(),
                "state": self._require_fitted()}

    def save(self, path: str | Path) -> Path:
        """Write the fitted harmonizer as JSON (atomically); floats round-trip exactly."""
        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Harmonizer":
        harmonizer = cls(**data.get("params", {}))
        harmonizer.state = data["state"]
        return harmonizer


def _numbers(value: Any) -> list[float]:
    """Every number in a (JSON-like) state, flattened; ``None`` (JSON null) counts as NaN."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _numbers(v)]
    if value is None:
        return [float("nan")]
    return [float(value)] if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) else []


def check_state(state: Any) -> None:
    """Refuse a saved state holding null, NaN or infinity (a harmonizer.json written before non-finite pixels were
    left out of the fit)."""
    if not np.isfinite(np.asarray(_numbers(state), dtype=np.float64)).all():
        raise DataError("its state holds null, NaN or infinite numbers (fitted on images with non-finite pixels by "
                        "an older shiftkit?); fit it again")


# -------------------------------------------------------------------------------------------------- registry

_KINDS: dict[str, type[Harmonizer]] = {}
H = TypeVar("H", bound=type[Harmonizer])


def register(kind: str, *, method: str | None = None) -> Callable[[H], H]:
    """Class decorator: make a :class:`Harmonizer` subclass available as ``kind`` (saved files name it so) and
    choosable by ``--method`` (``make_harmonizer``, the CLI, ``audit --harmonize``).

    ``method``: a shared ``--method`` for several kinds (``colour`` holds ``reinhard`` and ``macenko``); the kind
    is then chosen by the ``<method>_method`` option (``--colour-method``), defaulting to the first registered."""
    def decorate(cls: H) -> H:
        if not (isinstance(cls, type) and issubclass(cls, Harmonizer)):
            raise TypeError(f"register('{kind}') decorates a Harmonizer subclass, not {cls!r}")
        if cls.__module__ not in BUILTIN_MODULES:
            _builtins()  # so that a name clash with a built-in is seen, whichever is imported first
        known = _KINDS.get(kind)
        if known is not None and _name(known) != _name(cls):  # the same class again (a reloaded module) is fine
            raise ValueError(f"a harmonizer named '{kind}' is already registered ({_name(known)})")
        group = method or kind
        clash = [c for c in _KINDS.values() if c.kind != kind and (c.kind == group or c.method == kind)]
        if clash:
            raise ValueError(f"'{group}' is already a --method for {_name(clash[0])}")
        cls.kind, cls.method = kind, group
        _KINDS[kind] = cls
        return cls

    return decorate


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _builtins() -> dict[str, type[Harmonizer]]:
    """The registry, with the built-in harmonizers' modules imported: theirs first (in :data:`BUILTIN_MODULES`
    order), then the others in registration order, however the imports were interleaved."""
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    rank = {module: i for i, module in enumerate(BUILTIN_MODULES)}
    return dict(sorted(_KINDS.items(), key=lambda item: rank.get(item[1].__module__, len(rank))))


def registered() -> dict[str, type[Harmonizer]]:
    """Every registered harmonizer class by kind: the built-ins first, then the others as registered."""
    return dict(_builtins())


def methods() -> tuple[str, ...]:
    """The ``--method`` names: ``resample, histmatch, nyul, zscore, colour``, then any registered elsewhere."""
    return tuple(dict.fromkeys(cls.method for cls in _builtins().values()))


def kinds_of(method: str) -> tuple[str, ...]:
    """The kinds ``method`` chooses between (the first is its default); ``(method,)`` for a plain one."""
    return tuple(kind for kind, cls in _builtins().items() if cls.method == method)


def method_of(kind: str) -> str:
    """The ``--method`` a harmonizer kind belongs to (``reinhard`` and ``macenko`` are ``colour``)."""
    cls = _builtins().get(kind)
    return cls.method if cls is not None else kind


def _shared_methods() -> tuple[str, ...]:
    return tuple(m for m in methods() if kinds_of(m) != (m,))


def harmonizer_class(method: str, options: dict[str, Any] | None = None) -> type[Harmonizer]:
    """The class ``method`` (a ``--method`` name or a kind) chooses; a shared method reads its sub-choice from
    ``options["<method>_method"]``."""
    options = options or {}
    kinds = _builtins()
    if method in _shared_methods():
        choices = kinds_of(method)
        kind = options.get(f"{method}_method")
        kind = choices[0] if kind is None else kind
        if kind not in choices:
            raise ConfigError(f"unknown {method} method '{kind}' (choose {', '.join(choices)})")
        return kinds[kind]
    for shared in _shared_methods():
        if options.get(f"{shared}_method") is not None:
            raise ConfigError(f"--{shared}-method applies to --method {shared}, not {method}")
    if method not in kinds:
        raise ConfigError(f"unknown harmonization method '{method}' (choose {', '.join(methods())})")
    return kinds[method]


def make_harmonizer(method: str, **options: Any) -> Harmonizer:
    """An unfitted harmonizer for ``method`` (a ``--method`` name such as ``colour``, or a kind such as
    ``macenko``).

    ``options`` are the class's constructor arguments; a shared method also takes its sub-choice
    (``colour_method``, default ``reinhard``). An option the method does not take is refused, naming it."""
    options = {k: v for k, v in options.items() if v is not None}
    cls = harmonizer_class(method, options)
    for shared in _shared_methods():
        options.pop(f"{shared}_method", None)
    accepted = set(_init_names(cls))
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"option '{unknown[0]}' does not apply to {cls.kind} "
                          f"(it takes: {', '.join(sorted(accepted)) or 'no options'})")
    return cls(**options)


def read_harmonizer_dict(path: str | Path) -> dict[str, Any]:
    """The JSON of a saved harmonizer, checked to be one (a report or a model is refused with one line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: harmonizer file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path}: not a shiftkit harmonizer (not a JSON file)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "kind" not in data or "state" not in data:
        raise DataError(f"{path}: not a shiftkit harmonizer (no '\"format\": \"{FORMAT}\"' with kind and state)")
    if data.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: harmonizer format version {data.get('version')} is not supported "
                        f"(this shiftkit reads version {FORMAT_VERSION})")
    return data


def load_harmonizer(path: str | Path, method: str | None = None) -> Harmonizer:
    """A harmonizer saved by :meth:`Harmonizer.save`; ``method`` (when given) must match its kind."""
    data = read_harmonizer_dict(path)
    kind = data["kind"]
    kinds = _builtins()
    if kind not in kinds:
        raise DataError(f"{path}: a '{kind}' harmonizer is not an image harmonizer "
                        f"(expected one of {', '.join(kinds)})")
    if method is not None and method not in (kind, method_of(kind)):
        raise DataError(f"{path}: this is a '{kind}' harmonizer, not {method}")
    try:
        check_state(data["state"])
        return kinds[kind].from_dict(data)
    except DataError as exc:
        raise DataError(f"{path}: invalid {kind} harmonizer: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: invalid {kind} harmonizer ({exc})") from None
