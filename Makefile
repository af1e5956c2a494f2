# The README's two commands: `make demo` runs the main job on the embedded defaults, `make test` runs
# the test suite. Both build the virtual environment first (torch 2.13.0 CPU build before the rest).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.adloop-installed
DEMO_OUT ?= out/demo

.PHONY: demo test lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/adloop refresh --input engine/assets/samples.jsonl --output $(DEMO_OUT) --base-model toy \
		--rfnet toy --depth toy --saliency toy

# The report test renders the page in headless Chromium (Debian's package); the review test drives it
# through Debian's chromedriver with Selenium. CI runs as root.
test: $(STAMP)
	(command -v chromium && command -v chromedriver) >/dev/null || (apt-get update && apt-get install -y chromium chromium-driver)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) out
