# `make test` and `make book` create .venv when missing and install xaikit into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xaikit-installed

.PHONY: test book check-book install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# AttnLRP's authors' code checks ours in tests; --no-deps skips its Hugging Face extras.
	$(PY) -m pip install --quiet --no-deps 'lxt==2.1'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# Re-executes only the notebooks changed since their last successful run (xaikit run --force: all);
# xaikit build refuses a book with a missing or failed notebook.
book: $(STAMP)
	$(VENV)/bin/xaikit run --profile demo
	$(VENV)/bin/xaikit build

# The rendered pages in headless Chromium (apt-get install chromium chromium-driver).
check-book: $(STAMP)
	$(VENV)/bin/xaikit check-book

clean:
	rm -rf book/_build _books
