"""Equal treatment: how often honest customers of each group are flagged (issue 31).

Group labels come only from the data (UTKFace's file names, or a manifest's ``groups``
column), never from a model looking at faces. They are used to *report*: the detector never
sees them, and no decision depends on them.

The table, per attribute (age band, gender, race) and group: the share of that group's
honest photos flagged at the operating threshold with a bootstrap 95% CI, recall where the
group's fakes carry labels, and the worst-to-best ratio of flagged shares among the groups
large enough to show (smaller ones are pooled, and said so).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

UNKNOWN = "unknown"
ATTRIBUTES = ("age", "gender", "race")
# UTKFace's own coarse categories (its README).
GENDERS = {"0": "male", "1": "female"}
RACES = {"0": "White", "1": "Black", "2": "Asian", "3": "Indian", "4": "Others"}
AGE_BANDS = (
    (0, 17, "0-17"),
    (18, 29, "18-29"),
    (30, 44, "30-44"),
    (45, 59, "45-59"),
    (60, 200, "60+"),
)
# [age]_[gender]_[race]_[date&time].jpg.chip.jpg; a few names lack a field.
_UTK = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d{8,})\.")
_UTK_SHORT = re.compile(r"^(\d+)_(\d+)_(\d{8,})\.")
# Groups with fewer honest photos than this are pooled in the table (issue 31: >= 30 shown).
MIN_GROUP = 30


def age_band(age: int) -> str:
    for lo, hi, name in AGE_BANDS:
        if lo <= age <= hi:
            return name
    return UNKNOWN


def utkface_groups(path: str | Path) -> dict[str, str]:
    """Age band, gender and race from a UTKFace file name; a name with a field missing
    keeps its age and leaves the other two unknown (which one is missing is not said)."""
    name = Path(path).name
    m = _UTK.match(name)
    if m:
        age, gender, race, _ = m.groups()
        return {
            "age": age_band(int(age)),
            "gender": GENDERS.get(gender, UNKNOWN),
            "race": RACES.get(race, UNKNOWN),
        }
    m = _UTK_SHORT.match(name)
    if m:
        return {"age": age_band(int(m.group(1))), "gender": UNKNOWN, "race": UNKNOWN}
    return {a: UNKNOWN for a in ATTRIBUTES}


def groups_of(record) -> dict[str, str] | None:
    """A record's group labels: a manifest's ``groups`` column first, else UTKFace's file
    name; None where the data says nothing."""
    supplied = dict(getattr(record, "groups", ()) or ())
    if supplied:
        return {str(k): str(v) for k, v in supplied.items()}
    if record.source == "utkface":
        return utkface_groups(record.path)
    return None


@dataclass(frozen=True)
class GroupRow:
    attribute: str
    group: str  # a group's name, or "pooled: a, b" for the small ones together
    n_real: int
    flagged: float  # share of the group's honest photos flagged
    ci: tuple[float, float]
    n_fake: int = 0
    recall: float | None = None
    recall_ci: tuple[float, float] | None = None


def _share_ci(flags: np.ndarray, rng: np.random.Generator, n_boot: int) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of a share (0/1 flags)."""
    if len(flags) == 0:
        return (float("nan"), float("nan"))
    draws = rng.integers(0, len(flags), size=(n_boot, len(flags)))
    means = flags[draws].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def group_table(
    y: Sequence[int] | np.ndarray,
    flagged: Sequence[bool] | np.ndarray,
    groups: Sequence[Mapping[str, str] | None],
    *,
    min_group: int = MIN_GROUP,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[GroupRow]:
    """Rows per attribute and group (``groups[i]`` None or a group's value "unknown": not
    counted), plus an ``overall`` row per attribute over the labelled photos."""
    y, flagged = np.asarray(y, np.int64), np.asarray(flagged, bool)
    rng = np.random.default_rng(seed)
    rows: list[GroupRow] = []
    attributes = sorted({a for g in groups if g for a in g}, key=_attribute_order)
    for attr in attributes:
        values = np.array([(g or {}).get(attr, UNKNOWN) for g in groups])
        labelled = values != UNKNOWN
        names = sorted(set(values[labelled]), key=_group_order)
        small = [v for v in names if ((values == v) & (y == 0)).sum() < min_group]
        shown = [v for v in names if v not in small]
        parts = [(v, values == v) for v in shown]
        if small:
            parts.append(("pooled: " + ", ".join(small), np.isin(values, small)))
        parts.append(("overall", labelled))
        for name, member in parts:
            real, fake = member & (y == 0), member & (y == 1)
            rows.append(
                GroupRow(
                    attr,
                    name,
                    int(real.sum()),
                    float(flagged[real].mean()) if real.any() else float("nan"),
                    _share_ci(flagged[real].astype(np.float64), rng, n_boot),
                    int(fake.sum()),
                    float(flagged[fake].mean()) if fake.any() else None,
                    _share_ci(flagged[fake].astype(np.float64), rng, n_boot)
                    if fake.any()
                    else None,
                )
            )
    return rows


def _attribute_order(a: str) -> tuple[int, str]:
    return (ATTRIBUTES.index(a) if a in ATTRIBUTES else len(ATTRIBUTES), a)


def _group_order(v: str) -> tuple[int, str]:
    bands = [b for _, _, b in AGE_BANDS]
    return (bands.index(v) if v in bands else len(bands), v)


def _shown(rows: Sequence[GroupRow], attribute: str, min_n: int) -> list[GroupRow]:
    """An attribute's groups with at least ``min_n`` honest photos (not pooled, not overall)."""
    return [
        r
        for r in rows
        if r.attribute == attribute
        and r.n_real >= min_n
        and r.group != "overall"
        and not r.group.startswith("pooled")
    ]


def worst_to_best(rows: Sequence[GroupRow], attribute: str, min_n: int = MIN_GROUP) -> dict:
    """Among an attribute's groups with at least ``min_n`` honest photos (not pooled, not
    overall): the highest and lowest flagged share and their ratio (inf when the lowest is
    0 and the highest is not)."""
    shown = _shown(rows, attribute, min_n)
    if len(shown) < 2:
        return {"worst": None, "best": None, "ratio": float("nan")}
    worst, best = max(shown, key=lambda r: r.flagged), min(shown, key=lambda r: r.flagged)
    if worst.flagged == best.flagged:
        return {"worst": worst.group, "best": worst.group, "ratio": 1.0}
    if best.flagged == 0:
        ratio = 1.0 if worst.flagged == 0 else float("inf")
    else:
        ratio = worst.flagged / best.flagged
    return {"worst": worst.group, "best": best.group, "ratio": ratio}


def meets_goal(rows: Sequence[GroupRow], attribute: str, n: int = 50) -> bool:
    """Issue 31's goal for one attribute: every pair of groups with >= ``n`` honest photos
    flags within a ratio of 1.25, or both at most 2%."""
    shown = _shown(rows, attribute, n)
    for a in shown:
        for b in shown:
            low, high = sorted((a.flagged, b.flagged))
            if high > 0.02 and (low == 0 or high / low > 1.25):
                return False
    return True


def section(rows: Sequence[GroupRow], title: str) -> list[str]:
    """The Markdown section a report or model card carries."""
    if not rows:
        return []
    lines = [
        f"### Equal treatment: {title}",
        "",
        "Share of each group's honest photos flagged at the operating threshold (95% "
        "bootstrap CI), and recall where the group's fakes carry labels. Labels come from "
        f"the data only (file names or a manifest column); groups under {MIN_GROUP} honest "
        "photos are pooled. Never used to decide: one threshold for everyone.",
        "",
        "| attribute | group | honest photos | flagged [95% CI] | vs overall | fakes "
        "| recall [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    overall = {r.attribute: r.flagged for r in rows if r.group == "overall"}
    for r in rows:
        base = overall.get(r.attribute)
        rel = f"{r.flagged / base:.2f}x" if base else "-"  # nothing flagged overall: no ratio
        lines.append(
            f"| {r.attribute} | {r.group} | {r.n_real} | {r.flagged:.1%} "
            f"[{r.ci[0]:.1%}, {r.ci[1]:.1%}] | {rel} | {r.n_fake or ''} | "
            f"{_recall_cell(r)} |"
        )
    lines += ["", "Worst-to-best ratio of flagged shares (groups shown, not pooled):"]
    for attr in dict.fromkeys(r.attribute for r in rows):
        w = worst_to_best(rows, attr)
        if w["worst"] is None:
            lines.append(f"- {attr}: fewer than two groups large enough")
        else:
            goal = "meets" if meets_goal(rows, attr) else "misses"
            pair = (
                "every group alike" if w["worst"] == w["best"] else f"{w['worst']} vs {w['best']}"
            )
            lines.append(
                f"- {attr}: {w['ratio']:.2f} ({pair}); {goal} the goal "
                "(ratio <= 1.25 or both <= 2% for groups of >= 50)"
            )
    gaps = [g for attr in dict.fromkeys(r.attribute for r in rows) if (g := recall_gap(rows, attr))]
    if gaps:
        lines += ["", "Recall: each attribute's group furthest below the overall recall:"]
        for g in gaps:
            verdict = (
                "within the goal (3 points)"
                if g["gap"] <= RECALL_GAP
                else "beyond the goal (3 points)"
                + (", but the overall recall lies inside the group's CI: not shown to be a "
                   "real gap at this sample size" if g["within_ci"] else "")
            )  # fmt: skip
            lines.append(
                f"- {g['attribute']}: {g['group']} {g['recall']:.1%} of {g['n_fake']} fakes"
                + (f" [{g['ci'][0]:.1%}, {g['ci'][1]:.1%}]" if g["ci"] else "")
                + f" against {g['overall']:.1%} overall "
                f"({g['gap'] * 100:.1f} points); {verdict}"
            )
    return [*lines, ""]


# Issue 31: recall for fakes not worse for any labelled group by more than 3 points.
RECALL_GAP = 0.03


def recall_gap(rows: Sequence[GroupRow], attribute: str) -> dict | None:
    """The attribute's group (not pooled) whose recall lies furthest below the overall
    recall, with its CI and whether the overall figure falls inside that CI (then the gap
    is not distinguishable from sampling noise); None without labelled fakes."""
    overall = next((r for r in rows if r.attribute == attribute and r.group == "overall"), None)
    groups = [
        r
        for r in rows
        if r.attribute == attribute
        and r.recall is not None
        and r.group != "overall"
        and not r.group.startswith("pooled")
    ]
    if overall is None or overall.recall is None or not groups:
        return None
    low = min(groups, key=lambda r: r.recall)  # type: ignore[arg-type,return-value]
    ci = low.recall_ci  # None in tables stored before recall had CIs
    return {
        "attribute": attribute,
        "group": low.group,
        "recall": low.recall,
        "n_fake": low.n_fake,
        "ci": ci,
        "overall": overall.recall,
        "gap": max(0.0, overall.recall - float(low.recall)),  # type: ignore[arg-type]
        "within_ci": ci is not None and bool(ci[0] <= overall.recall <= ci[1]),
    }


def _recall_cell(r: GroupRow) -> str:
    if r.recall is None:
        return ""
    if r.recall_ci is None:
        return f"{r.recall:.1%}"
    return f"{r.recall:.1%} [{r.recall_ci[0]:.1%}, {r.recall_ci[1]:.1%}]"


def held_out_table(det, records, *, seed: int = 0) -> dict | None:
    """The equal-treatment table of a detector on held-out ``records`` (those with group
    labels) at its threshold: what ``train`` stores in the bundle for the model card. None
    when no record carries labels."""
    labelled = [r for r in records if groups_of(r) is not None]
    if not labelled:
        return None
    # Pictures the face stage refuses (no face, several) are left out, as in evaluation.
    F = det.features([r.path for r in labelled], [r.sha256 for r in labelled], skip_faceless=True)
    ok = ~np.isnan(F).any(axis=1)
    scores = np.full(len(labelled), np.nan)
    scores[ok] = det.score_features(F[ok])
    y = np.array([r.y for r in labelled])
    rows = group_table(
        y[ok],
        scores[ok] >= det.threshold,
        [groups_of(r) for r, k in zip(labelled, ok, strict=True) if k],
        seed=seed,
    )
    return {
        "images": int(ok.sum()),
        "left_out": int((~ok).sum()),
        "threshold": float(det.threshold),
        "rows": [asdict(r) for r in rows],
    }


def rows_from(stored: dict) -> list[GroupRow]:
    """:func:`held_out_table`'s rows back as :class:`GroupRow`."""
    return [
        GroupRow(
            **{
                **r,
                "ci": tuple(r["ci"]),
                "recall_ci": tuple(r["recall_ci"]) if r.get("recall_ci") else None,
            }
        )
        for r in stored["rows"]
    ]
