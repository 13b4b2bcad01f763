"""`facecheck finetune`: train a network end to end."""

from __future__ import annotations

import dataclasses
import json
import time

from facecheck.cli.common import _rule


def cmd_finetune(args) -> int:
    from facecheck.evaluation.data import load_dataset
    from facecheck.evaluation.metrics import binary_metrics
    from facecheck.evaluation.protocols import build
    from facecheck.evaluation.report import write_csv
    from facecheck.training.finetune import FineTuner, TrainConfig

    ds = load_dataset(args.data)
    proto = build(args.protocol, ds, args.seed)
    config = TrainConfig(
        network=args.network,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        patience=args.patience,
        imbalance=args.imbalance,
        seed=args.seed,
        weights=str(args.weights) if args.weights else None,
        **({"augment": args.augment} if args.augment is not None else {}),
    )
    train, val = proto.split.train, proto.split.val
    ft = FineTuner(config, device=args.device)
    t0 = time.perf_counter()
    ft.fit(
        train.paths,
        train.y,
        val.paths,
        val.y,
        checkpoint_dir=args.out / "checkpoints",
        resume=args.resume,
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - t0
    sv = ft.predict_proba(val.paths)[:, 1]
    thr = ft.set_threshold_from(val.y, sv, rule=_rule(args), groups=val.sources)
    ft.save(args.out / "model.pt")
    write_csv(args.out / "history.csv", ft.history, fields=None)
    summary = {
        "protocol": proto.name,
        "seed": args.seed,
        "config": dataclasses.asdict(config),
        "train_counts_after_imbalance": ft.train_counts_,
        "device": str(ft.device),
        "train_seconds": round(seconds, 1),
        "best_epoch": ft.best_epoch_,
        "threshold": thr,
        "threshold_rule": _rule(args),
        "val": binary_metrics(val.y, sv, thr),
    }
    if args.evaluate:
        summary["test"] = {}
        for name, test in proto.test_sets.items():
            s = ft.predict_proba(test.paths)[:, 1]
            summary["test"][name] = binary_metrics(test.y, s, thr)
            m = summary["test"][name]
            print(
                f"test {name}: ROC-AUC {m['roc_auc']:.3f}, recall {m['recall']:.3f}, "
                f"precision {m['precision']:.3f}, FPR {m['fpr']:.3f}"
            )
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"saved {args.out / 'model.pt'}; threshold {thr:.3f} from validation ({_rule(args)})")
    return 0
