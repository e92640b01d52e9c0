# Two commands do all set-up on a fresh machine (Python 3.10+ and a C toolchain-free pip install):
#   make demo   start everything on the embedded default, submit a job, show the result
#   make test   run the whole test suite (CI: .ci/run, with HOME an empty temporary directory)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: install demo down test test-unit bench screenshots clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The demo profile: every model (SDXL, Z-Image, Whisper, an LLM) as a tiny UNTRAINED version built
# locally, so it all runs on a CPU with no downloads. Outputs are noise, and labelled so. The GPU
# arbiter runs against a virtual 32 GB GPU: the chat job waits while SDXL is evicted for the LLM.
demo: install
	$(VENV)/bin/gpu-orch up --demo
	$(VENV)/bin/gpu-orch submit sdxl -p prompt="a red fox in the snow" -p width=256 -p height=256 -p num_inference_steps=10 --wait --out demo-output
	$(VENV)/bin/gpu-orch submit chat -p messages='[{"role":"user","content":"hello"}]' -p max_tokens=16 --wait
	-$(VENV)/bin/gpu-orch arbiter
	@echo "Stack is still up: images in demo-output/; watch the arbiter at http://127.0.0.1:8000/ui/admin/ (models scale to zero after 60 s idle), try '$(VENV)/bin/gpu-orch workers', open http://127.0.0.1:8000/docs; stop with 'make down'."
	@echo 'Ray CLI with the stack auth token: eval "$$($(VENV)/bin/gpu-orch env)", then ray status, serve status.'

down: install
	$(VENV)/bin/gpu-orch down

# Two pytest-xdist workers: the Ray-session tests (tests/serve, tests/browser) on one, the e2e tests
# and then the unit and integration tests on the other (tests/ray_session.py groups them).
test: install
	$(PY) -m pytest -q -n 2 --dist loadgroup

test-unit: install
	$(PY) -m pytest -q tests/unit

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/overhead.py

# The README shows docs/screenshots/: refresh them from the last browser test run (build/screenshots/).
screenshots:
	@ls build/screenshots/*.png >/dev/null 2>&1 || { echo "no build/screenshots/: run make test (or pytest tests/browser) first"; exit 1; }
	cp build/screenshots/*.png docs/screenshots/

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
