#!/usr/bin/env bash
# Provision the C++ SDK that cpp/ builds against, from packages only, into a cache folder:
#   lib/libonnxruntime.so.1     the ONNX Runtime C library, from the PyPI `onnxruntime` wheel
#                               (the one installed in $PYTHON, else `pip download` of it)
#   include/onnxruntime/*.h     ONNX Runtime's C/C++ headers, from Debian trixie's libonnxruntime-dev
#   include/nlohmann/json.hpp   the JSON parser, from Debian trixie's nlohmann-json3-dev
# The .deb files are fetched with `apt-get download` through a private, throw-away APT
# configuration (its own sources list, lists, state and cache under the cache folder): nothing is
# installed and the system's APT configuration is left as it is. The mirror is the one the system's
# APT already uses (override: SUBTUNE_DEBIAN_MIRROR=URL).
#
# Usage: cpp/get_sdk.sh [CACHE_DIR]   (default $SUBTUNE_SDK_DIR, else ~/.cache/subtune/cpp-sdk)
# Prints the SDK folder on its last line. Idempotent: a complete SDK is reused as it is, with no
# network access, so a build works offline after the first run. CMake runs this script itself.
set -euo pipefail

SDK=${1:-${SUBTUNE_SDK_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/subtune/cpp-sdk}}
PY=${PYTHON:-python3}
SUITE=${SUBTUNE_DEBIAN_SUITE:-trixie}   # libonnxruntime-dev 1.21: headers older than the wheel's library
STAMP="$SDK/sdk.stamp"

say() { echo "get_sdk: $*" >&2; }
die() { echo "get_sdk: error: $*" >&2; exit 1; }

if [ -f "$STAMP" ] && [ -e "$SDK/lib/libonnxruntime.so.1" ] && [ -f "$SDK/include/onnxruntime/onnxruntime_cxx_api.h" ] \
   && [ -f "$SDK/include/nlohmann/json.hpp" ]; then
  echo "$SDK"
  exit 0
fi

mkdir -p "$SDK"
SDK=$(cd "$SDK" && pwd -P)
work=$(mktemp -d "$SDK/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- 1. The runtime library: the onnxruntime wheel's C library -------------------------------------
lib=""
if "$PY" -c "import onnxruntime" >/dev/null 2>&1; then
  capi=$("$PY" -c "import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))")
  lib=$(ls "$capi"/libonnxruntime.so.1.* 2>/dev/null | head -n1 || true)
fi
if [ -z "$lib" ]; then
  ver=${SUBTUNE_ORT_VERSION:-}
  say "no onnxruntime in $PY: downloading the onnxruntime${ver:+==$ver} wheel from PyPI"
  "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$work/wheel" "onnxruntime${ver:+==$ver}" \
    || die "could not download the onnxruntime wheel; install it (pip install onnxruntime) and run again"
  (cd "$work/wheel" && "$PY" -m zipfile -e onnxruntime-*.whl unpacked)
  lib=$(ls "$work"/wheel/unpacked/onnxruntime/capi/libonnxruntime.so.1.* | head -n1)
  chmod 755 "$lib"
fi
[ -f "$lib" ] || die "the onnxruntime wheel holds no libonnxruntime.so.1.*"
lib_version=${lib##*/libonnxruntime.so.}          # e.g. 1.32.0
lib_minor=$(echo "$lib_version" | cut -d. -f2)
say "runtime library: $lib (ONNX Runtime $lib_version)"

# --- 2. Headers: .deb files through a throw-away APT configuration ---------------------------------
mirror=${SUBTUNE_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  # The system's own Debian mirror (deb822 or one-line format), not its security archive.
  mirror=$( (grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}';
             grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | sed 's/\[[^]]*\]//' | awk '{print $2}') \
           | grep -v security | head -n1 || true)
fi
[ -n "$mirror" ] || die "no Debian mirror in the system's APT sources; set SUBTUNE_DEBIAN_MIRROR=URL"
command -v apt-get >/dev/null || die "apt-get not found: this script needs a Debian-based system (or provide \
$SDK/include and $SDK/lib yourself, then touch $STAMP)"
command -v dpkg-deb >/dev/null || die "dpkg-deb not found"

apt="$SDK/apt"
mkdir -p "$apt/etc/apt.conf.d" "$apt/etc/preferences.d" "$apt/etc/sources.list.d" "$apt/lists/partial" \
         "$apt/cache/archives/partial" "$apt/state" "$apt/debs"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$keyring" ] || die "$keyring not found (package debian-archive-keyring)"
echo "deb [arch=amd64 signed-by=$keyring] $mirror $SUITE main" > "$apt/etc/sources.list"
: > "$apt/state/status"
arch=$(dpkg --print-architecture 2>/dev/null || echo amd64)
sed -i "s/arch=amd64/arch=$arch/" "$apt/etc/sources.list"
APT=(apt-get -q -o "Dir::Etc::SourceList=$apt/etc/sources.list" -o "Dir::Etc::SourceParts=$apt/etc/sources.list.d"
     -o "Dir::Etc::Parts=$apt/etc/apt.conf.d" -o "Dir::Etc::PreferencesParts=$apt/etc/preferences.d"
     -o "Dir::Etc::Preferences=$apt/etc/preferences" -o "Dir::State=$apt/state" -o "Dir::State::Lists=$apt/lists"
     -o "Dir::State::status=$apt/state/status" -o "Dir::Cache=$apt/cache" -o "Debug::NoLocking=1"
     -o "APT::Sandbox::User=$(id -un)" -o "APT::Architecture=$arch" -o "APT::Architectures=$arch")

want=(libonnxruntime-dev nlohmann-json3-dev)
have_all=1
for p in "${want[@]}"; do ls "$apt/debs/${p}_"*.deb >/dev/null 2>&1 || have_all=0; done
if [ "$have_all" = 0 ]; then
  say "downloading ${want[*]} ($SUITE) from $mirror into $apt/debs (nothing is installed)"
  "${APT[@]}" update >"$apt/update.log" 2>&1 || die "apt-get update for $SUITE failed (see $apt/update.log)"
  (cd "$apt/debs" && "${APT[@]}" download "${want[@]}" >"$apt/download.log" 2>&1) \
    || die "apt-get download ${want[*]} failed (see $apt/download.log)"
  rm -rf "$apt/lists" "$apt/cache"   # the package lists (~20 MB) are not needed once the .debs are here
fi
for p in "${want[@]}"; do
  deb=$(ls "$apt/debs/${p}_"*.deb | head -n1)
  dpkg-deb -x "$deb" "$work/root"
done

# --- 3. Lay out the SDK and check header version <= library version --------------------------------
rm -rf "$SDK/include" "$SDK/lib"
mkdir -p "$SDK/include" "$SDK/lib"
cp -r "$work/root/usr/include/onnxruntime" "$SDK/include/onnxruntime"
cp -r "$work/root/usr/include/nlohmann" "$SDK/include/nlohmann"
cp "$lib" "$SDK/lib/libonnxruntime.so.$lib_version"
ln -sf "libonnxruntime.so.$lib_version" "$SDK/lib/libonnxruntime.so.1"
ln -sf "libonnxruntime.so.1" "$SDK/lib/libonnxruntime.so"
hdr_api=$(sed -n 's/^#define ORT_API_VERSION \([0-9]*\).*/\1/p' "$SDK/include/onnxruntime/onnxruntime_c_api.h")
[ -n "$hdr_api" ] || die "no ORT_API_VERSION in the downloaded headers"
if [ "$hdr_api" -gt "$lib_minor" ]; then
  rm -rf "$SDK/include" "$SDK/lib"
  die "headers are API $hdr_api, newer than the library (ONNX Runtime $lib_version): use headers <= $lib_minor \
(SUBTUNE_DEBIAN_SUITE=bookworm-backports or an older suite) or a newer onnxruntime wheel"
fi
cat > "$STAMP" <<EOF
onnxruntime_library=$lib_version
onnxruntime_headers_api=$hdr_api
headers_suite=$SUITE
$(cd "$apt/debs" && ls *.deb)
EOF
say "SDK ready: ONNX Runtime library $lib_version, headers API $hdr_api ($SUITE)"
echo "$SDK"
