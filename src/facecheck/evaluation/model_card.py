"""The model card written beside every bundle: what it is, what it was trained on, under
which terms, how it did, and how it treats groups of honest customers."""

from __future__ import annotations

from pathlib import Path

from facecheck.evaluation.data import source_terms
from facecheck.evaluation.groups import rows_from, section


def _face_stage_text(det) -> str:
    stage = det.face_stage
    if not stage.active:
        return "Images are scored as given (face stage off): give it tight face crops."
    how = (
        "tight crops (one face >= "
        f"{stage.passthrough_width:.0%} of the width) pass through, smaller faces are aligned "
        "by the eyes and cropped like the training crops"
        if stage.mode == "auto"
        else "every face is aligned by the eyes and cropped like the training crops"
    )
    return (
        f"Face stage `{stage.mode}` ({stage.detector}): {how}; pictures with no face or "
        "several get the verdicts `no_face` / `multiple_faces`."
    )


def _counts_text(counts: dict | None) -> str:
    return ", ".join(f"{v:,} {k}" for k, v in (counts or {}).items()) or "counts not recorded"


# What a model card says a backbone cannot do (measured: benchmarks/results.md).
def _field_options(training: dict) -> str:
    """The training-for-the-field options of the recipe (issue 26), as `evaluate` takes them."""
    out = ""
    if training.get("synthetic"):
        out += " --synthetic DIR"
    if aug := training.get("train_augment"):
        out += f" --train-augment {aug['chain']}"
        if aug.get("validation"):
            out += " --augment-validation"
    return out


_LIMITS = {
    "default": "frozen ImageNet features barely separate Photoshop edits from real photos of "
    "the same source (rff same-source ROC-AUC is far below the GAN figures).",
    "clip_vit_b16_layers": "Photoshop edits of the same source are caught far better than by "
    "ImageNet features (P1 ROC-AUC by 5-fold CV: 0.93 on the class tokens, 0.96 with the "
    "regions' patch tokens too) but not all: at 10% FPR about one edit in ten is missed. No "
    "threshold fitted on these data can know where photos from a camera or source the "
    "detector has not seen will score (P7: 44-100% of an unseen real source flagged): run "
    "`facecheck calibrate` on a few hundred of your own photos. About 0.3 s per image on a "
    "2-core CPU.",
    "clip_vit_b16_l8": "A fake family it never trained on is caught far less often at its "
    "threshold than the families it knows (P8's leave-one-family-out), photos from a camera "
    "it never saw may be flagged far more often than its validation cameras' (P8's "
    "leave-one-camera-out), and a face printed and photographed again defeats it (P8's "
    "print_recapture chain); every family, camera and chain is measured in "
    "benchmarks/p8_recipes.md. Run `facecheck calibrate` on a few hundred of your own photos "
    "before use. Latency: benchmarks/cold_start.md.",
}


def _rule_options(rule: str) -> str:
    """The `facecheck evaluate` options that choose a threshold by ``rule``."""
    kind, _, value = rule.partition(":")
    flags = {"fpr": "--max-fpr", "recall": "--target-recall", "budget": "--review-budget"}
    if kind in flags and value:
        return f" {flags[kind]} {value.split()[0]}"
    return "" if rule in ("youden", "default") else f" --threshold-rule {rule}"


def write_model_card(bundle_dir: Path, det) -> Path:
    """MODEL_CARD.md beside a bundle: what it was trained on, under which terms, how it did."""

    meta = det.metadata
    deployed = meta.get("deployment_calibration")
    training = meta.get("training", {})
    val = meta.get("metrics_val", {})
    sources = sorted({k.split("/")[0] for k in training.get("train_counts", {})})
    bb = det.backbone
    lines = [
        f"# Model card: {det.version}",
        "",
        "**Terms of use: research and non-commercial only.** The weights were fitted on data "
        "under those terms (the sources and their terms are listed below); the code that "
        "made them is Apache-2.0 (`LICENSE`).",
        "",
        f"- **What it does**: scores a face image's probability of being fake (edited or "
        f"generated); verdict `fake` at or above the threshold {det.threshold:.3f} "
        + (
            f"(rule `{det.threshold_rule}`, set by `facecheck calibrate` on "
            f"{deployed['created'][:10]}: it flags {deployed['flagged_share']:.1%} of those "
            f"photos, fingerprint `{deployed['photos_fingerprint']}`; the validation threshold "
            f"was {deployed['previous_threshold']:.3f}, rule `{deployed['previous_rule']}`)."
            if deployed
            else f"(chosen on the validation split by rule `{det.threshold_rule}`)."
        ),
        f"- **Architecture**: frozen {bb.name} features ({bb.dim}-d, "
        f"{bb.preprocessing.size} px, weights `{bb.weights_id}`, {bb.licence})"
        + (
            ", followed by the same pass's map pooled in the four region boxes "
            + (
                "and every patch token with the boxes' weights over them "
                if det.head_input == "tokens"
                else ""
            )
            + f"({det.extractor.dim}-d in all: the head reads where the edits are) -> "
            if det.with_regions
            else " -> "
        )
        + f"`{det.head_kind}` head (imbalance strategy "
        f"`{det.head.get_params().get('imbalance', 'n/a')}`). {_face_stage_text(det)}",
        *(
            [
                "- **Numeric path**: the backbone's passes run in bf16 where the CPU multiplies "
                "bfloat16 natively (AVX-512 BF16 or AMX) and in fp32 elsewhere, chosen at load "
                "time; bf16 was measured as accurate as fp32 for the shipped detector (paired "
                "ROC-AUC and its verdicts on its test split: `benchmarks/cpu_precision.md`), "
                "INT8 was not. `FACECHECK_PRECISION=fp32` forces fp32."
            ]
            if hasattr(bb.model, "set_precision")
            else []
        ),
        "- **Probabilities**: "
        + (
            f"temperature-scaled on validation (T = {det.calibration.temperature_:.3g})"
            + (
                f", prior shifted to a fake rate of {det.calibration.fake_rate:g}"
                if det.calibration.fake_rate
                else ", at the validation split's fake share"
            )
            if det.calibration is not None
            else "the head's raw scores (not calibrated: rank them, do not read them as odds)"
        )
        + ".",
        f"- **Training data**: protocol {training.get('protocol')} ({training.get('title')}), "
        f"seed {training.get('seed')}, split by content hash; train counts "
        f"{training.get('train_counts')}; data fingerprint "
        f"`{str(training.get('data_fingerprint', ''))[:16]}`"
        + (
            f"; plus one processed copy of each training image (`{aug['chain']}` chains, "
            f"{aug['copies']} copies, through the face stage as in serving)"
            if (aug := training.get("train_augment"))
            else ""
        )
        + (
            f"; synthetic fakes made from the training cameras' reals ({syn['train']} in "
            f"train, {syn['val']} in validation; `facecheck synthesize`)"
            if (syn := training.get("synthetic"))
            else ""
        )
        + ".",
        "- **Region scores**: "
        + (
            "P(replaced) for the left eye, right eye, nose and mouth, from the same backbone's "
            + (
                "map (patch tokens / last cells) averaged inside a box around each (placed by "
                "the face stage's keypoints; the eyes share one logistic head)"
                if det.region_view == "pooled"
                else "features of a crop around each (placed by the face stage's keypoints; "
                "the eyes share one logistic head, the right eye mirrored)"
            )
            + ", trained on the file-name bits of the rff fakes in the training split "
            f"({_counts_text(training.get('region_training'))}); "
            "`check` gives them for images judged fake, `explain` for any image, with a "
            "heatmap. How well they localise: P6 in `benchmarks/localise.md`."
            if det.regions is not None
            else "none (the training data had no region labels)."
        ),
        "- **Data sources and their terms** (the bundle inherits them: research and "
        "non-commercial use only):",
        *[f"  - `{s}`: {source_terms(s)}" for s in sources],
        "- **Validation** (threshold-selection split, not a test figure): "
        + ", ".join(
            f"{k} {val[k]:.3f}" for k in ("recall", "precision", "roc_auc", "fpr") if k in val
        )
        + ".",
        f"- **Test figures**: `facecheck evaluate --protocols {training.get('protocol')} "
        f"--backbones {bb.name} --heads {det.head_kind}"
        + (f" --head-input {det.head_input}" if det.with_regions else "")
        + _rule_options(deployed["previous_rule"] if deployed else det.threshold_rule)
        + _field_options(training)
        + "` (the same recipe with the test split scored once; figures in "
        + (
            "`benchmarks/p8_recipes.md`, the bundle as it ships included)."
            if str(training.get("protocol", "")).startswith("P8")
            else "`benchmarks/results.md`)."
        ),
        f"- **Known limits**: {_LIMITS.get(bb.name, _LIMITS['default'])} Figures that mix "
        "sources between classes partly measure the source. Not for automatic rejection: "
        "every `fake` verdict goes to a person.",
    ]
    for key, where in (
        ("equal_treatment", "held-out test split"),
        ("deployment_equal_treatment", "the deployment's labelled sample (`calibrate --groups`)"),
    ):
        stored = meta.get(key)
        if stored:
            lines += [
                "",
                *section(
                    rows_from(stored),
                    f"{where} ({stored['images']} labelled images) at the threshold "
                    f"{stored['threshold']:.3f}",
                ),
            ]
    path = Path(bundle_dir) / "MODEL_CARD.md"
    path.write_text("\n".join(lines) + "\n")
    return path
