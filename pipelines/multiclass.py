"""MLflow entry point `multiclass`: one model for many categories (:mod:`pradot.multiclass`). Each method
(unified PRADOT, unified memory bank, VPDM when :mod:`pradot.vpdm` is installed) is fitted ONCE on the union of
the categories' normal training images and evaluated per category and on average, beside the per-category models
(one per category, the upper reference). The best unified model is registered as ``pradot-<dataset>-multiclass``
and served with the usual request contract: no category in the request.

    python pipelines/multiclass.py [hydra overrides...]                 # the cpu recipe on the embedded data
    mlflow run . -e multiclass -P dataset=synthetic -P recipe=ci
    mlflow run . -e multiclass -P dataset=mvtec_ad -P recipe=paper -P data_root=/data/mvtec_ad   # a GPU

One tracked parent run logs: per-category metrics (``<method>_<setting>.<category>.<metric>``, and
``.mean.``), the comparison table (``comparison/comparison.{md,csv,json}``: per category and mean, image AUROC /
pixel AUROC as the paper's Table 1, AU-PRO (AD layout) / AU-sPRO (LOCO layout)), the thresholds
(``calibration/thresholds.json``: each category's own, from its validation normals, and the global one, the
fallback the served model uses since a request names no category) with the threshold metrics at both, and the
maps of each category's test images per unified method (``figures/maps_<category>_<method>.png``), VPDM's
reconstructions and maps (``figures/vpdm_reconstructions.png``, its paper's Fig. 2) and features at each step
(``figures/vpdm_vague_steps.png``, Fig. 3), and, with
``multiclass.ablation`` (``-P ablation=true`` or a list of rows), VPDM's ablated variants (Table 3's rows, each
fitted unified as ``vpdm-<row>``, metrics ``vpdm-<row>_ablation.*``) and their table (``ablation/ablation.{md,json}``).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if __name__ == "__main__" and not __package__:  # `python pipelines/multiclass.py`: import this checkout's package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from pipelines import checks, cli, config, figures, registry, tracking  # noqa: E402
from pipelines.names import shell_word  # noqa: E402
from pipelines.tags import CATEGORIES, DATASET, KIND, MULTICLASS_METHOD

log = logging.getLogger(__name__)

__all__ = ["MulticlassPlan", "MulticlassRun", "multiclass_name", "multiclass_plan", "run_multiclass", "run", "main"]

REGISTER_CHOICES = ("best", "none")


@dataclass(frozen=True)
class MulticlassPlan:
    """What to run: the categories, the methods (``pradot.multiclass.Method``), the methods whose per-category
    reference models are fitted too, which unified model to register (``best``, a method name or ``none``)."""

    categories: tuple[str, ...]
    methods: tuple[Any, ...]
    per_category: tuple[str, ...] = ()
    register: str = "best"
    model_name: str = ""  # the registered name (default pradot-<dataset>-multiclass)
    ablations: tuple[tuple[str, Any], ...] = ()  # (Table 3 row, VPDM Method) fitted unified beside ``vpdm``


@dataclass
class MulticlassRun:
    """What a multi-class run produced: the parent run, the registered version, the table."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    model_name: str | None
    version: str | None
    registered_method: str | None
    table: str
    means: dict[str, dict[str, float]] = field(default_factory=dict)  # method label -> mean metrics
    exit_code: int = cli.EXIT_OK
    ablation_table: str = ""  # Table 3's layout, when multiclass.ablation ran

    def summary(self) -> str:
        registered = (
            f"registered {self.registered_method} as {self.model_name} v{self.version}"
            if self.version
            else "not registered"
        )
        lines = ["\n== multi-class run finished ==", f"run     : {self.run_id} (experiment {self.experiment_id})"]
        lines += [f"model   : {registered}", self.table]
        if self.ablation_table:
            lines += ["VPDM ablation (Table 3's rows; mean over the categories):", self.ablation_table]
        lines.append(f"look at it: {tracking.ui_hint(self.tracking_uri)}")
        if self.version:
            lines.append(
                f"serve it : mlflow models serve -m {shell_word(f'models:/{self.model_name}/{self.version}')} "
                "--env-manager local "
                "-h 127.0.0.1 -p 5001   (no category in the request; the global threshold)"
            )
        return "\n".join(lines)


def multiclass_name(kind: str) -> str:
    """The registered name of a dataset's unified model: ``pradot-<dataset>-multiclass``."""
    return checks.registry_name("tracking.model_name", f"pradot-{kind}-multiclass")


def _vpdm_config(cfg, image_size: int):
    """VPDM's settings: the recipe named by ``multiclass.vpdm.recipe`` with its overrides, at ``image_size``.

    Raises:
        ConfigError: pradot.vpdm is missing, or a bad recipe or setting.
    """
    try:
        from pradot.vpdm import VPDMConfig  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise config.ConfigError(
            "multiclass.methods: vpdm needs the pradot.vpdm package, which this installation lacks; "
            "leave vpdm out (multiclass.methods=[pradot,memory_bank])"
        ) from None
    vp = cfg.multiclass.get("vpdm") or {}
    overrides = dict(vp.get("overrides") or {})
    overrides.setdefault("image_size", int(image_size))
    overrides.setdefault("seed", int(cfg.seed))
    try:
        return VPDMConfig.recipe(str(vp.get("recipe", "cpu")), **overrides)
    except (TypeError, ValueError) as e:
        raise config.ConfigError(f"multiclass.vpdm: {e}") from None


def _per_category(value: Any, names: list[str]) -> tuple[str, ...]:
    """``multiclass.per_category``: true (every method run), false (none) or a list of methods (those not in
    ``multiclass.methods`` are not run, so they are ignored here).

    Raises:
        ConfigError: anything else, or a name that is no method.
    """
    from pradot.multiclass import METHODS

    text = str(value).strip().lower()
    if isinstance(value, bool) or text in ("true", "false", "1", "0", "yes", "no"):
        return tuple(names) if checks.boolean("multiclass.per_category", value) else ()
    chosen = [str(m).strip() for m in checks.list_items(value)]
    if not chosen or set(chosen) - set(METHODS):
        raise config.ConfigError(
            f"multiclass.per_category must be true, false or a list of methods ({', '.join(METHODS)}), got {value!r}"
        )
    return tuple(n for n in names if n in chosen)


def _ablations(value: Any, vpdm) -> tuple[tuple[str, Any], ...]:
    """``multiclass.ablation``: false (none), true (every row of Table 3) or a list of rows: each row's VPDM
    method (the ``vpdm`` method's settings with the row applied, named ``vpdm-<row>``).

    Raises:
        ConfigError: anything else, a row that Table 3 does not have, or no ``vpdm`` method to ablate.
    """
    text = str(value).strip().lower()
    if value is None or isinstance(value, bool) or text in ("true", "false", "1", "0", "yes", "no", ""):
        if value is None or text == "" or not checks.boolean("multiclass.ablation", value):
            return ()
        from pradot.vpdm.ablation import ABLATIONS  # type: ignore[import-not-found,unused-ignore]

        rows = list(ABLATIONS)
    else:
        rows = [str(r).strip() for r in checks.list_items(value)]
    if vpdm is None:
        raise config.ConfigError(
            "multiclass.ablation runs VPDM's Table 3 rows beside VPDM: add vpdm to multiclass.methods "
            "(e.g. -P methods=vpdm -P ablation=true)"
        )
    from pradot.multiclass import Method

    out = []
    for row in dict.fromkeys(rows):
        try:
            out.append((row, Method("vpdm", vpdm.config.ablated(row), name=f"vpdm-{row}")))
        except ValueError as e:
            raise config.ConfigError(f"multiclass.ablation: {e}") from None
    return tuple((r, m) for r, m in out if r != "full")  # the full model is the vpdm method itself


def multiclass_plan(cfg) -> MulticlassPlan:
    """``multiclass.*`` (composed) -> :class:`MulticlassPlan`, every value checked before any work.

    Raises:
        ConfigError: no category, a category or method named twice, an unknown method or register choice,
            a bad model setting (the message names the key).
    """
    from pipelines.baseline import memory_bank_config
    from pradot.multiclass import METHODS, Method

    mc = cfg.get("multiclass") or {}
    cats = [checks.path_component("multiclass.categories", str(c).strip()) for c in checks.list_items(mc.categories)]
    if not cats or len(set(cats)) != len(cats):
        raise config.ConfigError(
            f"multiclass.categories must name at least one category, each once, got {cats}; e.g. "
            "-P categories=screw_bag,woven_fabric"
        )
    names = [str(m).strip() for m in checks.list_items(mc.methods)]
    unknown = sorted(set(names) - set(METHODS))
    if not names or unknown or len(set(names)) != len(names):
        raise config.ConfigError(
            f"multiclass.methods must name some of {', '.join(METHODS)}, each once, got {names}; e.g. -P "
            "methods=pradot,memory_bank"
        )
    size = int(cfg.data.image_size)
    configs = {
        "pradot": lambda: config.model_config(cfg),
        "memory_bank": lambda: memory_bank_config(cfg),
        "vpdm": lambda: _vpdm_config(cfg, size),
    }
    methods = tuple(Method(n, configs[n]()) for n in names)
    register = str(mc.get("register", "best"))
    if register not in (*REGISTER_CHOICES, *names):
        raise config.ConfigError(
            f"multiclass.register must be best, none or one of the methods {names}, got {register!r}"
        )
    explicit = cfg.tracking.get("model_name")
    name = checks.registry_name("tracking.model_name", explicit) if explicit else multiclass_name(str(cfg.data.kind))
    per_category = _per_category(mc.get("per_category", True), names)
    ablations = _ablations(mc.get("ablation", False), next((m for m in methods if m.kind == "vpdm"), None))
    return MulticlassPlan(tuple(cats), methods, per_category, register, name, ablations)


def _log_result(result, columns) -> None:
    import mlflow

    prefix = f"{result.method}_{result.setting}"
    values = {f"{prefix}.{c}.{k}": v for c, r in result.categories.items() for k, v in r.metrics.items()}
    values.update({f"{prefix}.mean.{k}": v for k, v in result.mean().items()})
    mlflow.log_metrics({k: float(v) for k, v in values.items()})
    mlflow.log_metrics({f"{prefix}.{k}": v for k, v in result.seconds.items()})


def _thresholds(results) -> dict:
    out = {}
    for res in results:
        out[res.label] = {
            "global": res.calibration.to_dict() if res.calibration is not None else None,
            "categories": {
                c: {
                    "threshold": r.calibration.threshold if r.calibration is not None else None,
                    "at_own_threshold": r.threshold_metrics,
                    "at_global_threshold": r.global_threshold_metrics,
                }
                for c, r in res.categories.items()
            },
        }
    return out


def _log_maps(result, cats, n: int) -> None:
    """The maps of each category's most anomalous and least anomalous test images (one figure per category)."""
    import numpy as np

    from pipelines.figures import log_figure
    from pradot import viz
    from pradot.data import read_image
    from pradot.names import printable

    for c, r in result.categories.items():
        if not len(r.test.samples) or n < 1:
            continue
        order = np.argsort(-r.test.scores)
        picked = sorted(set(order[: max(1, n - 1)].tolist()) | {int(order[-1])})
        size = r.test.maps.shape[-1]

        def build(r=r, picked=picked, size=size, c=c):
            samples = [r.test.samples[i] for i in picked]
            return viz.overlay_figure(
                [read_image(s.image_path, size) for s in samples],
                [r.test.maps[i] for i in picked],
                titles=[
                    f"{printable(s.anomaly_type)} {printable(Path(s.image_path).stem)} ({r.test.scores[i]:.2f})"
                    for s, i in zip(samples, picked)
                ],
                masks=[np.asarray(cats[c].dataset.load_channels(s, size)) if s.label else None for s in samples],
            )

        log_figure(f"maps_{c}_{result.method}", build)


def _write_table(results, tmp: Path) -> str:
    import csv

    import mlflow

    from pradot.multiclass import TABLE_COLUMNS, comparison_rows, format_table
    from pradot.names import csv_cell

    rows = comparison_rows(results)
    table = format_table(rows)
    out = tmp / "comparison"
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.md").write_text(table + "\n", encoding="utf-8")
    with open(out / "comparison.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["category", "method", *TABLE_COLUMNS])
        w.writeheader()
        w.writerows({**r, "category": csv_cell(r["category"]), "method": csv_cell(r["method"])} for r in rows)
    mlflow.log_artifacts(str(out), "comparison")
    mlflow.log_dict({"rows": rows}, "comparison/comparison.json")
    log.info("multi-class comparison (percent):\n%s", table)
    return table


def _write_ablation(plan: MulticlassPlan, results, ablated, tmp: Path) -> str:
    """Table 3's layout (:func:`pradot.vpdm.ablation.ablation_rows`): the full VPDM, then each ablated row;
    logged as ``ablation/ablation.{md,json}``."""
    import mlflow

    from pradot.vpdm.ablation import ablation_rows, format_ablation_table  # type: ignore[import-not-found,unused-ignore]

    vpdm = next(m for m in plan.methods if m.kind == "vpdm")
    full = next(r for r in results if r.method == vpdm.name and r.setting == "unified")
    entries = [("full", vpdm.config, full.mean())]
    entries += [(row, m.config, res.mean()) for (row, m), res in zip(plan.ablations, ablated)]
    rows = ablation_rows(entries)
    table = format_ablation_table(rows)
    out = tmp / "ablation"
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(table + "\n")
    mlflow.log_artifacts(str(out), "ablation")
    mlflow.log_dict({"rows": rows}, "ablation/ablation.json")
    log.info("VPDM ablation (Table 3's rows, mean over the categories, percent):\n%s", table)
    return table


def _choose(plan: MulticlassPlan, unified) -> Any:
    """The unified result to register: the named method, or the highest mean image AUROC."""
    if plan.register == "none" or not unified:
        return None
    if plan.register != "best":
        return next(r for r in unified if r.method == plan.register)
    return max(unified, key=lambda r: r.mean().get("image_auroc", float("-inf")))


def _fit_all(settings, plan: MulticlassPlan, cats, device):
    """Every method unified (and per category), then the ablated VPDMs (unified): the results of the methods,
    those of the ablations (in ``plan.ablations``' order) and the unified models by method name."""
    from pradot.multiclass import evaluate, fit_per_category, fit_unified

    common = dict(cache=_cache(settings), device=device, weights_path=settings.weights_path)
    kw = dict(batch_size=settings.evaluation.batch_size, quantile=settings.calibration_quantile)
    kw["pixel_quantile"] = settings.calibration_pixel_quantile
    results, models = [], {}
    for m in plan.methods:
        t0 = time.perf_counter()
        model = fit_unified(m, settings.data, cats, **common)
        t1 = time.perf_counter()
        res = evaluate(m.name, "unified", {c: model for c in cats}, cats, **kw)
        res.seconds = {"fit_seconds": t1 - t0, "eval_seconds": time.perf_counter() - t1}
        results.append(res)
        models[m.name] = model
        if m.name in plan.per_category:
            t0 = time.perf_counter()
            per = fit_per_category(m, settings.data, cats, **common)
            t1 = time.perf_counter()
            ref = evaluate(m.name, "per_category", per, cats, **kw)
            ref.seconds = {"fit_seconds": t1 - t0, "eval_seconds": time.perf_counter() - t1}
            results.append(ref)
    ablated = []
    for row, m in plan.ablations:
        log.info("VPDM ablation %s (Table 3): %s", row, m.name)
        t0 = time.perf_counter()
        model = fit_unified(m, settings.data, cats, **common)
        t1 = time.perf_counter()
        res = evaluate(m.name, "ablation", {c: model for c in cats}, cats, **kw)
        res.seconds = {"fit_seconds": t1 - t0, "eval_seconds": time.perf_counter() - t1}
        ablated.append(res)
    return results, ablated, models


def _cache(settings):
    from pradot.features import FeatureCache

    return FeatureCache(settings.cache_dir) if settings.cache_dir else None


def _tracked_run(settings, plan: MulticlassPlan, params: dict[str, str], device, name: str | None):
    import mlflow

    from pradot.multiclass import TABLE_COLUMNS, open_categories

    spec = settings.data
    t0 = time.perf_counter()
    with tracking.entry_run(
        f"multiclass-{spec.kind}",
        settings.tracking.experiment_name,
        entry_point="multiclass",
        tags={DATASET: spec.kind, CATEGORIES: ",".join(plan.categories), KIND: "multiclass"},
    ) as run:
        tracking.log_resolved_params(params)
        cats = open_categories(spec, plan.categories)
        mlflow.log_params({f"data.n_train.{c}": len(s.train) for c, s in cats.items()})
        results, ablated, models = _fit_all(settings, plan, cats, device)
        for res in [*results, *ablated]:
            _log_result(res, TABLE_COLUMNS)
        unified = [r for r in results if r.setting == "unified"]
        with tempfile.TemporaryDirectory(prefix="pradot-multiclass-") as tmp:
            table = _write_table(results, Path(tmp))
            ablation_table = _write_ablation(plan, results, ablated, Path(tmp)) if plan.ablations else ""
            mlflow.log_dict(_thresholds(results), "calibration/thresholds.json")
            if settings.evaluation.figures:
                for res in unified:
                    _log_maps(res, cats, settings.evaluation.n_overlays)
                    if getattr(models[res.method], "KIND", None) == "vpdm":  # the paper's Fig. 2 and 3
                        figures.log_vpdm_figures(models[res.method], res, cats, res.method)
            best = _choose(plan, unified)
            model_uri, tags = None, None
            if best is not None:
                mlflow.set_tag(MULTICLASS_METHOD, best.method)
                model = models[best.method]
                path = model.save(Path(tmp) / "model.pt", include_backbone=settings.tracking.include_backbone)
                record = registry.RECORDS[{"pradot": "bank"}.get(best.method, best.method)]
                tags = record(
                    dataset=spec.kind,
                    category="multiclass",
                    run_id=run.run_id,
                    threshold=best.calibration.threshold,
                    backbone=str(model.config.backbone),
                    stages=tuple(model.config.stages),
                    image_size=int(model.config.image_size),
                    metrics={f"mean_{k}": v for k, v in best.mean().items()},
                    calibration_source="validation (all categories pooled: the global threshold)",
                    calibration_n_images=best.calibration.n_images,
                    selection=plan.register,
                    selection_metric="mean image_auroc" if plan.register == "best" else None,
                    selection_split="test" if plan.register == "best" else None,
                    config={"categories": list(plan.categories)},
                )
                model_uri = registry.log_model(
                    path, best.calibration, tags, next(iter(cats.values())).test[0].image_path
                )
        mlflow.log_metric("time_total_seconds", time.perf_counter() - t0)
    means = {r.label: r.mean() for r in results}
    chosen = best.method if best is not None else None
    return run, model_uri, (tags if name else None), (table, ablation_table), means, chosen


def run_multiclass(settings, plan: MulticlassPlan, params: dict[str, str]) -> MulticlassRun:
    """Fit, evaluate and log every method in one MLflow run, then, once the run has FINISHED, register the
    chosen unified model (one call with every tag)."""
    from pradot.device import resolve_device

    device = resolve_device(settings.device)
    name = plan.model_name if settings.tracking.register and plan.register != "none" else None
    with registry.registration(name):
        run, model_uri, tags, tables, means, chosen = _tracked_run(settings, plan, params, device, name)
        version = registry.register(model_uri, name, tags) if name and model_uri and tags else None
    return MulticlassRun(
        run.run_id,
        run.experiment_id,
        run.tracking_uri,
        name if version else None,
        version,
        chosen,
        tables[0],
        means,
        ablation_table=tables[1],
    )


def run(argv: Sequence[str]) -> MulticlassRun:
    """Compose ``conf/multiclass.yaml`` with the overrides in ``argv`` and run the multi-class comparison."""
    cfg = config.compose("multiclass", config.parse_overrides(argv))
    settings = config.train_settings(cfg)
    plan = multiclass_plan(cfg)
    settings = replace(settings, data=replace(settings.data, category=plan.categories[0]))
    params = config.flatten(cfg)
    return run_multiclass(settings, plan, params)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_entry(
        run,
        argv,
        failure_note="the MLflow run is marked FAILED and nothing was registered; its log is under the run's logs/ "
        "artifacts",
    )


if __name__ == "__main__":
    sys.exit(main())
