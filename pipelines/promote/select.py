"""Which registered versions are promote's candidates: every version of the model (or the ones the user
names), the newest registered memory-bank baseline, and the checks that they were trained on the data promote
evaluates on. Nothing here ranks by a test metric: :mod:`pipelines.promote.choose` scores the candidates on
the validation objective.

A version's hyper-parameters and metrics are read from its tags with :class:`pipelines.registry.VersionTags`
(the same type that wrote them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.cli import UsageError
from pipelines.promote_settings import PromoteOptions
from pipelines.registry import BankTags, VersionTags, incomplete

__all__ = [
    "PromotionError",
    "Member",
    "Selection",
    "select_members",
    "select_best",
    "resolve_explicit",
    "check_members",
    "download_member",
    "group_key",
    "newest_baseline",
]

#: training-run params that define the evaluation data; a member trained on other data is refused
DATA_PARAMS = ("data.kind", "category", "data.validation_fraction")


class PromotionError(UsageError):
    """Bad input for promotion (no members, a missing member, bad options): nothing is registered."""


@dataclass
class Member:
    """A registered bank: its reference, its tags and the metric that ranks it."""

    name: str
    version: str
    tags: VersionTags
    metric_value: float | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def alpha(self) -> float | None:
        """A PRADOT bank's alpha (None for other kinds, or when its tags do not say)."""
        return self.tags.alpha if isinstance(self.tags, BankTags) else None

    def describe(self) -> str:
        st = ",".join(map(str, self.tags.stages)) or "?"
        if self.tags.kind == "memory_bank":
            return f"{self.ref} (memory bank, stage {st})"
        a = "?" if self.alpha is None else f"{self.alpha:g}"
        return f"{self.ref} (stage {st}, alpha {a})"

    def short(self) -> str:
        """``s2 a0.3`` (figure columns)."""
        if self.tags.kind == "memory_bank":
            return f"MB s{','.join(map(str, self.tags.stages))}"
        if self.alpha is None:
            return self.ref
        return f"s{','.join(map(str, self.tags.stages))} a{self.alpha:g}"


@dataclass
class Selection:
    members: list[Member]  # the candidates
    mode: str  # "explicit" | "every registered version"
    notes: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    baseline: Member | None = None  # the newest registered memory-bank baseline (None: promote fits one)


def _member(client, version, metric: str | None = None) -> Member:
    tags = VersionTags.from_tags(version.tags)
    if not tags.run_id and version.run_id:
        tags.run_id = version.run_id
    value = tags.metrics.get(metric) if metric else None
    return Member(version.name, str(version.version), tags, value)


def group_key(member: Member) -> tuple:
    """The candidates' groups: memory banks by stages; PRADOT banks by stages and alpha = 0 (global prototypes)
    vs alpha > 0 (local); the best of each group on the validation objective goes on."""
    stages = tuple(member.tags.stages)
    if member.tags.kind == "memory_bank":
        return ("memory_bank", stages)
    alpha = member.alpha
    return ("bank", stages, "alpha=?" if alpha is None else "alpha=0" if alpha == 0 else "alpha>0")


def _training_hint(dataset: str, category: str) -> str:
    return (
        f"train members first, e.g. the paper's four with one command:\n"
        f"  mlflow run . --env-manager local -e reproduce -P dataset={dataset} -P category={category}\n"
        f"or one bank at a time:\n"
        f"  mlflow run . --env-manager local -P dataset={dataset} -P category={category} "
        f"-P stages=[2] -P alpha=0   (and stages=[3], alpha=0.3)"
    )


def _versions(client, name: str) -> list:
    from mlflow.exceptions import MlflowException

    try:
        return list(client.search_model_versions(f"name='{name}'"))
    except MlflowException:
        return []


def select_best(client, name: str, select_by: str | None, dataset: str, category: str) -> Selection:
    """Every registered version of ``name`` that can be a member (ensembles are left out); with ``select_by``
    (a ``val_*`` version tag, e.g. the sweep's ``val_objective``), of the versions that carry the tag only the
    best per group by it, and every version without it (e.g. a model trained with ``mlflow run .``): all of
    them are then scored on promote's own validation objective (:mod:`pipelines.promote.choose`), so none is
    left out for a missing tag."""
    versions = _versions(client, name)
    if not versions:
        raise PromotionError(
            f"no registered versions of the model {name!r} to build an ensemble from; "
            + _training_hint(dataset, category)
        )
    sel = Selection([], "every registered version")
    groups: dict[tuple, list[Member]] = {}
    untagged: list[Member] = []
    for v in versions:
        if why := incomplete(client, v):  # half-registered (e.g. a crash during registration): never a member
            sel.excluded.append(f"{v.name}/{v.version}: incomplete, {why}")
            continue
        m = _member(client, v, select_by)
        if m.tags.kind == "ensemble":
            sel.excluded.append(f"{m.ref}: an ensemble")
            continue
        if select_by and (m.metric_value is None or not math.isfinite(m.metric_value)):
            untagged.append(m)
            continue
        groups.setdefault(group_key(m), []).append(m)
    for key in sorted(groups, key=str):
        ms = sorted(groups[key], key=lambda m: int(m.version))
        if select_by:
            best = max(ms, key=lambda m: (m.metric_value, int(m.version)))
            sel.notes.append(f"group {key}: {best.ref} ({select_by}={best.metric_value:.4f}, select_by)")
            ms = [best]
        sel.members.extend(ms)
    for m in sorted(untagged, key=lambda m: int(m.version)):  # scored with the others on promote's objective
        sel.notes.append(f"{m.ref}: no {select_by} tag; a candidate all the same, scored on promote's objective")
        sel.members.append(m)
    if not sel.members:
        raise PromotionError(
            f"the model {name!r} has {len(versions)} version(s) but none can be a member ({'; '.join(sel.excluded)}); "
            f"pass members=name/version,... or " + _training_hint(dataset, category)
        )
    return sel


def newest_baseline(client, name: str) -> Member | None:
    """The newest registered version of the memory-bank baseline ``name`` (None when there is none)."""
    versions = [v for v in _versions(client, name)]
    if not versions:
        return None
    return _member(client, max(versions, key=lambda v: int(v.version)))


def _version(client, raw: str):
    """``name/version``, ``models:/name/version`` or ``name@alias`` -> the registered version."""
    from mlflow.exceptions import MlflowException

    ref = raw[len("models:/") :] if raw.startswith("models:/") else raw
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        try:
            return client.get_model_version_by_alias(name, alias)
        except MlflowException as e:
            raise PromotionError(
                f"member {raw!r}: no alias {alias!r} on the model {name!r} ({e.message.splitlines()[0]})"
            ) from None
    name, sep, version = ref.rpartition("/")
    if not sep or not name or not version.isdigit():
        raise PromotionError(
            f"member {raw!r} is not 'name/version' (e.g. pradot-mvtec_loco-screw_bag/3), "
            f"'models:/name/version' or 'name@alias'"
        )
    try:
        return client.get_model_version(name, version)
    except MlflowException:
        try:
            existing = sorted(int(x.version) for x in client.search_model_versions(f"name='{name}'"))
        except MlflowException:
            existing = []
        what = (
            f"the model {name!r} has versions {existing}"
            if existing
            else f"there is no registered model named {name!r}"
        )
        raise PromotionError(f"member {raw!r} does not exist: {what}") from None


def resolve_explicit(client, refs: Sequence[str]) -> Selection:
    """The versions named by ``refs`` (or an error naming what exists)."""
    members: list[Member] = []
    for raw in refs:
        version = _version(client, raw)
        if why := incomplete(client, version):
            raise PromotionError(
                f"member {raw!r} is an incomplete registration ({why}); register it again or choose another version"
            )
        m = _member(client, version)
        if any(x.ref == m.ref for x in members):
            raise PromotionError(f"member {m.ref} is listed twice")
        members.append(m)
    if not members:
        raise PromotionError("members= is empty; give name/version,... or leave it out to pick the best banks")
    return Selection(members, "explicit")


def _data_mismatch(params: dict, ours: dict) -> list[tuple[str, str, str | None]]:
    """(key, trained with, promote has) for the data params that differ."""
    # train logs the resolved config; under `mlflow run` a resolved value that differs from the MLproject
    # parameter as given is logged as resolved.<key>
    trained = {k: params.get(f"resolved.{k}", params.get(k)) for k in params if not k.startswith("resolved.")}
    keys = list(DATA_PARAMS) + sorted(k for k in trained if k.startswith("data.generator."))
    if float(trained.get("data.validation_fraction") or ours.get("data.validation_fraction") or 0) > 0:
        keys.append("seed")  # the held-out validation split depends on the seed
    return [
        (k, trained[k], ours.get(k))
        for k in keys
        if trained.get(k) not in (None, "") and str(trained[k]) != str(ours.get(k))
    ]


def check_members(client, members: Sequence[Member], data_params: dict[str, str]) -> list[str]:
    """Refuse members trained on other data than promote evaluates on (``data_params``: promote's flattened
    data settings, ``data.kind``, ``category``, ...); return notes."""
    notes = []
    for m in members:
        for key, want in (("dataset", data_params.get("data.kind")), ("category", data_params.get("category"))):
            have = getattr(m.tags, key)
            if have and have != want:
                raise PromotionError(
                    f"member {m.ref} was trained on {key} {have!r}, but promote evaluates on "
                    f"{want!r}; pass dataset/category of the members (or other members)"
                )
        if m.tags.kind == "ensemble":
            raise PromotionError(
                f"member {m.ref} is an ensemble, not a single PRADOT bank or memory bank; ensembles "
                f"cannot be members (list its members instead: its 'members' tag)"
            )
        if not m.tags.run_id:
            notes.append(f"{m.ref}: no training run recorded; its data settings were not checked")
            continue
        try:
            params = client.get_run(m.tags.run_id).data.params
        except Exception:  # noqa: BLE001
            notes.append(f"{m.ref}: training run {m.tags.run_id} not found; its data settings were not checked")
            continue
        diff = _data_mismatch(params, data_params)
        if diff:
            shown = ", ".join(f"{k}: trained with {a!r}, promote has {b!r}" for k, a, b in diff)
            raise PromotionError(
                f"member {m.ref} was trained on other data than promote would evaluate on ({shown}). Pass the "
                f'training\'s data overrides to promote too (e.g. overrides="experiment=ci" or '
                f"data.generator.*=...), so the ensemble is evaluated on the members' test split"
            )
        if params.get("data.resolved_root"):
            notes.append(f"{m.ref}: trained on data under {params['data.resolved_root']}")
    return notes


def select_members(
    client, opts: PromoteOptions, name: str, data_params: dict[str, str], baseline_name: str | None = None
) -> Selection:
    """The candidates (explicit or every registered version) and the newest registered baseline, checked against
    promote's data."""
    if opts.members:
        sel = resolve_explicit(client, opts.members)
    else:
        sel = select_best(
            client, name, opts.select_by, data_params.get("data.kind", ""), data_params.get("category", "")
        )
    if baseline_name:
        sel.baseline = newest_baseline(client, baseline_name)
        if sel.baseline is not None and any(m.ref == sel.baseline.ref for m in sel.members):
            sel.baseline = next(m for m in sel.members if m.ref == sel.baseline.ref)
    checked = sel.members + ([sel.baseline] if sel.baseline is not None and sel.baseline not in sel.members else [])
    sel.notes.extend(check_members(client, checked, data_params))
    return sel


def download_member(member: Member, dst: Path) -> Path:
    """The member's model file (a PRADOT bank or a memory bank), downloaded from the registry."""
    import mlflow

    from pradot.checkpoint import MEMORY_BANK_FORMAT, MODEL_FORMAT, file_format

    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{member.name}/{member.version}", dst_path=str(dst))
    )
    found = []
    for p in sorted(local.rglob("*.pt")):
        try:
            fmt = file_format(p)
        except ValueError:
            continue
        if fmt in (MODEL_FORMAT, MEMORY_BANK_FORMAT):
            return p
        found.append(f"{p.name} ({fmt})")
    raise PromotionError(
        f"member {member.ref}: no PRADOT model or memory-bank file ({MODEL_FORMAT}, "
        f"{MEMORY_BANK_FORMAT}) in its artifacts ({', '.join(found) or 'no .pt files'}); "
        f"ensembles cannot be members"
    )
