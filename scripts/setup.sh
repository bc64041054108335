#!/usr/bin/env bash
# Idempotent set-up on a fresh machine that has only python3:
#   1. Debian packages the tests and the demo use (only when run as root and missing);
#   2. a virtual environment in .venv with the CPU build of torch and the project (+dev extra).
# Re-running is cheap: each step is skipped when it is already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${GLIP_VENV:-.venv}
TORCH_VERSION=${GLIP_TORCH_VERSION:-2.13.0}
# Debian packages: dcmtk (storescu/storescp/dcmcjpeg...), dicom3tools (dciodvfy),
# libgdcm-tools (gdcmconv for JPEG 2000 test data), orthanc (a real PACS for the
# integration tests and the demo), postgresql (the multi-host database), systemd
# (systemd-analyze and systemd-sysusers check the unit files in systemd/).
# dcmtk is probed by path: the venv's bin/ holds pynetdicom's own storescu/storescp/echoscu.
DEB_PACKAGES=(dcmtk dicom3tools libgdcm-tools orthanc systemd postgresql)
DEB_PROBES=(/usr/bin/storescp dciodvfy gdcmconv /usr/sbin/Orthanc systemd-analyze
  /usr/lib/postgresql/*/bin/initdb)

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

install_debian_packages() {
  local missing=() i probe
  for i in "${!DEB_PACKAGES[@]}"; do
    probe=${DEB_PROBES[$i]}
    if [[ $probe == /* ]]; then
      compgen -G "$probe" >/dev/null || missing+=("${DEB_PACKAGES[$i]}")
    else
      command -v "$probe" >/dev/null || missing+=("${DEB_PACKAGES[$i]}")
    fi
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    log "not root: cannot install Debian packages ${missing[*]}; tests that need them will fail"
    return 0
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

create_venv() {
  if [[ ! -x $VENV/bin/python ]]; then
    log "creating virtual environment $VENV"
    python3 -m venv "$VENV"
  fi
  if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    # A bare `torch` requirement would pull a multi-GB CUDA build: take the CPU build first.
    log "installing torch==$TORCH_VERSION (CPU build)"
    "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" 2> >(grep -v '^WARNING: Location' >&2)
  fi
  local stamp=$VENV/.glip-installed
  if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    log "installing glip-node with its dev extra"
    "$VENV/bin/pip" install -q -e ".[dev]" 2> >(grep -v '^WARNING: Location' >&2)
    touch "$stamp"
  fi
}

install_debian_packages
create_venv
log "ready: $VENV"
