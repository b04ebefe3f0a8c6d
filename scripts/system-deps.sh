#!/usr/bin/env bash
# Installs the system packages homemesh uses and a fresh Debian/Ubuntu machine lacks:
# bubblewrap (the python-step sandbox), chromium (scrape steps), iproute2 (ss, network namespaces),
# sqlite3 (to inspect a ledger by hand; the tamper tests use it), libseccomp2 (the sandbox's syscall filter),
# iptables (the NAT test topology's home routers).
set -euo pipefail
need=()
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v ss >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
ldconfig -p 2>/dev/null | grep -q 'libseccomp\.so\.2' || need+=(libseccomp2)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing system packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
