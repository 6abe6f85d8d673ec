# pmi-video: `make demo` runs the offline demo end to end, `make test` runs the test suite.
# Both install what is missing first: Debian packages ffmpeg and a Java runtime (METEOR),
# then a virtual environment .venv with the pinned Python packages.

PYTHON ?= python3.11
VENV := .venv
VENV_PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
APT_PACKAGES := ffmpeg default-jre-headless
CORES ?= 2

.PHONY: install system-packages test-packages demo test clean-results

install: system-packages $(INSTALLED)

system-packages:
	@missing=""; \
	command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || missing="$$missing ffmpeg"; \
	command -v java >/dev/null 2>&1 || missing="$$missing default-jre-headless"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" -ne 0 ]; then \
			echo "Missing Debian packages:$$missing. Run as root: apt-get install -y$$missing" >&2; \
			exit 1; \
		fi; \
		echo "Installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(INSTALLED): requirements.txt requirements-nodeps.txt
	test -x $(VENV_PYTHON) || $(PYTHON) -m venv $(VENV)
	$(VENV_PYTHON) -m pip install --quiet --upgrade pip
	$(VENV_PYTHON) -m pip install --quiet -r requirements.txt
	$(VENV_PYTHON) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

demo: install
	$(VENV)/bin/snakemake --cores $(CORES) --workflow-profile workflow/profiles/local \
		results/demo/metrics.json results/demo/modality_weights.png
	$(VENV_PYTHON) -m eval.show_metrics results/demo/metrics.json

# The Slurm tests run a one-node cluster on this machine from Debian's slurm-wlm and munge.
test-packages:
	bash tests/install_slurm.sh

test: install test-packages
	$(VENV_PYTHON) -m pytest

clean-results:
	rm -rf results/demo features/demo data/demo logs benchmarks/runs .snakemake
