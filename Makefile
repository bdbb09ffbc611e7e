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

venv: $(STAMP)

DEMO_CLIPS ?= liveportrait_d0 aniportrait_pose_ref_video sadtalker_WDA_KatieHill_000
SHARED_VIDEOS ?= $(abspath ../shared/data/videos)

# The main job on built-in defaults: preprocess a few shared clips locally into shards + contact sheets.
demo: $(STAMP)
	@mkdir -p $(DEMO_OUT)
	@printf 'path\n' > $(DEMO_OUT)/manifest.csv
	@for clip in $(DEMO_CLIPS); do printf '%s\n' "$(SHARED_VIDEOS)/$$clip.mp4" >> $(DEMO_OUT)/manifest.csv; done
	$(BIN)/python -m jobs.preprocess --config configs/preprocess.yaml \
		--input $(DEMO_OUT)/manifest.csv --output $(DEMO_OUT)/preprocess

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
