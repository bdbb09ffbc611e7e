# Two commands on a fresh machine: `make demo` and `make test`. Both create or update .venv first;
# when nothing changed the environment step is a no-op (a stamp newer than every pin file).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= outputs/demo

.PHONY: venv demo test lint clean-venv

$(STAMP): requirements.txt requirements-nodeps.txt setup.cfg pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# PyTorch3D's CPU wheel for this machine's pins (../shared/wheels/README.md), where ../shared has it: the
# rasteriser's PyTorch3D agreement tests then run. The wheel is tied to the torch it was built against, so it
# stays installed only if it imports with the pinned one; otherwise it is removed and those tests skip.
PYTORCH3D_WHEEL := $(firstword $(wildcard ../shared/wheels/pytorch3d-*-cp311-cp311-linux_x86_64.whl))
P3D_STAMP := $(VENV)/.pytorch3d
P3D_IMPORT := from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes

$(P3D_STAMP): $(STAMP) $(PYTORCH3D_WHEEL)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps $(PYTORCH3D_WHEEL)
	@if $(BIN)/python -c "$(P3D_IMPORT)" 2>/dev/null; then echo "PyTorch3D from $(PYTORCH3D_WHEEL)"; \
	else $(BIN)/python -m pip uninstall -q -y pytorch3d; \
		echo "$(PYTORCH3D_WHEEL) does not import with the pinned torch: not installed, its tests skip"; fi
	@touch $@

venv: $(STAMP) $(if $(PYTORCH3D_WHEEL),$(P3D_STAMP))

# The whole chain on built-in defaults (pipeline/demo.py): preprocess three clips, train, fine-tune a new
# person, reenact them and write the evaluation report under $(DEMO_OUT); inputs from ../shared, else
# downloaded once into ~/.cache/head2head.
demo: $(STAMP)
	$(BIN)/python -m jobs.demo --output $(DEMO_OUT)

lint: venv
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
