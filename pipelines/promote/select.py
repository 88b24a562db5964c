"""Which registered banks enter the ensemble: the best single-stage version per (stage, alpha group), or the
versions the user names; and the checks that they were trained on the data promote evaluates on.

A version's hyper-parameters and metrics are read from its tags with :class:`pipelines.tracking.VersionTags`
(the same type that wrote them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from pipelines.cli import UsageError
from pipelines.config import PromoteOptions
from pipelines.tracking import VersionTags, incomplete

__all__ = ["PromotionError", "Member", "Selection", "select_members", "select_best", "resolve_explicit",
           "check_members", "download_member"]

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

    def describe(self) -> str:
        st = ",".join(map(str, self.tags.stages)) or "?"
        a = "?" if self.tags.alpha is None else f"{self.tags.alpha:g}"
        return f"{self.ref} (stage {st}, alpha {a})"

    def short(self) -> str:
        """``s2 a0.3`` (figure columns)."""
        if self.tags.alpha is None:
            return self.ref
        return f"s{','.join(map(str, self.tags.stages))} a{self.tags.alpha:g}"


@dataclass
class Selection:
    members: list[Member]
    mode: str  # "explicit" | "best per (stage, alpha group)"
    notes: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)


def _member(client, version, metric: str) -> Member:
    tags = VersionTags.from_tags(version.tags)
    if not tags.run_id and version.run_id:
        tags.run_id = version.run_id
    value = tags.metrics.get(metric)
    if value is None and tags.run_id:
        try:
            value = client.get_run(tags.run_id).data.metrics.get(metric)
        except Exception:  # noqa: BLE001 - a deleted run: no metric
            value = None
    return Member(version.name, str(version.version), tags, value)


def _training_hint(dataset: str, category: str) -> str:
    return (f"train members first, e.g. the paper's four with one command:\n"
            f"  mlflow run . --env-manager local -e reproduce -P dataset={dataset} -P category={category}\n"
            f"or one bank at a time:\n"
            f"  mlflow run . --env-manager local -P dataset={dataset} -P category={category} "
            f"-P stages=[2] -P alpha=0   (and stages=[3], alpha=0.3)")


def select_best(client, name: str, metric: str, dataset: str, category: str) -> Selection:
    """The best single-stage version per (stage, alpha group) of ``name`` by ``metric`` (ties: the newest).
    Multi-stage banks are left out (they already average their stages): listed in ``excluded``."""
    from mlflow.exceptions import MlflowException

    try:
        versions = list(client.search_model_versions(f"name='{name}'"))
    except MlflowException:
        versions = []
    if not versions:
        raise PromotionError(f"no registered versions of the model {name!r} to build an ensemble from; "
                             + _training_hint(dataset, category))
    groups: dict[tuple[int, str], Member] = {}
    sel = Selection([], "best per (stage, alpha group)")
    for v in versions:
        if why := incomplete(client, v):  # half-registered (e.g. a crash during registration): never a member
            sel.excluded.append(f"{v.name}/{v.version}: incomplete, {why}")
            continue
        m = _member(client, v, metric)
        stages, alpha = m.tags.stages, m.tags.alpha
        if len(stages) != 1 or alpha is None:
            why = (f"multi-stage bank (stages {','.join(map(str, stages))})" if len(stages) > 1
                   else "no 'stages'/'alpha' version tags")
            sel.excluded.append(f"{m.ref}: {why}")
            continue
        if m.metric_value is None or not math.isfinite(m.metric_value):
            sel.excluded.append(f"{m.ref}: no metric.{metric} tag nor run metric {metric!r}")
            continue
        key = (stages[0], "alpha=0" if alpha == 0 else "alpha>0")
        best = groups.get(key)
        if best is None or (m.metric_value, int(m.version)) > (best.metric_value, int(best.version)):
            groups[key] = m
    if not groups:
        raise PromotionError(
            f"the model {name!r} has {len(versions)} version(s) but none is a single-stage bank with a "
            f"{metric!r} metric ({'; '.join(sel.excluded)}). The paper's ensemble averages single-stage banks "
            f"(stages 2 and 3, alpha 0 and > 0); pass members=name/version,... to use these versions anyway"
            + (", or select_by=val_auroc to rank sweep-registered versions by their validation objective"
               if metric != "val_auroc" and any("metric.val_auroc" in v.tags for v in versions) else "")
            + ", or " + _training_hint(dataset, category))
    sel.members = [groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1] != "alpha=0"))]
    for k, m in sorted(groups.items()):
        sel.notes.append(f"group stage {k[0]} {k[1]}: {m.ref} ({metric}={m.metric_value:.4f})")
    missing = [f"stage {s} {g}" for s in (2, 3) for g in ("alpha=0", "alpha>0") if (s, g) not in groups]
    if missing:
        sel.notes.append(f"no registered bank for: {', '.join(missing)} (the paper's ensemble has all four)")
    return sel


def _version(client, raw: str):
    """``name/version``, ``models:/name/version`` or ``name@alias`` -> the registered version."""
    from mlflow.exceptions import MlflowException

    ref = raw[len("models:/"):] if raw.startswith("models:/") else raw
    if "@" in ref:
        name, alias = ref.rsplit("@", 1)
        try:
            return client.get_model_version_by_alias(name, alias)
        except MlflowException as e:
            raise PromotionError(f"member {raw!r}: no alias {alias!r} on the model {name!r} "
                                 f"({e.message.splitlines()[0]})") from None
    name, sep, version = ref.rpartition("/")
    if not sep or not name or not version.isdigit():
        raise PromotionError(f"member {raw!r} is not 'name/version' (e.g. pradot-mvtec_loco-screw_bag/3), "
                             f"'models:/name/version' or 'name@alias'")
    try:
        return client.get_model_version(name, version)
    except MlflowException:
        try:
            existing = sorted(int(x.version) for x in client.search_model_versions(f"name='{name}'"))
        except MlflowException:
            existing = []
        what = (f"the model {name!r} has versions {existing}" if existing
                else f"there is no registered model named {name!r}")
        raise PromotionError(f"member {raw!r} does not exist: {what}") from None


def resolve_explicit(client, refs: Sequence[str], metric: str) -> Selection:
    """The versions named by ``refs`` (or an error naming what exists)."""
    members: list[Member] = []
    for raw in refs:
        version = _version(client, raw)
        if why := incomplete(client, version):
            raise PromotionError(f"member {raw!r} is an incomplete registration ({why}); register it again or "
                                 f"choose another version")
        m = _member(client, version, metric)
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
    return [(k, trained[k], ours.get(k)) for k in keys
            if trained.get(k) not in (None, "") and str(trained[k]) != str(ours.get(k))]


def check_members(client, members: Sequence[Member], data_params: dict[str, str]) -> list[str]:
    """Refuse members trained on other data than promote evaluates on (``data_params``: promote's flattened
    data settings, ``data.kind``, ``category``, ...); return notes."""
    notes = []
    for m in members:
        for key, want in (("dataset", data_params.get("data.kind")), ("category", data_params.get("category"))):
            have = getattr(m.tags, key)
            if have and have != want:
                raise PromotionError(f"member {m.ref} was trained on {key} {have!r}, but promote evaluates on "
                                     f"{want!r}; pass dataset/category of the members (or other members)")
        if m.tags.kind == "ensemble":
            raise PromotionError(f"member {m.ref} is an ensemble, not a single PRADOT bank; ensembles cannot be "
                                 f"members (list its members instead: its 'members' tag)")
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
                f"training's data overrides to promote too (e.g. overrides=\"experiment=ci\" or "
                f"data.generator.*=...), so the ensemble is evaluated on the members' test split")
        if params.get("data.resolved_root"):
            notes.append(f"{m.ref}: trained on data under {params['data.resolved_root']}")
    return notes


def select_members(client, opts: PromoteOptions, name: str, data_params: dict[str, str]) -> Selection:
    """The members (explicit or best per group), checked against promote's data."""
    if opts.members:
        sel = resolve_explicit(client, opts.members, opts.metric)
    else:
        sel = select_best(client, name, opts.selection_metric, data_params.get("data.kind", ""),
                          data_params.get("category", ""))
    sel.notes.extend(check_members(client, sel.members, data_params))
    if len(sel.members) == 1:
        sel.notes.append("an ensemble of one member scores exactly as that member")
    return sel


def download_member(member: Member, dst: Path) -> Path:
    """The member's PRADOT ``.pt`` file, downloaded from the registry."""
    import mlflow

    from pradot.checkpoint import MODEL_FORMAT, file_format

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{member.name}/{member.version}",
                                                     dst_path=str(dst)))
    found = []
    for p in sorted(local.rglob("*.pt")):
        try:
            fmt = file_format(p)
        except ValueError:
            continue
        if fmt == MODEL_FORMAT:
            return p
        found.append(f"{p.name} ({fmt})")
    raise PromotionError(f"member {member.ref}: no PRADOT model file (format {MODEL_FORMAT}) in its artifacts "
                         f"({', '.join(found) or 'no .pt files'}); ensembles cannot be members")
