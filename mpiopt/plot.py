"""Convergence figures from trace files: error against iterations, bits on the wire, and seconds.

Traces that differ only in their seed form one line: the median over seeds with a min-max band.
Lines are drawn in reverse order, so the first configuration given is on top of any it coincides with.
A line is labelled with the trace's ``label`` (``mpiopt run --label``) when it has one, else with
the method and the options that tell it apart from the other lines of that method.
The error axis is f - f* when every trace knows f*, else ||x - x*||^2, else ||grad f||^2, unless a
metric is chosen (``--metric``; ``dist_sq`` is what ``mpiopt run --tol`` stops on). Every trace is
checked against the schema on load, so a malformed file is named instead of crashing the plot.
"""

import json
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from mpiopt.errors import InputError, quoted

ERROR_COLUMNS = (("f_gap", "f(x) - f*"), ("dist_sq", "||x - x*||²"), ("grad_norm_sq", "||∇f(x)||²"))
X_AXES = (("iteration", "iterations", 1.0), ("wire_bytes", "bits sent per rank", 8.0), ("seconds", "seconds", 1.0))
METRICS = ("auto",) + tuple(column for column, _ in ERROR_COLUMNS)
_OPTIONAL_TYPES = (("label", str, "a string"), ("n_ranks", int, "an integer"))


def load_traces(paths: Sequence[str], labels: Optional[Dict[str, str]] = None) -> List[Dict]:
    """Read trace JSON files; a missing or malformed file is an InputError naming it. ``labels`` maps
    a path to its line's label, over the trace's own ``label``."""
    traces = []
    for path in paths:
        try:
            with open(path) as fh:
                trace = json.load(fh)
        except FileNotFoundError:
            raise InputError(f"{path}: no such trace file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a trace JSON file ({exc})") from None
        if not isinstance(trace, dict) or "history" not in trace or "method" not in trace:
            raise InputError(f"{path}: no 'history'/'method' keys; is this a trace written by 'mpiopt run'?")
        trace["_columns"] = _check_trace(trace, path)
        trace["_path"] = str(path)
        if labels and str(path) in labels:
            trace["label"] = labels[str(path)]
        traces.append(trace)
    return traces


def _check_trace(trace: Dict, path: str) -> Dict[str, np.ndarray]:
    """Check the parts of a trace the figure reads; returns its plotted history columns as float
    arrays (null -> NaN). Raises InputError naming the file and the first wrong entry."""
    def wrong(what: str, expected: str, value) -> InputError:
        return InputError(f"{path}: {what} must be {expected}, got {quoted(json.dumps(value))}; is this a trace "
                          f"written by 'mpiopt run'?")

    if not isinstance(trace["method"], str):
        raise wrong("'method'", "a string", trace["method"])
    if not isinstance(trace.get("config", {}), dict):
        raise wrong("'config'", "an object", trace["config"])
    for key, kind, expected in _OPTIONAL_TYPES:
        if trace.get(key) is not None and not isinstance(trace[key], kind):
            raise wrong(f"'{key}'", expected, trace[key])
    history = trace["history"]
    if not isinstance(history, dict):
        raise wrong("'history'", "an object of columns", history)
    missing = [column for column, _, _ in X_AXES if column not in history]
    if missing:
        raise InputError(f"{path}: history has no {missing[0]!r} column; is this a trace written by 'mpiopt run'?")
    return {column: _column(history.get(column, []), lambda v: wrong(f"history column {column!r}",
                                                                      "a list of numbers (null where unknown)", v))
            for column in (*(c for c, _, _ in X_AXES), *(c for c, _ in ERROR_COLUMNS))}


def _column(values, wrong) -> np.ndarray:
    """``values`` (a JSON list of numbers and nulls) as a float array; ``wrong(values)`` gives the error."""
    if not isinstance(values, list):
        raise wrong(values)
    try:
        array = np.array(values, dtype=float)
    except (TypeError, ValueError):
        raise wrong(values) from None
    if array.ndim != 1:
        raise wrong(values)
    return array


def group_by_config(traces: List[Dict]) -> "OrderedDict[str, List[Dict]]":
    """Traces with the same method, dataset, ranks and options except the seed share one label."""
    groups: "OrderedDict[str, List[Dict]]" = OrderedDict()
    for trace in traces:
        config = {k: v for k, v in trace.get("config", {}).items() if k != "seed" and v is not None}
        key = json.dumps([trace.get("label"), trace["method"], trace.get("dataset"), trace.get("n_ranks"), config],
                         sort_keys=True)
        groups.setdefault(key, []).append(trace)
    labels = OrderedDict()
    unlabelled = [g[0] for g in groups.values() if not g[0].get("label")]
    methods = [t["method"] for t in unlabelled]
    for key, members in groups.items():
        label = members[0].get("label") or members[0]["method"]
        if not members[0].get("label") and methods.count(label) > 1:
            label += " " + _distinguishing_options(members[0], unlabelled)
        labels[label if label not in labels else f"{label} ({len(labels)})"] = members
    return labels


def _distinguishing_options(trace: Dict, others: List[Dict]) -> str:
    same_method = [o for o in others if o["method"] == trace["method"] and o is not trace]
    config = trace.get("config", {})
    diff = [k for k in sorted(config) if k != "seed" and any(o.get("config", {}).get(k) != config[k] for o in same_method)]
    return "(" + ", ".join(f"{k}={_short(config[k])}" for k in diff[:3]) + ")"


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def error_column(traces: List[Dict], metric: str = "auto"):
    """(column, axis label) of the error: ``metric``, or with "auto" the most informative column
    that every trace has. A chosen metric that some trace lacks is an InputError naming that file."""
    if metric not in METRICS:
        raise InputError(f"--metric must be one of {', '.join(METRICS)}, got {quoted(metric)}")
    candidates = ERROR_COLUMNS if metric == "auto" else [c for c in ERROR_COLUMNS if c[0] == metric]
    for column, label in candidates:
        lacking = [t["_path"] for t in traces if not np.isfinite(t["_columns"][column]).any()]
        if not lacking:
            return column, label
        if metric != "auto":
            raise InputError(f"{lacking[0]} has no {metric} values (its run did not know "
                             f"{'f*' if metric == 'f_gap' else 'x*'}); choose another --metric, or auto")
    raise InputError("the traces share no error column (f_gap, dist_sq, grad_norm_sq)")


def _stack(members: List[Dict], column: str, scale: float) -> np.ndarray:
    n = min(len(m["_columns"][column]) for m in members)
    return np.array([m["_columns"][column][:n] for m in members]) * scale


def convergence_figure(paths: Sequence[str], title: str = "", labels: Optional[Dict[str, str]] = None,
                       metric: str = "auto"):
    """The three panels (error against iterations, bits sent per rank, seconds) for the traces in
    ``paths``, as a matplotlib Figure to adjust or save; ``labels`` as for :func:`load_traces`,
    ``metric`` as for :func:`error_column`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = load_traces(paths, labels)
    groups = group_by_config(traces)
    column, ylabel = error_column(traces, metric)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), constrained_layout=True)
    colors = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    styles = ("-", "--", "-.", ":")
    for i, (label, members) in enumerate(groups.items()):
        err = _stack(members, column, 1.0)
        err[err <= 0] = np.nan
        med = np.nanmedian(err, axis=0)
        seeds = f" ({len(members)} seeds)" if len(members) > 1 else ""
        on_top = 2 + len(groups) - i  # the first configuration is drawn last, over lines that coincide with it
        for ax, (xcol, _, scale) in zip(axes, X_AXES):
            xs = np.nanmedian(_stack(members, xcol, scale), axis=0)
            line, = ax.plot(xs, med, styles[(i // 10) % 4], color=colors(i % 20), lw=1.6, label=label + seeds,
                            zorder=on_top)
            if len(members) > 1:
                ax.fill_between(xs, np.nanmin(err, axis=0), np.nanmax(err, axis=0), color=line.get_color(), alpha=0.2,
                                zorder=on_top)
    for ax, (_, xlabel, _) in zip(axes, X_AXES):
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    first = traces[0]
    axes[0].set_title(title or f"{first.get('dataset', '')}, {first.get('n_ranks', '?')} ranks")
    axes[2].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, frameon=False)
    return fig


def plot_traces(paths: Sequence[str], out: str, title: str = "",
                labels: Optional[Dict[str, str]] = None, metric: str = "auto") -> Path:
    """Draw :func:`convergence_figure` and save it to ``out`` (format from its suffix)."""
    import matplotlib.pyplot as plt

    fig = convergence_figure(paths, title, labels, metric)
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out_path, dpi=120)
    except ValueError as exc:
        raise InputError(f"--out {out}: {exc}") from None
    finally:
        plt.close(fig)
    return out_path
