"""MLflow entry point `reproduce`: train the paper's four banks and promote their ensemble.

    python pipelines/reproduce.py category=screw_bag data=mvtec_loco [data_root=...] [hydra overrides...]
    mlflow run . -e reproduce -P category=screw_bag -P overrides="experiment=paper"

The paper's final model (section 4, Table 2) is the average of the maps of four banks,
(stage, alpha) = (2, 0), (2, 0.3), (3, 0), (3, 0.3). This entry point trains them one after the other
with ``pipelines/train.py``'s ``main`` (in-process; each bank is its own MLflow run, registered as
``pradot-<dataset>-<category>``), then runs ``pipelines/promote.py`` with exactly those four versions.
On real data with ``overrides="experiment=paper"`` it is the one command that reproduces the paper's
model. All runs are children (``mlflow.parentRunId``) of one ``reproduce`` run (tag
``pradot.entry_point=reproduce``) that records the members, the ensemble version and the promotion.

Options (besides Hydra overrides, passed unchanged to every training and to promote):
``stages=2,3`` and ``alphas=0,0.3`` (the grid; single stages only), ``metric``, ``normalisation``,
``alias``, ``force`` (promote's). ``backbone.stages`` and ``model.alpha`` are set per member and may not
be overridden.

Feature cache: entries are per stage (``pradot.features.FeatureCache``), so the two alpha values of
one stage read the same features, and each stage is extracted once for the four trainings (a stage-2
bank's backbone network is cut after stage 2, so stage 3 needs its own, longer pass anyway).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import compose, parse_overrides, setup_tracking  # noqa: E402

log = logging.getLogger("pradot.reproduce")

PAPER_STAGES = (2, 3)
PAPER_ALPHAS = (0.0, 0.3)
PROMOTE_KEYS = ("metric", "normalisation", "alias", "force", "ensemble_name")
FIXED_KEYS = ("backbone.stages", "model.alpha", "members")


class ReproduceError(ValueError):
    pass


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        out = tuple(float(x) for x in text.replace("[", "").replace("]", "").split(",") if x.strip())
    except ValueError:
        raise ReproduceError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not out:
        raise ReproduceError(f"{what} is empty")
    return out


def split_argv(argv: Sequence[str]):
    """(stages, alphas, promote options, Hydra overrides)."""
    items = parse_overrides(argv)
    stages, alphas, promote_opts, rest = PAPER_STAGES, PAPER_ALPHAS, [], []
    for it in items:
        key, value = it.split("=", 1)
        k = key.lstrip("+~")
        if k == "stages":
            stages = tuple(int(x) for x in _floats(value, "stages"))
        elif k == "alphas":
            alphas = _floats(value, "alphas")
        elif k in PROMOTE_KEYS:
            promote_opts.append(it)
        elif k in FIXED_KEYS:
            raise ReproduceError(f"{k} is set by reproduce for each member (stages {list(PAPER_STAGES)} x alpha "
                                 f"{list(PAPER_ALPHAS)}); use stages=2,3 / alphas=0,0.3 to change the grid")
        elif k == "tracking.register" and value.lower() in ("false", "0", "no"):
            raise ReproduceError("tracking.register=false: reproduce promotes registered members, they must be "
                                 "registered")
        else:
            rest.append(it)
    if len(set(stages)) != len(stages) or len(set(alphas)) != len(alphas):
        raise ReproduceError(f"stages {stages} / alphas {alphas} contain duplicates")
    return stages, alphas, promote_opts, rest


def _find_version(client, name: str, run_id: str):
    for v in client.search_model_versions(f"name='{name}'"):
        if v.run_id == run_id or v.tags.get("run_id") == run_id:
            return v
    return None


def run(argv: Sequence[str]) -> dict:
    stages, alphas, promote_opts, overrides = split_argv(argv)
    cfg = compose(overrides)  # validates the overrides once, before any training
    setup_tracking()
    import mlflow
    from mlflow import MlflowClient

    import promote
    import train

    client = MlflowClient()
    name = promote.base_model_name(cfg)
    outer_run = os.environ.pop("MLFLOW_RUN_ID", None)  # under `mlflow run`: the reproduce run itself
    try:
        if outer_run:
            parent_id = outer_run
            exp_name = client.get_experiment(client.get_run(parent_id).info.experiment_id).name
        else:
            exp_name = str(cfg.tracking.experiment_name)
            exp = client.get_experiment_by_name(exp_name)
            exp_id = exp.experiment_id if exp else client.create_experiment(exp_name)
            parent_id = client.create_run(exp_id, run_name=f"reproduce-{cfg.data.kind}-{cfg.category}").info.run_id
        client.set_tag(parent_id, "pradot.entry_point", "reproduce")
        client.set_tag(parent_id, "pradot.dataset", str(cfg.data.kind))
        client.set_tag(parent_id, "pradot.category", str(cfg.category))
        client.log_param(parent_id, "reproduce.grid", f"stages={list(stages)} alphas={list(alphas)}")
        client.log_param(parent_id, "reproduce.overrides", " ".join(overrides)[:6000])
        extra = [] if any(o.split("=", 1)[0] == "tracking.experiment_name" for o in overrides) \
            else [f"tracking.experiment_name={exp_name}"]
        members, status = [], "FAILED"
        try:
            for s in stages:
                for a in alphas:
                    log.info("training member stage %d alpha %g", s, a)
                    print(f"\n== reproduce: training member stage {s}, alpha {a:g} ==", flush=True)
                    rc = train.main([*overrides, *extra, f"backbone.stages=[{s}]", f"model.alpha={a}"])
                    last = mlflow.last_active_run()
                    if rc != 0 or last is None:
                        raise ReproduceError(f"training the member (stage {s}, alpha {a:g}) failed (exit code {rc}); "
                                             f"its run and log are in the MLflow experiment {exp_name!r}")
                    client.set_tag(last.info.run_id, "mlflow.parentRunId", parent_id)
                    v = _find_version(client, name, last.info.run_id)
                    if v is None:
                        raise ReproduceError(f"the member (stage {s}, alpha {a:g}) trained in run "
                                             f"{last.info.run_id} but no version of {name!r} records it")
                    members.append(f"{name}/{v.version}")
            client.set_tag(parent_id, "pradot.members", ",".join(members))
            print(f"\n== reproduce: promoting {', '.join(members)} ==", flush=True)
            out = promote.run([*overrides, *extra, *promote_opts, f"members={','.join(members)}"],
                              parent_run_id=parent_id)
            client.set_tag(parent_id, "pradot.ensemble", f"{out['ensemble_name']}/{out['version']}")
            client.set_tag(parent_id, "pradot.promotion", out["reason"])
            client.log_text(parent_id, out["table"], "comparison/comparison.md")
            for k, v in out["metrics"].items():
                client.log_metric(parent_id, k, v)
            status = "FINISHED"
        finally:
            if not outer_run:
                client.set_terminated(parent_id, status)
    finally:
        if outer_run:
            os.environ["MLFLOW_RUN_ID"] = outer_run
    out["parent_run_id"] = parent_id
    return out


def main(argv=None) -> int:
    import promote

    from pradot.backbone import BackboneError
    from pradot.data import DatasetError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        out = run(argv)
    except (ReproduceError, promote.PromotionError) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 2
    except (DatasetError, BackboneError, ValueError, FileNotFoundError) as e:
        print(f"\nerror: {e}\n(see the failed run's logs/ artifacts)", file=sys.stderr)
        return 2
    print("\n== PRADOT reproduce finished ==")
    print(f"run       : {out['parent_run_id']} (members and promotion are its child runs)")
    print(f"members   : {', '.join(out['members'])}")
    print(out["table"])
    print(f"ensemble  : {out['ensemble_name']} v{out['version']}; {out['reason']}")
    print(f"serve it  : mlflow models serve -m models:/{out['ensemble_name']}@{out['alias']} --env-manager local "
          f"-h 127.0.0.1 -p 5001")
    return 0


if __name__ == "__main__":
    sys.exit(main())
