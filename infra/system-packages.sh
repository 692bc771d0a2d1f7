#!/usr/bin/env bash
# Debian packages the project needs beyond its virtual environment, installed when missing
# (needs root, or sudo):
#   postgresql - the local services stack's database (`make services-up`, tests/test_services.py)
#   chromium   - renders the evidence report in a test (`make test` only)
# Usage: infra/system-packages.sh [postgresql] [chromium]
set -euo pipefail
missing=()
for package in "$@"; do
  case "$package" in
    postgresql)
      [ -n "${UNSIR_PG_BIN:-}" ] || command -v initdb >/dev/null 2>&1 \
        || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql) ;;
    chromium)
      command -v chromium >/dev/null 2>&1 || missing+=(chromium) ;;
    *)
      echo "error: unknown package '$package'; expected postgresql or chromium" >&2; exit 2 ;;
  esac
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "error: missing ${missing[*]}; as root: apt-get install ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "installing Debian's ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
