#!/usr/bin/env bash
# Puts the source of Debian's Abseil in DEST, for the ThreadSanitizer build
# (preset tsan), which compiles Abseil itself:
#
#   deploy/abseil-source.sh DEST
#
# Why: TSan sees only the synchronisation it compiled or intercepts.
# absl::Mutex is Abseil's own code (atomics and futexes, not pthreads), and
# Debian's libabsl is built without TSan, so every access under an
# absl::Mutex would be reported as a race. Built from source with
# -fsanitize=thread, Abseil tells TSan about each lock and unlock.
#
# Takes the source package of the installed libabsl-dev (so the headers are
# the ones every other build uses), or the archive's current one if that
# version is gone. Uses `apt-get source` with private copies of the
# machine's Debian archives as deb-src entries, lists and caches: nothing
# of the machine's apt configuration or state changes. Idempotent: does
# nothing when DEST already holds the source for the installed version.
# Needs dpkg-source (Debian: dpkg-dev, part of build-essential).
set -euo pipefail

dest=${1:?usage: deploy/abseil-source.sh DEST}

if ! wanted=$(dpkg-query -W -f='${source:Version}' libabsl-dev 2>/dev/null) ||
  [[ -z $wanted ]]; then
  echo "abseil-source: libabsl-dev is not installed (run deploy/setup.sh)" >&2
  exit 1
fi
stamp=$dest/.h5depot-abseil-for
if [[ -f $stamp && $(<"$stamp") == "$wanted" ]]; then
  echo "abseil-source: $dest holds Abseil $wanted"
  exit 0
fi
if ! command -v dpkg-source >/dev/null; then
  echo "abseil-source: dpkg-source is missing (Debian: dpkg-dev)" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/parts" "$work/lists/partial" "$work/cache/archives/partial"
: >"$work/sources.list"

# deb-src twins of the machine's Debian archives (deb822 or one-line form).
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
  sed -E 's/^Types:.*$/Types: deb-src/' \
    /etc/apt/sources.list.d/debian.sources >"$work/parts/debian.sources"
fi
if [[ -f /etc/apt/sources.list ]]; then
  sed -nE 's/^deb[[:space:]]+(.*debian.*)$/deb-src \1/p' \
    /etc/apt/sources.list >"$work/parts/debian-src.list"
fi
if ! grep -qs . "$work"/parts/*; then
  echo "abseil-source: no Debian archive in /etc/apt/sources.list or" \
    "/etc/apt/sources.list.d/debian.sources" >&2
  exit 1
fi

apt=(apt-get -q
  -o Dir::Etc::SourceList="$work/sources.list"
  -o Dir::Etc::SourceParts="$work/parts"
  -o Dir::State::Lists="$work/lists"
  -o Dir::Cache="$work/cache"
  -o APT::Sandbox::User=root)
"${apt[@]}" update >/dev/null
cd "$work"
if ! "${apt[@]}" source "abseil=$wanted"; then
  echo "abseil-source: abseil $wanted is no longer in the archive;" \
    "taking the current one" >&2
  "${apt[@]}" source abseil
fi

unpacked=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'abseil-*')
rm -rf "$dest"
mkdir -p "$(dirname "$dest")"
mv "$unpacked" "$dest"
echo "$wanted" >"$stamp"
echo "abseil-source: Abseil $wanted in $dest"
