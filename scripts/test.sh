#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs the real parts the tests drive
# (only those missing), the npm dependencies, builds, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# tool -> Debian package
declare -A NEED=(
  [docker-registry]=docker-registry
  [containerd]=containerd
  [ctr]=containerd
  [skopeo]=skopeo
  [umoci]=umoci
  [chromium]=chromium
)
missing=()
for tool in "${!NEED[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${NEED[$tool]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  echo "installing Debian packages: $pkgs"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
fi

# Dependencies: a clean install when node_modules is missing or older than the lock file.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

npm run build
npx tsc -p tsconfig.json --noEmit
npx vitest run "$@"
