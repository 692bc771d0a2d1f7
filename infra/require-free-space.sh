#!/usr/bin/env bash
# Stops a build or a test run before it starts when the disk it writes to is nearly full, with
# the figures, instead of failing minutes in with "No space left on device" (the virtual
# environment alone takes about 7 GiB: torch's wheel brings CUDA libraries it needs on a GPU).
# Usage: infra/require-free-space.sh PATH GIB WHAT
#   PATH: where it will write (need not exist yet: its nearest existing parent is measured)
#   GIB:  whole GiB needed there; WHAT: what needs it, for the message
set -euo pipefail
if [ $# -ne 3 ] || ! [[ "$2" =~ ^[0-9]+$ ]]; then
  echo "error: usage: infra/require-free-space.sh PATH GIB WHAT (GIB a whole number of GiB, got '${2:-}')" >&2
  exit 2
fi
path="$1" need_gib="$2" what="$3"
probe="$path"
while [ ! -e "$probe" ]; do probe="$(dirname "$probe")"; done
free_kib="$(df -Pk "$probe" | awk 'NR == 2 { print $4 }')"
need_kib=$((need_gib * 1024 * 1024))
if [ "$free_kib" -lt "$need_kib" ]; then
  free_gib="$(awk -v k="$free_kib" 'BEGIN { printf "%.1f", k / 1048576 }')"
  echo "error: ${free_gib} GiB free on the disk holding $path; $what needs about ${need_gib} GiB." \
    "Free some space there (or point it at another disk) and run again." >&2
  exit 1
fi
