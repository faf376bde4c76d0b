#!/bin/bash
# Wheels for a GPU machine that has Python 3.12 with torch, transformers, torch-geometric and
# pyarrow but no package index (a lent device): Ray (without its Java jar, RLlib, LLM and
# dashboard UI, to fit a 64 MiB transfer), DeepSpeed (built here, no ops) and what they import
# that such an image lacks. Writes .gpu/whl/ (git-ignored); benchmarks/gpu/check.sh installs it.
#   bash benchmarks/gpu/wheels.sh [python]
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${1:-.venv/bin/python}
out=.gpu/whl
rm -rf "$out" .gpu/dl  # one version of each wheel: two stop the install there
mkdir -p "$out" .gpu/dl
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
ver() { "$py" -m pip show "$1" 2>/dev/null | awk '/^Version:/{print $2}'; }
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/dl "ray==$(ver ray)" "pydantic==$(ver pydantic)" "pydantic_core==$(ver pydantic_core)" \
    "annotated-types==$(ver annotated-types)" "typing-inspection==$(ver typing-inspection)" \
    "jsonschema==$(ver jsonschema)" "jsonschema-specifications==$(ver jsonschema-specifications)" \
    "referencing==$(ver referencing)" "rpds-py==$(ver rpds-py)" "tensorboardX==$(ver tensorboardX)" \
    "hjson==$(ver hjson)"
DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps --no-build-isolation -w .gpu/dl "deepspeed==$(ver deepspeed)"
for w in .gpu/dl/*.whl; do
  case "$(basename "$w")" in ray-*) ;; *) cp "$w" "$out/" ;; esac
done
"$py" - .gpu/dl/ray-*.whl "$out" <<'PY'
import sys, zipfile
from pathlib import Path
src, out = Path(sys.argv[1]), Path(sys.argv[2])
drop = ("ray/jars/", "ray/rllib/", "ray/dashboard/client/", "ray/llm/")
with zipfile.ZipFile(src) as zi, zipfile.ZipFile(out / src.name, "w", zipfile.ZIP_DEFLATED) as zo:
    for info in zi.infolist():
        if info.filename.startswith(drop):
            continue
        data = zi.read(info.filename)
        if info.filename.endswith(".dist-info/RECORD"):  # pip rejects blank or missing rows
            data = b"".join(line + b"\n" for line in data.splitlines()
                            if line.strip() and not line.decode().startswith(drop))
        zo.writestr(info, data)
PY
du -sh "$out"
