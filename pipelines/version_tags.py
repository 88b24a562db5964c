"""The tags of a registered model version, one record per model kind: what the version is, how it was trained
and chosen, its metrics.

:class:`VersionTags` holds what every kind has (data, run, threshold, backbone, input size, metrics, the
evidence behind the threshold, how it was chosen); each kind adds its own fields in a subclass:

========================  =============  ===================================================================
record                    ``kind`` tag   registered by
========================  =============  ===================================================================
:class:`BankTags`         (none)         ``main`` / ``sweep`` (PRADOT banks), ``multiclass`` (method pradot)
:class:`MemoryBankTags`   memory_bank    ``baseline`` (PatchCore-style), ``multiclass`` (method memory_bank)
:class:`PaDiMTags`        memory_bank    ``baseline memory_bank=padim`` (its ``config`` tag says ``padim``)
:class:`EnsembleTags`     ensemble       ``promote``
:class:`FewShotTags`      fewshot        ``fewshot`` (FOCT)
:class:`VPDMTags`         vpdm           ``multiclass`` (method vpdm)
========================  =============  ===================================================================

The tag of a field is its name; its type is its codec (:class:`_Codec`: text, number, integer, a tuple joined
by the field's separator, ``metric.<name>`` for the metrics, JSON for the config), so ``to_tags`` and
``from_tags`` are exact inverses on every field of every record. :meth:`VersionTags.from_tags` picks the record
from the tags (:func:`record_class`), so it reads the versions of earlier releases, which wrote every kind with
one 44-field record and the same keys (a bank has no kind tag; a PaDiM model is a memory bank whose ``config``
says ``"baseline": "padim"``). Three keys are not field names: ``pradot.kind``
(:data:`pipelines.tags.KIND`, written for every kind but a bank), ``n_members`` (written for an ensemble) and
the sweep's metric (``<sweep_metric>`` = ``sweep_score``).

A new kind: a subclass with ``KIND`` and its fields (``_tag()``), added to :data:`RECORDS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipelines.checks import list_items
from pipelines.tags import KIND

__all__ = [
    "VersionTags",
    "BankTags",
    "MemoryBankTags",
    "PaDiMTags",
    "EnsembleTags",
    "FewShotTags",
    "VPDMTags",
    "RECORDS",
    "KINDS",
    "record_class",
]


def _number(text: str | None) -> float | None:
    try:
        x = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return x if x is not None and math.isfinite(x) else None


def _tag(default: Any = None, sep: str = ",") -> Any:
    """A record field: its tag is the field's name; a tuple is written joined by ``sep``. The field's type
    says how the value is written and read (:class:`_Codec`)."""
    return field(default=default, metadata={"sep": sep})


@dataclass
class VersionTags:
    """What every registered version has. Build a kind's record (:class:`BankTags`, ...); read any version's
    tags with :meth:`from_tags`, which returns the record of its kind."""

    KIND: ClassVar[str] = ""

    dataset: str = _tag("")
    category: str = _tag("")
    run_id: str = _tag("")
    threshold: float | None = _tag()
    backbone: str = _tag("")
    stages: tuple[int, ...] = _tag(())
    image_size: int | None = _tag()
    metrics: dict[str, float] = field(default_factory=dict)  # -> "metric.<name>", rounded to 5 decimals
    config: dict[str, Any] | None = _tag()  # the model's other settings -> tag "config" (JSON)
    # the evidence behind the threshold and the metrics
    calibration_source: str | None = _tag()
    calibration_n_images: int | None = _tag()  # normal images the threshold was calibrated on
    test_metrics: str | None = _tag()  # "complete" | "partial" | "skipped" (pipelines.train.test_metrics_status)
    test_metrics_note: str | None = _tag()  # why test metrics were skipped (the run's metrics/notes.txt, shortened)
    # how it was chosen (a promote or multiclass selection, a sweep's objective)
    objective: str | None = _tag()
    selection: str | None = _tag()
    selection_metric: str | None = _tag()
    selection_split: str | None = _tag()  # the split the choice was made on (validation+pseudo: no test label)

    def __post_init__(self) -> None:
        if type(self) is VersionTags:
            raise TypeError(f"VersionTags is the common part: build one of {[c.__name__ for c in RECORDS.values()]}")

    @property
    def kind(self) -> str:
        """The model kind (one of :data:`KINDS`), written as the ``pradot.kind`` tag (not for a bank)."""
        return self.KIND

    def to_tags(self) -> dict[str, str]:
        """``{tag: str}``; fields left unset (None, empty) are not written, nor the kind of a bank."""
        tags: dict[str, str] = {} if self.KIND == "bank" else {KIND: self.KIND}
        for f, codec in _codecs(type(self)).items():
            value = getattr(self, f.name)
            if f.name == "sweep_score":
                sweep_metric = getattr(self, "sweep_metric", None)
                if sweep_metric and value is not None:
                    tags[sweep_metric] = str(round(float(value), 6))
            elif f.name == "metrics":
                tags.update({f"metric.{k}": str(round(float(v), 5)) for k, v in value.items()})
            elif value not in (None, "", (), {}):
                tags[f.name] = codec.write(value)
        return tags

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> VersionTags:
        """Read :meth:`to_tags`' output (or an earlier release's) as the record of the version's kind (called on
        a subclass: as that record). Unknown tags are ignored, unreadable values left unset."""
        record = record_class(tags) if cls is VersionTags else cls
        values: dict[str, Any] = {}
        for f, codec in _codecs(record).items():
            if f.name == "metrics":
                values["metrics"] = {
                    k[len("metric.") :]: x
                    for k, v in tags.items()
                    if k.startswith("metric.") and (x := _number(v)) is not None
                }
                continue
            key = (values.get("sweep_metric") or "") if f.name == "sweep_score" else f.name
            text = tags.get(key) if key else None
            if text in (None, ""):
                continue
            with contextlib.suppress(ValueError, TypeError):
                value = codec.read(str(text))
                if value is not None:
                    values[f.name] = value
        return record(**values)

    def with_updates(self, **changes: Any) -> VersionTags:
        return dataclasses.replace(self, **changes)


@dataclass
class BankTags(VersionTags):
    """A PRADOT model (its banks): the paper's hyper-parameters, feature options, and a sweep's choice."""

    KIND: ClassVar[str] = "bank"

    alpha: float | None = _tag()
    n: float | None = _tag()
    eta: float | None = _tag()
    epsilon: float | None = _tag()
    batch_size: int | None = _tag()
    epochs: int | None = _tag()
    aggregation: int | None = _tag()
    smoothing_sigma: float | None = _tag()
    feature_metric: str | None = _tag()  # "cosine" | "mahalanobis" (PRADOTConfig.feature_metric)
    # a bank chosen by a sweep
    sweep_run_id: str | None = _tag()
    sweep_rank: int | None = _tag()
    trial_id: str | None = _tag()
    batch_ratio: float | None = _tag()
    epochs_trained: int | None = _tag()
    sweep_metric: str | None = _tag()  # the metric the sweep ranked by; with sweep_score -> tag "<sweep_metric>"
    sweep_score: float | None = _tag()  # rounded to 6 decimals


@dataclass
class MemoryBankTags(VersionTags):
    """A PatchCore-style memory bank: feature options, coreset, smoothing."""

    KIND: ClassVar[str] = "memory_bank"

    aggregation: int | None = _tag()
    smoothing_sigma: float | None = _tag()
    coreset_ratio: float | None = _tag()


@dataclass
class PaDiMTags(MemoryBankTags):
    """A PaDiM-style model: a memory bank to the registry (kind tag ``memory_bank``, so promote takes it as
    one), told apart by its ``config`` tag (``"baseline": "padim"``, as earlier releases wrote it); its
    Gaussian's settings as fields too."""

    covariance: str | None = _tag()  # "eps" | "ledoit_wolf"
    eps: float | None = _tag()
    n_channels: int | None = _tag()

    def __post_init__(self) -> None:
        super().__post_init__()
        self.config = {**(self.config or {}), "baseline": "padim"}


@dataclass
class EnsembleTags(VersionTags):
    """An ensemble (promote): its members, their stages, alphas, kinds and weights, and how they are fused."""

    KIND: ClassVar[str] = "ensemble"

    members: tuple[str, ...] = _tag(())
    normalisation: str | None = _tag()
    member_stages: tuple[tuple[int, ...], ...] = _tag((), sep=";")  # "2;3" or "2,3;3"
    member_alphas: tuple[float, ...] = _tag((), sep=";")  # nan for a member without alpha (a memory bank)
    fusion: str | None = _tag()  # mean | search
    member_weights: tuple[float, ...] = _tag((), sep=";")
    member_kinds: tuple[str, ...] = _tag((), sep=";")

    def to_tags(self) -> dict[str, str]:
        return {**super().to_tags(), "n_members": str(len(self.members))}


@dataclass
class FewShotTags(VersionTags):
    """A few-shot model (FOCT): its support."""

    KIND: ClassVar[str] = "fewshot"

    shots: int | None = _tag()
    support_split: int | None = _tag()
    support: tuple[str, ...] = _tag(())


@dataclass
class VPDMTags(VersionTags):
    """A VPDM model (multi-class): its settings are in the common ``config`` tag."""

    KIND: ClassVar[str] = "vpdm"


#: kind tag -> record; a PaDiM model is read through :func:`record_class`
RECORDS: dict[str, type[VersionTags]] = {
    c.KIND: c for c in (BankTags, MemoryBankTags, EnsembleTags, FewShotTags, VPDMTags)
}
KINDS: tuple[str, ...] = tuple(RECORDS)


def record_class(tags: Mapping[str, str]) -> type[VersionTags]:
    """The record of a version's tags: by its kind tag (none, or one this release does not know: a bank); a
    memory bank whose ``config`` tag says ``"baseline": "padim"`` is a :class:`PaDiMTags`."""
    record = RECORDS.get(tags.get(KIND) or "bank", BankTags)
    if record is MemoryBankTags:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            if json.loads(tags.get("config") or "{}").get("baseline") == "padim":
                return PaDiMTags
    return record


@dataclass(frozen=True)
class _Codec:
    """How one field's value becomes a tag string and back, chosen by the field's type. ``read`` raises
    ValueError (or returns None) on a value it cannot read: the field is then left unset."""

    write: Callable[[Any], str]
    read: Callable[[str], Any]


def _float_text(x: float) -> str:
    return str(x)  # exact: float(str(x)) == x (an int given for a float field stays "4", as earlier releases wrote)


def _finite(text: str) -> float:
    x = _number(text)
    if x is None:
        raise ValueError(f"not a finite number: {text!r}")
    return x


def _codec_for(hint: Any, sep: str) -> _Codec:
    """The codec of a field type: ``str``, ``float``, ``int`` (optional or not), ``tuple[X, ...]`` of those or of
    ``tuple[int, ...]`` (joined by ``sep``, inner tuples by ``,``), ``dict[str, Any]`` (JSON)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = args
        args = list(typing.get_args(hint))
    if hint is str:
        return _Codec(str, str)
    if hint is float:
        return _Codec(_float_text, _finite)
    if hint is int:
        return _Codec(str, lambda t: int(_finite(t)))
    origin = typing.get_origin(hint)
    if origin is dict:
        return _Codec(lambda d: json.dumps(d, sort_keys=True, default=str), json.loads)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = args[0]
        if item is int:  # also "[2, 3]" and "2 3" as earlier releases wrote stages
            return _Codec(lambda v: sep.join(str(int(s)) for s in v), lambda t: tuple(int(s) for s in list_items(t)))
        if item is float:  # nan allowed: a member without the value
            return _Codec(
                lambda v: sep.join(_float_text(x) for x in v), lambda t: tuple(float(x) for x in t.split(sep))
            )
        if item is str:
            return _Codec(lambda v: sep.join(v), lambda t: tuple(x for x in t.split(sep) if x))
        inner = _codec_for(item, ",")
        return _Codec(
            lambda v: sep.join(inner.write(x) for x in v), lambda t: tuple(inner.read(x) for x in t.split(sep))
        )
    raise TypeError(f"a version tag record has no tag codec for the type {hint!r}")


_CODECS: dict[type, dict[dataclasses.Field, _Codec]] = {}


def _codecs(record: type[VersionTags]) -> dict[dataclasses.Field, _Codec]:
    """Each field of ``record`` with its codec (built once per record)."""
    if record not in _CODECS:
        hints = typing.get_type_hints(record)
        fields = dataclasses.fields(record)
        _CODECS[record] = {f: _codec_for(hints[f.name], f.metadata.get("sep", ",")) for f in fields}
    return _CODECS[record]
