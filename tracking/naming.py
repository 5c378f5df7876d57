"""What a person reads in the MLflow UI: parent-run names, the metric columns of the runs table, the
description at the top of a child run's page.

Pure functions over configs, params, metric keys and result rows; no MLflow inside.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Mapping, Sequence

# Run names that only say which flow ran: replaced by what the run compares (``parent_run_name``).
PLAIN_FLOW_NAMES = ("evaluate", "demo")

# Experiment tag listing the parent-run metrics to show as columns of the runs table (JSON list of
# metric keys); ``tracking.ui_app`` turns it into the UI's column choice for a browser that made none.
UI_COLUMNS_TAG = "sift.ui.columns"
# A method's mean bits per byte after fine-tuning over all prompts ("<method>/bpb_after"), and a paired
# difference's mean ("paired/<a>-vs-<b>/mean"): the numbers a comparison is read by.
_COLUMN_PATTERNS = (re.compile(r"^[^/]+/bpb_after$"), re.compile(r"^paired/[^/]+/mean$"))


def comparison_name(flow: str, methods: Sequence[str], prompts: int) -> str:
    """``"evaluate · nn,sift · 48 prompts"``: the flow, the methods compared (in the config's order), the
    number of prompts."""
    if not methods:
        raise ValueError("a comparison needs at least one method")
    return f"{flow} · {','.join(str(m) for m in methods)} · {int(prompts)} prompt{'' if int(prompts) == 1 else 's'}"


def _field(config: Any, name: str) -> Any:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return config.get(name)
    return getattr(config, name, None)


def flow_of(config: Any) -> str:
    """The flow a config belongs to: ``EvaluateConfig`` → "evaluate", ``DemoConfig`` → "demo"; "run"
    for a mapping or any other object."""
    name = type(config).__name__
    return name[: -len("Config")].lower() if name.endswith("Config") and len(name) > 6 else "run"


def parent_run_name(run_name: str | None, config: Any, params: Mapping[str, Any] | None) -> str | None:
    """The parent run's name: ``run_name`` unless it is None or a plain flow name ("evaluate", "demo")
    and the run compares methods (``config.method``, a list) on a known number of prompts
    (``params["prompts_count"]``): then ``comparison_name(flow, methods, prompts)``. A caller's own
    descriptive name is never replaced; without methods or a prompt count the name stays as given."""
    if run_name is not None and run_name not in PLAIN_FLOW_NAMES:
        return run_name
    methods = _field(config, "method")
    count = (params or {}).get("prompts_count")
    if isinstance(methods, str):
        methods = [methods]
    if not methods or count is None:
        return run_name
    try:
        prompts = int(count)
    except (TypeError, ValueError):
        return run_name
    return comparison_name(run_name or flow_of(config), list(methods), prompts)


def ui_columns(metric_keys: Iterable[str]) -> list[str]:
    """The metric keys, of those given, that the runs table should show as columns: every
    ``<method>/bpb_after`` then every ``paired/<pair>/mean``, each group in the order given."""
    keys = list(dict.fromkeys(metric_keys))
    return [k for pattern in _COLUMN_PATTERNS for k in keys if pattern.match(k)]


def _fmt(value: Any, digits: int = 3) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "–"
    return f"{number:.{digits}f}" if math.isfinite(number) else "–"


def _curve(points: Sequence[tuple[int, float]], limit: int = 9) -> str:
    """``"1.000 (0) → 0.831 (1) → … → 0.530 (8)"``: the first points and the last, at most ``limit``."""
    if len(points) > limit:
        points = [*points[: limit - 2], points[-1]]
        head = " → ".join(f"{_fmt(v)} ({s})" for s, v in points[:-1])
        return f"{head} → … → {_fmt(points[-1][1])} ({points[-1][0]})"
    return " → ".join(f"{_fmt(v)} ({s})" for s, v in points)


def result_description(row: Mapping[str, Any], compute_seconds: float | None = None) -> str:
    """Markdown for the top of a child run's page (MLflow's run description): bits per byte before →
    after with the gain, the uncertainty curve σ_0 → σ_n by step, the bits-per-byte curve, and the
    compute time (the run's Duration shows it too)."""
    before, after = row.get("bpb_before"), row.get("bpb_after")
    steps = int(row.get("steps") or 0)
    lines = [f"**{row.get('method', '?')}** on prompt `{row.get('prompt_id', '?')}` ({row.get('domain', '?')})", ""]
    gain = float(before) - float(after) if before is not None and after is not None else None
    lines.append(f"- **bits per byte** {_fmt(before, 4)} → {_fmt(after, 4)} (gain {_fmt(gain, 4)}) after "
                 f"{steps} step{'' if steps == 1 else 's'}")
    sigmas = list(row.get("uncertainties") or [])
    if sigmas:
        lines.append(f"- **uncertainty σ by pick**: {_curve(list(enumerate(float(s) for s in sigmas)))}")
    curve = {int(s): float(v) for s, v in (row.get("bpb_curve") or [])}
    if before is not None and after is not None:
        curve[0], curve[steps] = float(before), float(after)
    if len(curve) > 2:
        lines.append(f"- **bits per byte by step**: {_curve(sorted(curve.items()))}")
    if compute_seconds is not None and math.isfinite(compute_seconds):
        lines.append(f"- **compute** {compute_seconds:.1f} s (the run's Duration)")
    if row.get("skipped_reason"):
        lines.append(f"- not trained: {row['skipped_reason']}")
    lines += ["", "Curves: the *Model metrics* tab (`uncertainty`, `bpb`); picks: *Artifacts* → `selection.json`."]
    return "\n".join(lines)
