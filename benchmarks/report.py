"""The targets of issue 6 checked on a result, and the table printed at the end of a run."""

from __future__ import annotations


def targets(r: dict) -> dict:
    """``{target: [value, met]}`` for the targets a result can tell: OT speedup over POT (>= 20x), plan
    agreement (<= 1e-3, finite for every eps), epoch speedup with the cache (>= 5x per stage set), scoring
    per image (<= 0.5x the backbone)."""
    t = {}
    ot_ = r.get("ot", {})
    if "speedup_vs_pot_float64" in ot_:
        t["ot_speedup_vs_pot_float64 >= 20"] = [
            round(ot_["speedup_vs_pot_float64"], 2),
            ot_["speedup_vs_pot_float64"] >= 20,
        ]
    if "agreement" in ot_:
        t["ot_plan_agreement <= 1e-3"] = [ot_["agreement"], ot_["agreement"] <= 1e-3]
    if ot_.get("per_eps"):
        ok = all(v["ours_finite"] and v["agreement"] <= 1e-3 for v in ot_["per_eps"].values())
        t["ot_finite_and_agreeing_for_eps_0.001_0.01_0.1"] = [
            {k: v["agreement"] for k, v in ot_["per_eps"].items()},
            ok,
        ]
    for label, ep in r.get("epoch", {}).items():
        t[f"epoch_speedup_with_cache >= 5 ({label})"] = [
            round(ep["speedup_cached_vs_uncached"], 2),
            ep["speedup_cached_vs_uncached"] >= 5,
        ]
    sc = r.get("scoring", {})
    if "ratio_scoring_to_backbone" in sc:
        t["scoring_per_image <= 0.5 x backbone"] = [
            round(sc["ratio_scoring_to_backbone"], 3),
            sc["ratio_scoring_to_backbone"] <= 0.5,
        ]
    return t


def _ot_rows(ot_: dict) -> list[tuple[str, str, str]]:
    rows = [
        ("OT", f"{ot_['shape'][0]} x {ot_['shape'][1]}, 100 it, eps {ot_['eps']}", ""),
        (
            "  ours float32 (" + ot_.get("ours_backend", "") + ")",
            f"{ot_['ours_s']:.3f} s",
            f"first call {ot_['ours_first_call_s']:.2f} s",
        ),
    ]
    for k in ("ours_torch_blocked_s", "ours_torch_s"):
        if k in ot_:
            rows.append((f"  ours, {k[5:-2]} backend", f"{ot_[k]:.3f} s", ""))
    if "ours_after_pot_s" in ot_:
        rows.append(
            (
                "  ours again after POT",
                f"{ot_['ours_after_pot_s']:.3f} s",
                f"median of all runs {ot_['ours_s_all_runs_median']:.3f} s",
            )
        )
    for key, label in (
        ("float64", f"float64 ({ot_.get('pot_backend')})"),
        ("float32", f"float32 ({ot_.get('pot_backend')})"),
        ("numpy_float64", "float64 (numpy)"),
    ):
        if f"pot_{key}_s" in ot_:
            rows.append(
                (
                    f"  POT sinkhorn_log {label}",
                    f"{ot_[f'pot_{key}_s']:.2f} s",
                    f"speedup {ot_[f'speedup_vs_pot_{key}']:.1f}x",
                )
            )
    rows.append(
        (
            "  floor: torch.mv per iteration",
            f"{ot_['floor_1pass_s']:.2f} s",
            f"2 passes {ot_['floor_2pass_s']:.2f} s; mv {ot_['mv_ms_min']:.1f} ms min, {ot_['mv_ms']:.1f} median",
        )
    )
    rows.append(("  plan agreement (eps 0.01)", f"{ot_.get('agreement', float('nan')):.2e}", ot_["oracle"]))
    for eps, v in ot_.get("per_eps", {}).items():
        rows.append((f"  eps {eps}", f"finite {v['ours_finite']}", f"agreement {v['agreement']:.2e}"))
    return rows


def _epoch_rows(label: str, ep: dict) -> list[tuple[str, str, str]]:
    return [
        (f"Epoch, {label}", f"{ep['train_images']} images, batch {ep['batch_size']}, n={ep['n']}", ""),
        (
            "  recomputing features",
            f"{ep['uncached_epoch_s']:.2f} s",
            f"features {ep['uncached_feature_s']:.2f} s, OT {ep['uncached_ot_s']:.2f} s",
        ),
        (
            "  feature cache",
            f"{ep['cached_epoch_s']:.2f} s",
            f"features {ep['cached_feature_s']:.3f} s, OT {ep['cached_ot_s']:.2f} s",
        ),
        (
            "  speedup",
            f"{ep['speedup_cached_vs_uncached']:.2f}x",
            f"best epochs {ep['speedup_best_epochs']:.2f}x; bound 1 + features/OT "
            f"{ep['speedup_bound_1_plus_features_over_ot']:.2f}x; cache built once in {ep['cache_build_s']:.2f} s",
        ),
    ]


def _scoring_rows(sc: dict) -> list[tuple[str, str, str]]:
    rows = [
        ("Scoring", f"n={sc['n']}, stage {sc['stage']}, {sc['prototypes']} prototypes", ""),
        ("  backbone forward", f"{sc['backbone_forward_ms_per_image']:.1f} ms/img", sc["backbone"]),
        (
            "  Eq. 6 scores (fast path)",
            f"{sc['assignment_scores_ms_per_image']:.1f} ms/img",
            f"general path {sc['general_path_ms_per_image']:.1f} ms/img",
        ),
        (
            "  scores + upsampling",
            f"{sc['scoring_total_ms_per_image']:.1f} ms/img",
            f"{sc['ratio_scoring_to_backbone']:.2f}x backbone (best runs "
            f"{sc['ratio_scoring_to_backbone_best_runs']:.2f}x)",
        ),
    ]
    if "resnet50" in sc:
        x = sc["resnet50"]
        rows.append(
            (
                f"  resnet50-shaped (D={x['dim']})",
                f"{x['assignment_scores_ms_per_image']:.1f} ms/img",
                f"{x['ratio_scores_to_backbone']:.2f}x its backbone",
            )
        )
    return rows


def table(r: dict) -> str:
    """The result as an aligned three-column table followed by the targets line."""
    rows = _ot_rows(r["ot"]) if r.get("ot") else []
    for label, ep in r.get("epoch", {}).items():
        rows += _epoch_rows(label, ep)
    if r.get("scoring"):
        rows += _scoring_rows(r["scoring"])
    for k, v in r.get("memory", {}).items():
        rows.append(
            (
                f"Memory {k}",
                f"{v['process_peak_rss_mb']:.0f} MB RSS peak",
                f"CUDA {v['cuda_max_allocated_mb']:.0f} MB" if "cuda_max_allocated_mb" in v else "",
            )
        )
    lines = [""]
    if rows:
        w0 = max(len(a) for a, _, _ in rows) + 2
        w1 = max(len(b) for _, b, _ in rows) + 2
        lines += [f"{a:<{w0}}{b:<{w1}}{c}".rstrip() for a, b, c in rows]
    lines.append(
        "\nTargets: "
        + "; ".join(f"{k}: {v[0]} ({'met' if v[1] else 'NOT met'})" for k, v in r.get("targets", {}).items())
    )
    return "\n".join(lines)
