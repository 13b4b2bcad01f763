"""`facecheck export` and the torch-free path (issue 29): the exported graph in ONNX Runtime
gives the PyTorch path's verdicts, scores and region scores on real images, a `check` that
runs it imports no torch, and a graph that no longer matches its bundle is never used."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from facecheck.cli.common import load_scorer
from facecheck.detector.bundle import BundleError, default_bundle_path
from facecheck.detector.export import ExportError, export, exportable
from facecheck.detector.pipeline import Detector
from facecheck.detector.runtime import ExportedDetector, exported_graph_path
from facecheck.heads.models import LogisticHead

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shipped bundle's graph, exported into a fresh cache (~12 s on 2 cores)."""
    cache = tmp_path_factory.mktemp("export-cache")
    path = export(cache_dir=cache)
    assert path.parent == cache / "export" and path.stat().st_size > 100e6
    return cache, path


@pytest.fixture(scope="module")
def mixed(shared_data, images) -> list:
    """Real files of every kind, and uploads the face stage or the decoder refuses."""
    d = shared_data
    return [
        *sorted((d / "rff" / "real").glob("*.jpg"))[:3],
        *sorted((d / "rff" / "fake").glob("*.jpg"))[:3],
        *sorted((d / "gan" / "fake").glob("*.jpg"))[:2],
        *sorted((d / "utkface" / "real").glob("*.jpg"))[:2],
        *sorted((d / "diffusion" / "fake").glob("*"))[:1],
        images["no_face"],
        images["multiple_faces"],
        images["invalid_image"],
    ]


def test_onnx_scores_equal_the_pytorch_path(exported, mixed):
    cache, _ = exported
    onnx = ExportedDetector.load(cache_dir=cache).check(mixed, regions="all")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACECHECK_PRECISION", "fp32")  # the graph is fp32; bf16 differs by ~1e-3
        torch_path = Detector.load().check(mixed, regions="all")
    assert [v.verdict for v in onnx] == [v.verdict for v in torch_path]
    assert {v.verdict for v in onnx} >= {"real", "fake", "no_face", "invalid_image"}
    for a, b in zip(onnx, torch_path, strict=True):
        assert (a.sha256, a.error_code, a.face, a.model_version) == (
            b.sha256,
            b.error_code,
            b.face,
            b.model_version,
        )
        if b.fake_probability is None:
            assert a.fake_probability is None
            continue
        assert a.fake_probability == pytest.approx(b.fake_probability, abs=1e-4)
        assert a.regions.keys() == b.regions.keys()
        assert np.allclose(list(a.regions.values()), list(b.regions.values()), atol=2e-4)


def test_check_on_the_graph_imports_no_torch(exported, shared_data, tmp_path):
    cache, _ = exported
    files = [shared_data / "gan" / "fake" / "tpdne_000_0002.jpg",
             shared_data / "rff" / "real" / "real_00001.jpg"]  # fmt: skip
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(files[1].read_bytes()[:300])
    args = ["check", "--json", "--runtime", "onnx", "--cache-dir", str(cache),
            *map(str, files), str(broken)]  # fmt: skip
    code = (
        "import sys; from facecheck.cli.main import main; rc = main(sys.argv[1:]); "
        "print('torch imported' if 'torch' in sys.modules else 'torch-free', file=sys.stderr); "
        "sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr  # one input could not be judged
    assert "torch-free" in proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [x["input"] for x in lines] == [*map(str, files), str(broken)]  # input order
    assert [x["verdict"] for x in lines] == ["fake", "real", "invalid_image"]


def test_a_graph_that_no_longer_matches_its_bundle_is_not_used(exported, tmp_path):
    _, graph = exported
    bundle = tmp_path / "bundle"
    shutil.copytree(default_bundle_path(), bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    here = exported_graph_path(bundle, meta)
    assert here.parent == bundle  # another bundle keeps its graph in its own folder
    here.symlink_to(graph)
    assert ExportedDetector.load(bundle).check([]) == []
    # The nose's region head retrained: the bundle's digest, and the graph's name, change.
    nose = bundle / "region_nose.npz"
    with np.load(nose) as z:
        state = {k: z[k] for k in z.files}
    state["intercept"] = state["intercept"] + 1.0
    np.savez(nose, **state)
    with pytest.raises(BundleError, match="no exported graph"):
        ExportedDetector.load(bundle)
    assert isinstance(load_scorer(bundle, runtime="auto"), Detector)  # PyTorch instead
    # The old graph under the new name is caught by the digest inside it.
    exported_graph_path(bundle, meta).symlink_to(graph)
    det = ExportedDetector.load(bundle)
    with pytest.raises(BundleError, match="another bundle"):
        det.session  # noqa: B018


def test_export_refuses_what_it_cannot_compute(lite0):
    det = Detector("efficientnet_lite0", "logreg", tta=True)
    det.head = LogisticHead(C=0.01).fit(np.random.default_rng(0).normal(size=(20, 4)),
                                        np.arange(20) % 2)  # fmt: skip
    with pytest.raises(ExportError, match=r"only fp32 CLIP backbones.*test-time flip"):
        exportable(det)
    with pytest.raises(ValueError, match="runtime is one of"):
        load_scorer(runtime="tensorrt")
