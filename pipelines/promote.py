"""MLflow entry point `promote`: build the paper's ensemble from registered banks, compare it with its
members, register it and move the ``champion`` alias to it when it beats the current champion.

    python pipelines/promote.py category=screw_bag data=mvtec_loco [members=...] [metric=image_auroc]
        [select_by=val_auroc] [normalisation=none|per_member] [alias=champion] [force=false] [hydra overrides...]
    mlflow run . -e promote -P category=screw_bag [-P members=pradot-mvtec_loco-screw_bag/1,...]

Members:
* default: among the versions of ``pradot-<dataset>-<category>`` (``tracking.model_name``), the best one
  (by the version tag ``metric.<metric>``, else the training run's metric; ties: the newest) of each
  (stage, alpha group) with alpha group "alpha=0" (global prototypes) vs "alpha>0" (local): at most four
  members, the paper's (2, 0), (2, 0.3), (3, 0), (3, 0.3). Only **single-stage** banks (version tag
  ``stages`` with one stage) form these groups. Multi-stage banks (``stages=2,3``) are left out of the
  default selection: such a bank already averages its stages' maps, so adding it next to single-stage
  banks would count those stages twice; they are listed in the run (``pradot.excluded``) and can be used
  explicitly.
* ``select_by=<metric>``: rank the default candidates by another version metric than ``metric``, e.g.
  ``select_by=val_auroc`` for sweep-registered versions, which carry ``metric.val_auroc`` (the sweep's
  validation objective) and no test metrics. The ensemble is still compared and promoted on ``metric``.
* ``members=name/version,name/version,...`` (also ``models:/name/version`` or ``name@alias``): exactly
  these versions (a missing one is an error naming the versions that exist).

Then, in one MLflow run (tag ``pradot.entry_point=promote``): download each member's ``.pt`` from the
registry, score the validation and test splits once per member (members sharing backbone weights share
the backbone pass), fuse the maps (``pradot.ensemble``: the mean, optionally after per-member
standardisation on validation normals), compute every model's metrics on the test split with the
engine's official definitions, log the comparison (``comparison/comparison.csv`` / ``.md``), a bar chart
and overlays (members vs ensemble), calibrate the ensemble's threshold on the validation normals,
register the ensemble (one ``pradot-ensemble-v1`` file served by the same pyfunc and contract as a
single bank) as ``<model name>-ensemble`` with tags (members, metrics, ...) and move the alias when the
new version's ``metric.<metric>`` is strictly higher than the champion's (``force=true``: always). The
decision is printed and recorded as the tag ``pradot.promotion`` on the run and the new version.

The data options must be those the members were trained with (pass the same ``overrides``, e.g.
``experiment=ci``): promote checks the members' training-run parameters (dataset kind, category,
synthetic generator, validation fraction / seed) and refuses a mismatch rather than evaluating on
other data (or regenerating a synthetic dataset). Members with different image sizes are accepted: the
ensemble works at the first member's size and the other members' maps are resized (a note is logged).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compose, flatten, parse_overrides, run_log, setup_tracking  # noqa: E402

log = logging.getLogger("pradot.promote")

#: promote's own options (everything else is a Hydra override of conf/)
OPTION_KEYS = ("members", "metric", "select_by", "normalisation", "alias", "force", "ensemble_name")
#: metrics shown in the markdown table / bar chart when present (the CSV has all of them)
SHOWN_METRICS = ("image_auroc", "image_auroc_logical_anomalies", "image_auroc_structural_anomalies",
                 "au_spro_0.05", "au_spro_0.3", "pixel_auroc", "au_pro_0.3")
#: training-run params that define the evaluation data; a member trained on other data is refused
DATA_PARAMS = ("data.kind", "category", "data.validation_fraction")


class PromotionError(ValueError):
    """Bad input for promotion (no members, a missing member, bad options): nothing is registered."""


@dataclass
class Options:
    members: list[str] | None = None
    metric: str = "image_auroc"
    select_by: str | None = None  # the version metric that picks the default members (default: metric)
    normalisation: str = "none"
    alias: str = "champion"
    force: bool = False
    ensemble_name: str | None = None

    @property
    def selection_metric(self) -> str:
        """What ranks the default candidates: ``select_by``, else ``metric``."""
        return self.select_by or self.metric


@dataclass
class Member:
    name: str
    version: str
    tags: dict
    run_id: str | None
    metric_value: float | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def stages(self) -> tuple[int, ...]:
        s = self.tags.get("stages", "")
        try:
            return tuple(int(x) for x in str(s).replace("[", "").replace("]", "").split(",") if x.strip())
        except ValueError:
            return ()

    @property
    def alpha(self) -> float | None:
        try:
            return float(self.tags["alpha"])
        except (KeyError, ValueError):
            return None

    def describe(self) -> str:
        st = ",".join(map(str, self.stages)) or "?"
        a = "?" if self.alpha is None else f"{self.alpha:g}"
        return f"{self.ref} (stage {st}, alpha {a})"


@dataclass
class Selection:
    members: list[Member]
    mode: str  # "explicit" | "best per (stage, alpha group)"
    notes: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ arguments
def split_argv(argv: Sequence[str]) -> tuple[Options, list[str]]:
    """promote's options and the Hydra overrides (data, category, calibration, ...)."""
    items = parse_overrides(argv)
    opts = Options()
    rest = []
    for it in items:
        key, value = it.split("=", 1)
        if key == "members":
            opts.members = [m.strip() for m in value.split(",") if m.strip()] or None
        elif key == "metric":
            opts.metric = value.strip()
        elif key == "select_by":
            opts.select_by = value.strip() or None
        elif key == "normalisation":
            if value not in ("none", "per_member"):
                raise PromotionError(f"normalisation must be 'none' (the paper: mean of the maps) or 'per_member' "
                                     f"(standardise each member's map on validation normals), got {value!r}")
            opts.normalisation = value
        elif key == "alias":
            opts.alias = value.strip()
        elif key == "force":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise PromotionError(f"force must be true or false, got {value!r}")
            opts.force = value.lower() in ("true", "1", "yes")
        elif key == "ensemble_name":
            opts.ensemble_name = value.strip()
        else:
            rest.append(it)
    return opts, rest


def base_model_name(cfg) -> str:
    return str(cfg.tracking.get("model_name") or f"pradot-{cfg.data.kind}-{cfg.category}")


# ------------------------------------------------------------------------------------ members
def _metric_of(client, version, metric: str) -> float | None:
    v = version.tags.get(f"metric.{metric}")
    if v not in (None, ""):
        try:
            return float(v)
        except ValueError:
            pass
    run_id = version.tags.get("run_id") or version.run_id
    if run_id:
        try:
            return client.get_run(run_id).data.metrics.get(metric)
        except Exception:  # noqa: BLE001 - a deleted run: no metric
            return None
    return None


def _member(client, version, metric: str) -> Member:
    return Member(name=version.name, version=str(version.version), tags=dict(version.tags),
                  run_id=version.tags.get("run_id") or version.run_id,
                  metric_value=_metric_of(client, version, metric))


def _training_hint(cfg) -> str:
    return (f"train members first, e.g. the paper's four with one command:\n"
            f"  mlflow run . --env-manager local -e reproduce -P dataset={cfg.data.kind} -P category={cfg.category}\n"
            f"or one bank at a time:\n"
            f"  mlflow run . --env-manager local -P dataset={cfg.data.kind} -P category={cfg.category} "
            f"-P stages=[2] -P alpha=0   (and stages=[3], alpha=0.3)")


def select_best(client, name: str, metric: str, cfg) -> Selection:
    """The best single-stage version per (stage, alpha group) of ``name`` (see the module docstring)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = list(client.search_model_versions(f"name='{name}'"))
    except MlflowException:
        versions = []
    if not versions:
        raise PromotionError(f"no registered versions of the model {name!r} to build an ensemble from; "
                             + _training_hint(cfg))
    groups: dict[tuple[int, str], Member] = {}
    sel = Selection([], "best per (stage, alpha group)")
    for v in versions:
        m = _member(client, v, metric)
        stages, alpha = m.stages, m.alpha
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
            + ", or " + _training_hint(cfg))
    sel.members = [groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1] != "alpha=0"))]
    for k, m in sorted(groups.items()):
        sel.notes.append(f"group stage {k[0]} {k[1]}: {m.ref} ({metric}={m.metric_value:.4f})")
    missing = [f"stage {s} {g}" for s in (2, 3) for g in ("alpha=0", "alpha>0") if (s, g) not in groups]
    if missing:
        sel.notes.append(f"no registered bank for: {', '.join(missing)} (the paper's ensemble has all four)")
    return sel


def resolve_explicit(client, refs: Sequence[str], metric: str) -> Selection:
    """``name/version``, ``models:/name/version`` or ``name@alias`` -> registered versions (or an error)."""
    from mlflow.exceptions import MlflowException

    members: list[Member] = []
    for raw in refs:
        ref = raw[len("models:/"):] if raw.startswith("models:/") else raw
        if "@" in ref:
            name, alias = ref.rsplit("@", 1)
            try:
                v = client.get_model_version_by_alias(name, alias)
            except MlflowException as e:
                raise PromotionError(f"member {raw!r}: no alias {alias!r} on the model {name!r} "
                                     f"({e.message.splitlines()[0]})") from None
        else:
            name, sep, version = ref.rpartition("/")
            if not sep or not name or not version.isdigit():
                raise PromotionError(f"member {raw!r} is not 'name/version' (e.g. pradot-mvtec_loco-screw_bag/3), "
                                     f"'models:/name/version' or 'name@alias'")
            try:
                v = client.get_model_version(name, version)
            except MlflowException:
                try:
                    existing = sorted(int(x.version) for x in client.search_model_versions(f"name='{name}'"))
                except MlflowException:
                    existing = []
                what = (f"the model {name!r} has versions {existing}" if existing
                        else f"there is no registered model named {name!r}")
                raise PromotionError(f"member {raw!r} does not exist: {what}") from None
        m = _member(client, v, metric)
        if any(x.ref == m.ref for x in members):
            raise PromotionError(f"member {m.ref} is listed twice")
        members.append(m)
    if not members:
        raise PromotionError("members= is empty; give name/version,... or leave it out to pick the best banks")
    return Selection(members, "explicit")


def check_members(client, members: Sequence[Member], cfg) -> list[str]:
    """Refuse members trained on other data than the one promote evaluates on; return notes."""
    notes = []
    ours = flatten(cfg)
    ours["data.kind"] = str(cfg.data.kind)
    for m in members:
        for key, want in (("dataset", str(cfg.data.kind)), ("category", str(cfg.category))):
            have = m.tags.get(key)
            if have is not None and have != want:
                raise PromotionError(f"member {m.ref} was trained on {key} {have!r}, but promote evaluates on "
                                     f"{want!r}; pass dataset/category of the members (or other members)")
        if m.tags.get("pradot.kind") == "ensemble" or m.tags.get("pradot.format", "pradot-model-v1") != "pradot-model-v1":
            raise PromotionError(f"member {m.ref} is an ensemble, not a single PRADOT bank; ensembles cannot be "
                                 f"members (list its members instead: its 'members' tag)")
        if not m.run_id:
            notes.append(f"{m.ref}: no training run recorded; its data settings were not checked")
            continue
        try:
            params = client.get_run(m.run_id).data.params
        except Exception:  # noqa: BLE001
            notes.append(f"{m.ref}: training run {m.run_id} not found; its data settings were not checked")
            continue
        # train.py logs the resolved config; under `mlflow run` a resolved value that differs from the
        # MLproject parameter as given is logged as resolved.<key>
        trained = {k: params.get(f"resolved.{k}", params.get(k)) for k in params if not k.startswith("resolved.")}
        keys = list(DATA_PARAMS) + sorted(k for k in trained if k.startswith("data.generator."))
        if float(trained.get("data.validation_fraction") or ours.get("data.validation_fraction") or 0) > 0:
            keys.append("seed")  # the held-out validation split depends on the seed
        diff = [(k, trained[k], ours.get(k)) for k in keys
                if trained.get(k) not in (None, "") and str(trained[k]) != str(ours.get(k))]
        if diff:
            shown = ", ".join(f"{k}: trained with {a!r}, promote has {b!r}" for k, a, b in diff)
            raise PromotionError(
                f"member {m.ref} was trained on other data than promote would evaluate on ({shown}). Pass the "
                f"training's data overrides to promote too (e.g. overrides=\"experiment=ci\" or "
                f"data.generator.*=...), so the ensemble is evaluated on the members' test split")
        root = params.get("data.resolved_root")
        if root:
            notes.append(f"{m.ref}: trained on data under {root}")
    return notes


def download_member(member: Member, dst: Path) -> Path:
    """The member's PRADOT ``.pt`` file, downloaded from the registry."""
    import mlflow

    from pradot.ensemble import file_format
    from pradot.model import FORMAT

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{member.name}/{member.version}",
                                                     dst_path=str(dst)))
    found = []
    for p in sorted(local.rglob("*.pt")):
        try:
            fmt = file_format(p)
        except ValueError:
            continue
        if fmt == FORMAT:
            return p
        found.append(f"{p.name} ({fmt})")
    raise PromotionError(f"member {member.ref}: no PRADOT model file (format {FORMAT}) in its artifacts "
                         f"({', '.join(found) or 'no .pt files'}); ensembles cannot be members")


# ------------------------------------------------------------------------------------ evaluation
class _StackedMembers:
    """For ``engine.score_samples``: maps (B, K, S, S) and scores (B, K) of the K members at once."""

    def __init__(self, ensemble):
        self.ensemble = ensemble
        self.config = ensemble.config

    def score(self, images):
        import torch

        maps = torch.stack(self.ensemble.member_maps(images), 1)
        return maps, maps.flatten(2).amax(2)


def score_members(ensemble, samples, image_size: int, batch_size: int):
    """One ``Scored`` per member (maps at the ensemble's size), via ``engine.score_samples``."""
    from pradot.engine import Scored, score_samples

    K = len(ensemble)
    if not samples:
        empty = np.zeros((0, image_size, image_size), np.float32)
        return [Scored([], empty, np.zeros(0), 0.0) for _ in range(K)]
    st = score_samples(_StackedMembers(ensemble), samples, image_size, batch_size)
    return [Scored(st.samples, np.ascontiguousarray(st.maps[:, k]), st.scores[:, k], st.seconds) for k in range(K)]


def fuse_scored(ensemble, members):
    """The ensemble's ``Scored`` from its members' (after ``fit_normalisation`` when per_member)."""
    import torch

    from pradot.engine import Scored

    t0 = time.perf_counter()
    fmaps, fscores = ensemble.fuse([torch.from_numpy(m.maps) for m in members])
    return Scored(members[0].samples, fmaps.numpy().astype(np.float32), fscores.numpy(),
                  members[0].seconds + time.perf_counter() - t0)


def comparison_rows(labels, flats) -> tuple[list[str], list[dict]]:
    keys = sorted({k for f in flats for k in f})
    rows = [{"model": lab, **{k: f.get(k, float("nan")) for k in keys}} for lab, f in zip(labels, flats)]
    return keys, rows


def to_csv(keys, rows) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["model", *keys])
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def to_markdown(keys, rows, metric: str) -> str:
    shown = [k for k in dict.fromkeys([metric, *SHOWN_METRICS]) if k in keys]
    lines = ["| model | " + " | ".join(shown) + " |", "|---|" + "---|" * len(shown)]
    for r in rows:
        lines.append(f"| {r['model']} | " + " | ".join("" if math.isnan(r[k]) else f"{r[k]:.4f}" for k in shown) + " |")
    return "\n".join(lines) + "\n"


def bar_figure(keys, rows, metric: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [k for k in dict.fromkeys([metric, *SHOWN_METRICS]) if k in keys][:6]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(shown) * max(1, len(rows)) / 3), 4), layout="constrained")
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(shown))
    for j, r in enumerate(rows):
        vals = [r[k] for k in shown]
        ax.bar(x + j * width - 0.4 + width / 2, vals, width, label=r["model"],
               color=("black" if j == len(rows) - 1 else None), alpha=0.85)
    ax.set_xticks(x, shown, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("value")
    ax.set_title("members vs ensemble (test split)")
    ax.legend(fontsize=7, loc="lower right")
    return fig


def overlay_figure(dataset, scored_list, labels, image_size: int, k: int):
    """A few test images (most anomalous by the ensemble first, then one normal): one row per image,
    columns = image (ground truth outlined) | each member's map | the ensemble's map. Each column has
    its own colour scale (the 1st-99.9th percentile of that model's test maps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pradot.data import read_image

    ens = scored_list[-1]
    order = np.argsort(-ens.scores)
    pick = [i for i in order if ens.samples[i].label == 1][: max(1, k - 1)]
    pick += [i for i in order[::-1] if ens.samples[i].label == 0][:1]
    pick = pick or list(order[:k])
    ranges = [(float(np.percentile(s.maps, 1)), float(np.percentile(s.maps, 99.9))) for s in scored_list]
    cols = 1 + len(scored_list)
    fig, axes = plt.subplots(len(pick), cols, figsize=(2.2 * cols, 2.3 * len(pick)), squeeze=False,
                             layout="constrained")
    for r, i in enumerate(pick):
        s = ens.samples[i]
        img = read_image(s.image_path, image_size)
        axes[r, 0].imshow(img)
        try:
            mask = dataset.load_channels(s, image_size).any(0)
            if mask.any():
                axes[r, 0].contour(mask, levels=[0.5], colors="white", linewidths=0.8)
        except Exception:  # noqa: BLE001 - a figure never fails the run
            pass
        axes[r, 0].set_title(f"{s.anomaly_type}\n{Path(s.image_path).stem}", fontsize=7)
        for c, (sc, lab) in enumerate(zip(scored_list, labels), start=1):
            lo, hi = ranges[c - 1]
            axes[r, c].imshow(img)
            axes[r, c].imshow(sc.maps[i], cmap="jet", alpha=0.5, vmin=lo, vmax=hi if hi > lo else lo + 1e-9)
            axes[r, c].set_title(f"{lab}\n{sc.scores[i]:.3f}", fontsize=7)
    for ax in axes.ravel():
        ax.set_axis_off()
    return fig


# ------------------------------------------------------------------------------------ promotion
def decide_alias(client, name: str, version: str, alias: str, metric: str, value: float, force: bool):
    """Move ``alias`` to ``version`` when it beats the current holder on ``metric`` (strictly), else keep it.
    Returns (moved, reason, previous_version)."""
    from mlflow.exceptions import MlflowException

    try:
        champ = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        champ = None
    new = round(float(value), 5)
    if champ is None:
        client.set_registered_model_alias(name, alias, version)
        return True, f"promoted: v{version} is the first {alias} of {name} ({metric}={new:.5f})", None
    if str(champ.version) == str(version):
        return True, f"promoted: v{version} already holds {alias}", champ.version
    old_tag = champ.tags.get(f"metric.{metric}")
    try:
        old = float(old_tag) if old_tag not in (None, "") else None
    except ValueError:
        old = None
    if force:
        client.set_registered_model_alias(name, alias, version)
        return True, (f"promoted (force=true): v{version} {metric}={new:.5f} replaces v{champ.version} "
                      f"({metric}={old if old is not None else 'unknown'})"), champ.version
    if old is None:
        return False, (f"kept: the {alias} v{champ.version} has no metric.{metric} tag to compare with; "
                       f"v{version} has {metric}={new:.5f} (use force=true to move the alias)"), champ.version
    if new > old:
        client.set_registered_model_alias(name, alias, version)
        return True, f"promoted: v{version} {metric}={new:.5f} > {old:.5f} of the previous {alias} v{champ.version}", \
            champ.version
    return False, (f"kept: v{version} {metric}={new:.5f} does not beat {old:.5f} of the {alias} "
                   f"v{champ.version}"), champ.version


def resolve_members(cfg, opts: Options, client) -> Selection:
    if opts.members:
        sel = resolve_explicit(client, opts.members, opts.metric)
    else:
        sel = select_best(client, base_model_name(cfg), opts.selection_metric, cfg)
    sel.notes.extend(check_members(client, sel.members, cfg))
    if len(sel.members) == 1:
        sel.notes.append("an ensemble of one member scores exactly as that member")
    return sel


def run_promotion(cfg, opts: Options, sel: Selection, mlflow) -> dict:
    """The pipeline body, inside an active MLflow run."""
    import torch

    from mlflow import MlflowClient

    from pradot import serving
    from pradot.engine import flat_metrics, open_splits, resolve_device, split_metrics
    from pradot.ensemble import Ensemble
    from pradot.model import PRADOT
    from train import specs_from_config

    client = MlflowClient()
    t0 = time.perf_counter()
    name = base_model_name(cfg)
    ens_name = opts.ensemble_name or f"{name}-ensemble"
    labels = [m.ref for m in sel.members]
    mlflow.set_tags({"pradot.entry_point": "promote", "pradot.dataset": str(cfg.data.kind),
                     "pradot.category": str(cfg.category), "pradot.members": ",".join(labels),
                     "pradot.selection": sel.mode})
    if sel.excluded:
        mlflow.set_tag("pradot.excluded", "; ".join(sel.excluded)[:4900])
    for n in sel.notes:
        log.info("%s", n)
    if sel.notes:
        mlflow.log_text("\n".join(sel.notes) + "\n", "comparison/notes.txt")

    device = resolve_device(str(cfg.device))
    models = []
    with tempfile.TemporaryDirectory(prefix="pradot-promote-") as tmp:
        tmp = Path(tmp)
        for i, m in enumerate(sel.members):
            path = download_member(m, tmp / f"member{i}")
            model = PRADOT.load(path, device=device).eval()
            c = model.config
            if m.stages and tuple(m.stages) != tuple(c.stages) or (m.alpha is not None and m.alpha != c.alpha):
                log.warning("%s: version tags (stages %s, alpha %s) differ from the file (stages %s, alpha %s); "
                            "the file is used", m.ref, m.stages, m.alpha, c.stages, c.alpha)
            models.append(model)
            path.unlink()
    ens = Ensemble(models, normalisation=opts.normalisation, labels=labels)
    S = ens.image_size
    sizes = sorted({int(x.config.image_size) for x in models})
    if len(sizes) > 1:
        note = (f"members have image sizes {sizes}: the ensemble works at {S} px (the first member's); each "
                f"member scores its input resized to its own size and its map is resized to {S}")
        log.warning("%s", note)
        mlflow.set_tag("pradot.image_sizes", note)

    spec, _ = specs_from_config(cfg)
    spec.image_size = S
    splits = open_splits(spec)
    bs = int(cfg.evaluation.batch_size)
    log.info("scoring %d validation and %d test images with %d members", len(splits.validation),
             len(splits.test), len(models))
    calib_split, calib_source = splits.validation, "validation"
    if not calib_split:
        calib_split, calib_source = splits.train, "train (no validation images)"
    val_members = score_members(ens, calib_split, S, bs)
    if opts.normalisation == "per_member":
        ens.fit_normalisation(member_maps=[torch.from_numpy(v.maps) for v in val_members])
        mlflow.log_dict({"source": calib_source, "stats": ens.stats, "members": labels},
                        "comparison/normalisation_stats.json")
    val_scores = fuse_scored(ens, val_members).scores
    test_members = score_members(ens, splits.test, S, bs)
    test_ens = fuse_scored(ens, test_members)

    flats, metric_docs = [], {}
    for lab, sc in zip([*labels, "ensemble"], [*test_members, test_ens]):
        metrics, notes = split_metrics(splits.dataset, sc)
        flats.append(flat_metrics(metrics))
        metric_docs[lab] = metrics
    ens_flat = flats[-1]
    if opts.metric not in ens_flat:
        raise PromotionError(f"metric {opts.metric!r} is not computed for {cfg.data.kind}; available: "
                             f"{sorted(ens_flat)}")
    row_labels = [f"{m.describe()}" for m in sel.members] + [f"ensemble ({opts.normalisation})"]
    keys, rows = comparison_rows(row_labels, flats)
    mlflow.log_text(to_csv(keys, rows), "comparison/comparison.csv")
    table = to_markdown(keys, rows, opts.metric)
    mlflow.log_text(table, "comparison/comparison.md")
    mlflow.log_dict(metric_docs, "comparison/metrics.json")
    mlflow.log_metrics(ens_flat)
    for k, f in enumerate(flats[:-1]):
        mlflow.log_metrics({f"member{k}_{key}": v for key, v in f.items() if key in SHOWN_METRICS})
    log.info("comparison on the test split:\n%s", table)

    def attempt(fname, fn):
        try:
            mlflow.log_figure(fn(), f"figures/{fname}.png")
        except Exception as e:  # noqa: BLE001 - figures never fail the run
            log.warning("figure %s skipped: %s: %s", fname, type(e).__name__, e)
    attempt("metrics_bar", lambda: bar_figure(keys, rows, opts.metric))
    n_over = max(2, min(6, int(cfg.evaluation.n_overlays)))
    short = [f"s{m.stages[0] if len(m.stages) == 1 else ','.join(map(str, m.stages))} a{m.alpha:g}"
             if m.alpha is not None else m.ref for m in sel.members] + ["ensemble"]
    if splits.test:
        attempt("overlays_members_vs_ensemble",
                lambda: overlay_figure(splits.dataset, [*test_members, test_ens], short, S, n_over))

    calibrate = getattr(serving, "calibrate", None) or serving.Calibration.calibrate
    calib = calibrate(val_scores, float(cfg.calibration.quantile))
    mlflow.set_tag("pradot.calibration_source", calib_source)
    mlflow.log_dict(calib.to_dict(), "model_files/calibration.json")
    test_labels = np.array([s.label for s in splits.test])
    if len(set(test_labels.tolist())) > 1:
        pred = test_ens.scores > calib.threshold
        mlflow.log_metrics({"test_recall_at_threshold": float(np.mean(pred[test_labels == 1])),
                            "test_fpr_at_threshold": float(np.mean(pred[test_labels == 0]))})

    from mlflow_model import log_pradot_model

    run_id = mlflow.active_run().info.run_id
    with tempfile.TemporaryDirectory(prefix="pradot-ensemble-") as tmp:
        path = ens.save(Path(tmp) / "pradot_ensemble.pt")
        example = next((s for s in splits.test if s.label == 0), splits.test[0] if splits.test else splits.train[0])
        info = log_pradot_model(path, calib, registered_model_name=ens_name, input_example_image=example.image_path,
                                extra_tags={"dataset": spec.kind, "category": spec.category,
                                            "pradot.kind": "ensemble", "members": ",".join(labels)})
    version = str(info.registered_model_version)
    tags = {"members": ",".join(labels), "n_members": len(labels), "normalisation": opts.normalisation,
            "member_stages": ";".join(",".join(map(str, x.config.stages)) for x in models),
            "member_alphas": ";".join(f"{x.config.alpha:g}" for x in models),
            "stages": ",".join(map(str, ens.config.stages)), "backbone": ens.config.backbone,
            "image_size": S, "dataset": spec.kind, "category": spec.category, "run_id": run_id,
            "threshold": calib.threshold, "selection": sel.mode, "selection_metric": opts.selection_metric,
            **{f"metric.{k}": round(v, 5) for k, v in ens_flat.items()}}
    for k, v in tags.items():
        client.set_model_version_tag(ens_name, version, k, str(v))
    moved, reason, previous = decide_alias(client, ens_name, version, opts.alias, opts.metric,
                                           ens_flat[opts.metric], opts.force)
    client.set_model_version_tag(ens_name, version, "pradot.promotion", reason)
    mlflow.set_tags({"pradot.promotion": reason, "pradot.ensemble": f"{ens_name}/{version}"})
    log.info("%s", reason)
    mlflow.log_metric("time_total_seconds", time.perf_counter() - t0)
    return {"ensemble_name": ens_name, "version": version, "model_uri": info.model_uri, "promoted": moved,
            "reason": reason, "previous": previous, "alias": opts.alias, "metrics": ens_flat,
            "members": labels, "table": table, "run_id": run_id,
            "member_metrics": dict(zip(labels, flats[:-1]))}


def run(argv: Sequence[str], parent_run_id: str | None = None) -> dict:
    """Compose, resolve the members (errors before any run), then promote in one MLflow run.
    Raises PromotionError (bad input) and the pipeline's errors; returns run_promotion's summary."""
    opts, overrides = split_argv(argv)
    cfg = compose(overrides)
    setup_tracking()
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    sel = resolve_members(cfg, opts, client)
    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(str(cfg.tracking.experiment_name))
    with run_log() as logfile:
        with mlflow.start_run(run_name=f"promote-{cfg.data.kind}-{cfg.category}") as active:
            if parent_run_id:
                mlflow.set_tag("mlflow.parentRunId", parent_run_id)
            mlflow.log_params({"promote.members": ",".join(m.ref for m in sel.members),
                               "promote.metric": opts.metric, "promote.select_by": opts.selection_metric,
                               "promote.normalisation": opts.normalisation,
                               "promote.alias": opts.alias, "promote.force": opts.force,
                               "promote.selection": sel.mode})
            try:
                out = run_promotion(cfg, opts, sel, mlflow)
            finally:
                mlflow.log_artifact(str(logfile), "logs")
    out["experiment_id"] = active.info.experiment_id
    return out


def main(argv=None) -> int:
    from pradot.backbone import BackboneError
    from pradot.data import DatasetError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        out = run(argv)
    except PromotionError as e:
        print(f"\nerror: {e}\n(nothing was registered)", file=sys.stderr)
        return 2
    except (DatasetError, BackboneError, ValueError, FileNotFoundError) as e:
        print(f"\nerror: {e}\n(the MLflow run is marked FAILED; nothing was registered unless the run's "
              f"pradot.ensemble tag says so)", file=sys.stderr)
        return 2
    uri = os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    print("\n== PRADOT promotion finished ==")
    print(f"run       : {out['run_id']} (experiment {out['experiment_id']})")
    print(f"members   : {', '.join(out['members'])}")
    print(out["table"])
    print(f"ensemble  : registered as {out['ensemble_name']} v{out['version']}")
    print(f"alias     : {out['alias']} {'moved to' if out['promoted'] else 'kept on'} "
          f"v{out['version'] if out['promoted'] else out['previous']} ({out['reason']})")
    print(f"serve it  : mlflow models serve -m models:/{out['ensemble_name']}@{out['alias']} --env-manager local "
          f"-h 127.0.0.1 -p 5001")
    print(f"look at it: mlflow ui --backend-store-uri {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
