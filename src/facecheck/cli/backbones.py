"""`facecheck backbones`: list feature extractors and networks."""

from __future__ import annotations


def cmd_backbones(_args) -> int:
    from facecheck.backbones.registry import _REGISTRY

    for name, entry in sorted(_REGISTRY.items()):
        installed = "installed" if entry.default_weights() else f"missing: {entry.install_hint}"
        print(f"{name:20s} {entry.description}; weights {installed}")
    print("timm:<model>         any timm model with --weights FILE (or --allow-download)")
    from facecheck.backbones.networks import NETWORKS

    print("\nnetworks for `facecheck finetune`:")
    for name, net in NETWORKS.items():
        print(f"{name:20s} {net.description}")
    return 0
