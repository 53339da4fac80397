#!/usr/bin/env bash
# Builds Kubernetes components from Debian's `kubernetes` source package (1.20.x) for the test
# cluster (tests/kube.py): kube-apiserver, kube-controller-manager and kube-scheduler by default,
# or the components named as arguments. Installs each into a cache outside any clone:
#
#     ${VATT_KUBE_CACHE:-/var/cache/vatt}/<component>-<debian version>
#
# so that later test runs, of this or of fresh clones on the same machine, reuse them. Prints the
# binaries' paths, one a line, in the order asked, as the last lines of stdout. Builds only those
# not there yet, in one `make` (one source download, one Go build cache).
# Also installs what the tests run beside it: etcd (etcd-server) and kubectl (kubernetes-client,
# unless there is a /usr/bin/kubectl already).
#
# No registry ships these binaries; Debian ships their source. kube-apiserver takes about 5
# minutes on 2 cores, each of the other two about 150 s more (both together, alone: 4 minutes);
# it needs root (apt) and Debian's mirrors, and nothing else from the network (GOPROXY=off).
#
# Environment:
#   VATT_KUBE_CACHE      where the binary goes (default /var/cache/vatt)
#   VATT_KUBE_VERSION    the Debian version of the `kubernetes` source package (default: the
#                        version of kubernetes-client that apt would install)
set -euo pipefail

CACHE_DIR=${VATT_KUBE_CACHE:-/var/cache/vatt}
REFLECT2_DEBIAN=/usr/share/gocode/src/github.com/modern-go/reflect2

say() { echo "build-kube: $*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $* (run this script as root, or install sudo)"; fi
}

command -v apt-get >/dev/null || die "apt-get not found: this script builds from Debian's source package and needs a Debian (bookworm) machine"

apt_updated=0
apt_update() {
    if [[ $apt_updated -eq 0 ]]; then
        say "apt-get update"
        as_root apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
        apt_updated=1
    fi
}

# Installs the packages not yet installed.
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    apt_update
    say "installing ${missing[*]}"
    # another build (a test session's background build, tests/kube.py) may hold dpkg's lock
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >&2
}

# The Debian version of the `kubernetes` source package: the one kubernetes-client comes from.
debian_version() {
    if [[ -n ${VATT_KUBE_VERSION:-} ]]; then echo "$VATT_KUBE_VERSION"; return; fi
    local info
    info=$(apt-cache show --no-all-versions kubernetes-client 2>/dev/null || true)
    if [[ -z $info ]]; then
        apt_update
        info=$(apt-cache show --no-all-versions kubernetes-client 2>/dev/null || true)
    fi
    [[ -n $info ]] || die "apt knows no kubernetes-client package (Debian bookworm ships 1.20.x); set VATT_KUBE_VERSION to the Debian version of the kubernetes source package"
    # "Source: kubernetes (1.2.3-1)" names the source version when it differs from the binary's
    local source_version
    source_version=$(sed -n 's/^Source: kubernetes (\(.*\))$/\1/p' <<<"$info")
    if [[ -n $source_version ]]; then echo "$source_version"
    else sed -n 's/^Version: //p' <<<"$info"; fi
}

# Adds deb-src entries mirroring the machine's Debian `deb` entries, unless apt already finds
# the kubernetes source package. Written to its own file; the existing lists are not edited.
ensure_deb_src() {
    if [[ -n $(apt-cache showsrc kubernetes 2>/dev/null) ]]; then return 0; fi
    local sources=() file
    shopt -s nullglob
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ $file == */vatt-deb-src.sources ]] || sources+=("$file")
    done
    shopt -u nullglob
    local deb822 lines=""
    # deb822 stanzas (debian.sources) whose URIs are Debian's: the same stanza as deb-src
    deb822=$(awk 'BEGIN { RS = ""; ORS = "\n\n" }
        /(^|\n)Types:([^\n]*[ \t])?deb([ \t][^\n]*)?(\n|$)/ && /(^|\n)URIs:[^\n]*debian/ {
            sub(/Types:[^\n]*/, "Types: deb-src"); print }' ${sources[@]+"${sources[@]}"} /dev/null)
    if [[ -f /etc/apt/sources.list ]]; then
        lines=$(sed -n 's/^[[:space:]]*deb\([[:space:]].*debian.*\)$/deb-src\1/p' /etc/apt/sources.list)
    fi
    [[ -n $deb822$lines ]] || die "found no Debian 'deb' entries in /etc/apt/sources.list or /etc/apt/sources.list.d/*.sources to add deb-src entries for; add a deb-src line for Debian's main archive and rerun"
    say "adding deb-src entries for the machine's Debian archives"
    if [[ -n $deb822 ]]; then printf '%s' "$deb822" | as_root tee /etc/apt/sources.list.d/vatt-deb-src.sources >/dev/null; fi
    if [[ -n $lines ]]; then printf '%s\n' "$lines" | as_root tee /etc/apt/sources.list.d/vatt-deb-src.list >/dev/null; fi
    apt_updated=0
    apt_update
    [[ -n $(apt-cache showsrc kubernetes 2>/dev/null) ]] || die "apt still finds no kubernetes source package after adding deb-src entries (see /etc/apt/sources.list.d/vatt-deb-src.*)"
}

runtime_packages=(etcd-server)
[[ -x /usr/bin/kubectl ]] || runtime_packages+=(kubernetes-client)  # tests/kube.py runs /usr/bin/kubectl
apt_install "${runtime_packages[@]}"

version=$(debian_version)
components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(kube-apiserver kube-controller-manager kube-scheduler)
for component in "${components[@]}"; do
    case $component in
        kube-apiserver|kube-controller-manager|kube-scheduler) ;;
        *) die "unknown component '$component' (kube-apiserver, kube-controller-manager, kube-scheduler)" ;;
    esac
done

missing_components() {
    local component
    for component in "${components[@]}"; do
        [[ -x $CACHE_DIR/$component-$version ]] || echo "$component"
    done
}

print_targets() {
    local component
    for component in "${components[@]}"; do echo "$CACHE_DIR/$component-$version"; done
}

mapfile -t todo < <(missing_components)
if [[ ${#todo[@]} -eq 0 ]]; then
    print_targets
    exit 0
fi

# root only where the cache needs it (the default /var/cache/vatt)
in_cache() { if [[ -w $CACHE_DIR ]]; then "$@"; else as_root "$@"; fi; }
mkdir -p "$CACHE_DIR" 2>/dev/null || as_root mkdir -p "$CACHE_DIR"
# One build at a time per cache (parallel test sessions on a fresh machine)
exec {lock_fd}>"$CACHE_DIR/.build.lock"
say "waiting for the build lock $CACHE_DIR/.build.lock"
flock "$lock_fd"
mapfile -t todo < <(missing_components)  # another run may have built some while we waited
if [[ ${#todo[@]} -eq 0 ]]; then
    print_targets
    exit 0
fi

started=$(date +%s)
say "building ${todo[*]} from Debian's kubernetes $version (kube-apiserver about 5 minutes on 2 cores, the others about 150 s each)"
# rsync: without it the build's code generators come out empty; dpkg-dev: apt-get source
apt_install golang-go golang-github-modern-go-reflect2-dev dpkg-dev rsync make
ensure_deb_src

work=$(mktemp -d "${TMPDIR:-/tmp}/vatt-kube-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
say "apt-get source kubernetes=$version in $work"
apt-get source "kubernetes=$version" >"$work/apt-source.log" 2>&1 \
    || { cat "$work/apt-source.log" >&2; die "apt-get source kubernetes=$version failed"; }
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
[[ -n $src && -f $src/Makefile ]] || die "apt-get source unpacked no kubernetes-*/Makefile in $work"

# The vendored reflect2 (1.0.1) crashes on Go >= 1.18 (it reads runtime internals that changed);
# Debian's packaged reflect2 is the fixed release.
[[ -d $REFLECT2_DEBIAN ]] || die "$REFLECT2_DEBIAN missing (package golang-github-modern-go-reflect2-dev)"
rm -rf "$src/vendor/github.com/modern-go/reflect2"
cp -r "$REFLECT2_DEBIAN" "$src/vendor/github.com/modern-go/reflect2"

what=""
for component in "${todo[@]}"; do what+="cmd/$component "; done
say "make WHAT='${what% }' (log: $work/make.log)"
if ! (cd "$src" && env HOME="$work" GOCACHE="$work/go-cache" GOPATH="$work/gopath" \
        CGO_ENABLED=0 GOPROXY=off GOFLAGS= make WHAT="${what% }") >"$work/make.log" 2>&1; then
    tail -n 60 "$work/make.log" >&2
    die "make WHAT='${what% }' failed (last lines above)"
fi
for component in "${todo[@]}"; do
    built=$(find "$src/_output" -type f -name "$component" -perm -u+x | head -n1)
    [[ -n $built && -s $built ]] || { tail -n 60 "$work/make.log" >&2; die "the build produced no $component binary under $src/_output"; }
    "$built" --version >&2 || die "the built $built does not run"
    target="$CACHE_DIR/$component-$version"
    in_cache install -m 0755 "$built" "$target.tmp.$$"
    in_cache mv -f "$target.tmp.$$" "$target"  # atomic: a reader never sees half a binary
done
say "built ${todo[*]} in $(( $(date +%s) - started )) s"
print_targets
