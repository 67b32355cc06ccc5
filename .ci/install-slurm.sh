#!/usr/bin/env bash
# Install the Debian packages the SLURM tests need (slurm-wlm, munge).
# Non-interactive and idempotent: returns at once when the binaries are already there.
# The tests start their own daemons with a private configuration (tests/slurm_cluster.py),
# so the package's own services are kept from starting here.
set -euo pipefail

needed=(munged mungekey slurmctld slurmd sbatch squeue scontrol sinfo sacct)
missing=()
for bin in "${needed[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$bin" \
        >/dev/null 2>&1 || missing+=("$bin")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "slurm-wlm and munge already installed"
    exit 0
fi
echo "missing: ${missing[*]}; installing slurm-wlm and munge"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

# Keep maintainer scripts from starting munge/slurm services (no init system in CI
# containers, and the tests run their own daemons). Only add the policy file if none exists.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
    added_policy=1
fi
cleanup() {
    if [ "$added_policy" -eq 1 ]; then
        $SUDO rm -f "$policy"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends slurm-wlm munge
echo "installed: $(PATH="$PATH:/usr/sbin" slurmctld -V)"
