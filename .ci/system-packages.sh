#!/usr/bin/env bash
# System packages the test suite needs: a real single-node Slurm (tests/support/slurm.py), and a
# headless browser for the dashboard's sweep explorer (tests/test_explorer.py, through selenium).
# Debian 12: slurm-wlm 22.05 (slurmctld, slurmd, slurm-client, basic plugins), munge 0.5.15,
# chromium and chromium-driver (chromedriver).
# Idempotent: installs only what is missing; needs root (CI runs as root). The tests start their
# own daemons under a temp folder, so the packages' services are never started here.
set -euo pipefail

need=()
command -v slurmctld >/dev/null 2>&1 || need+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || need+=(slurmd)
command -v sbatch >/dev/null 2>&1 || need+=(slurm-client)
command -v munged >/dev/null 2>&1 || need+=(munge)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ "${#need[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "system-packages.sh: missing ${need[*]}; run as root to install them" >&2
    exit 1
fi

# Keep the packages' postinst scripts from starting munge/slurm services (no init system in a
# container, and the tests run their own daemons): a policy-rc.d that denies, only if none exists.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    made_policy=1
fi
cleanup() { if [ "$made_policy" -eq 1 ]; then rm -f "$policy"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt_quiet() {
    local log
    log=$(mktemp)
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}
apt_quiet apt-get update -q
apt_quiet apt-get install -y -q --no-install-recommends slurm-wlm munge
# The browser is wanted, not required: without it the explorer's browser tests skip, saying why.
apt_quiet apt-get install -y -q --no-install-recommends chromium chromium-driver \
    || echo "system-packages.sh: chromium could not be installed; the browser tests will skip" >&2

for cmd in slurmctld slurmd sbatch squeue scancel sinfo munged mungekey; do
    command -v "$cmd" >/dev/null 2>&1 || { echo "system-packages.sh: $cmd still missing" >&2; exit 1; }
done
echo "system-packages.sh: installed slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm), munge $(dpkg-query -W -f='${Version}' munge), chromium $(dpkg-query -W -f='${Version}' chromium 2>/dev/null || echo none)"
