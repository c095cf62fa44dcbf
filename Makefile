# Set-up and the two main jobs on a fresh machine. `make demo` runs the main job, `make test` the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION := 2.13.0

.PHONY: demo test lint setup clean

$(BIN)/qcsfer: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: on this CPU machine the pinned wheel is local; a looser requirement
	# would pull a multi-GB CUDA build. The package's own range is then already satisfied.
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[dev,serve]'
	# The MTCNN detector's weights; --no-deps because the wheel pins an old torch and torchvision,
	# neither of which its weights need (qcsfer reads them without importing the package).
	$(BIN)/pip install --quiet --no-deps facenet-pytorch==2.6.0
	touch $@

setup: $(BIN)/qcsfer

demo: setup
	$(BIN)/qcsfer predict src/qcsfer/assets/astronaut.jpg src/qcsfer/assets/coffee.jpg --out demo-output

test: setup
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks tools
	$(BIN)/ruff format --check src tests benchmarks tools

clean:
	rm -rf $(VENV) build *.egg-info
