#!/usr/bin/env bash
# Install the Debian packages that tests/test_slurm.py needs for its one-node Slurm
# cluster: slurm-wlm (slurmctld, slurmd and the client commands) and munge. The test
# starts its own daemons with its own config and never uses the packages' services.
# Does nothing when both packages are installed. Without root it only prints the command
# to run and exits 0, because the Slurm tests then skip instead of failing.
set -euo pipefail

packages=(slurm-wlm munge)
missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "Slurm tests will skip: missing Debian packages ${missing[*]}. Install them as root with: apt-get install -y ${missing[*]}" >&2
    exit 0
fi

echo "Installing Debian packages for the Slurm tests: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
