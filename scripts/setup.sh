#!/bin/bash
# setup.sh: everything haul needs on a fresh Debian 12 (bookworm) machine, as root.
#
#   scripts/setup.sh            install, build, then run the main job (a demo migration)
#   scripts/setup.sh --no-demo  install and build only
#
# Idempotent: each step checks whether it is already done, so a second run is fast and
# changes nothing. Steps:
#   1. bookworm packages (build tools, iproute2, iptables, CRIU's build dependencies);
#   2. CRIU >= 4.1 (bookworm's 3.17.1 fails `criu check` on recent kernels): built from
#      Debian's own source package (a deb-src entry only; never a binary trixie/sid entry),
#      installed to /usr/local/sbin/criu; skipped when a CRIU >= 4.1 is already on PATH;
#   3. fs.pipe-max-size >= 4 MiB (CRIU's lazy pages need it without CAP_SYS_RESOURCE);
#   4. cargo build --release of the workspace; cargo-fuzz (pinned) for tests/fuzz_smoke.rs;
#   5. the main job: scripts/demo.sh (mtouch moved between two local nodes).
set -euo pipefail

CRIU_VERSION=4.2.1
CRIU_DEB_VERSION=4.2.1-1
CRIU_MIN=4.1
HERE=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${HAUL_SETUP_CACHE:-/var/cache/haul-setup}
DEMO=1
for a in "$@"; do
    case $a in
    --no-demo) DEMO=0 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown argument '$a' (try --help)" >&2; exit 2 ;;
    esac
done

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run me as root (CRIU and network namespaces need it)"
[ -f /etc/debian_version ] || die "this script is for Debian 12 (bookworm); install the packages it lists by hand elsewhere"
export DEBIAN_FRONTEND=noninteractive
# rustup's usual place, when the caller's PATH lacks it
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then PATH=$PATH:$HOME/.cargo/bin; fi

# version_ge A B: dotted version A >= B
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]; }
criu_version() { "$1" --version 2>/dev/null | awk '/^Version:/{print $2; exit}'; }

# ---------------------------------------------------------------- 1. packages
RUNTIME_PKGS="iproute2 iputils-ping iptables nftables procps util-linux python3 gcc make pkg-config fonts-dejavu-core fontconfig redis-server"
CRIU_BUILD_DEPS="build-essential pkg-config python3 libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler
 protobuf-compiler python3-protobuf libnl-3-dev libnet1-dev libcap-dev libbsd-dev libnftables-dev
 libgnutls28-dev uuid-dev libaio-dev xz-utils dpkg-dev"
missing_pkgs() {
    local p out=
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || out="$out $p"
    done
    echo "$out"
}
APT_UPDATED=0
apt_update() {
    [ $APT_UPDATED = 1 ] && return 0
    apt-get -o Acquire::Check-Valid-Until=false update -qq
    APT_UPDATED=1
}
apt_install() {
    local miss
    miss=$(missing_pkgs "$@")
    [ -z "$miss" ] && return 0
    log "installing bookworm packages:$miss"
    apt_update
    # shellcheck disable=SC2086
    apt-get install -y -qq -t bookworm --no-install-recommends $miss
}
apt_install $RUNTIME_PKGS
# the redis-server package may start a system redis; the tests start their own in namespaces
if [ -x /etc/init.d/redis-server ] && pgrep -x redis-server >/dev/null 2>&1; then
    systemctl disable --now redis-server >/dev/null 2>&1 || /etc/init.d/redis-server stop >/dev/null 2>&1 || true
fi

# ---------------------------------------------------------------- 2. CRIU
have_criu=
if c=$(command -v criu 2>/dev/null) && v=$(criu_version "$c") && version_ge "$v" "$CRIU_MIN"; then
    have_criu=$c
fi
if [ -n "$have_criu" ]; then
    log "CRIU $(criu_version "$have_criu") at $have_criu (>= $CRIU_MIN): nothing to build"
else
    log "building CRIU $CRIU_VERSION from Debian's source package (needs >= $CRIU_MIN)"
    # shellcheck disable=SC2086
    apt_install $CRIU_BUILD_DEPS
    src_list=/etc/apt/sources.list.d/haul-criu-src.sources
    if [ ! -f "$src_list" ]; then
        uri=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
        [ -n "$uri" ] || uri=$(awk '$1=="deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
        [ -n "$uri" ] || die "cannot find the Debian mirror URI in /etc/apt/sources.list.d/debian.sources"
        # source entries only: a binary trixie/sid entry would upgrade libc and break bookworm
        cat >"$src_list" <<SRC
Types: deb-src
URIs: $uri
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        APT_UPDATED=0
    fi
    apt_update
    mkdir -p "$CACHE"
    cd "$CACHE"
    orig=criu_$CRIU_VERSION.orig.tar.xz
    if [ ! -f "$orig" ]; then
        # the .debian.tar.xz may be missing on the mirror (non-zero exit): only the orig is needed
        apt-get source --download-only "criu=$CRIU_DEB_VERSION" >apt-source.log 2>&1 || true
        [ -f "$orig" ] || { tail -n 5 apt-source.log >&2; die "could not fetch $orig (see $CACHE/apt-source.log)"; }
        dsc=criu_$CRIU_DEB_VERSION.dsc
        if [ -f "$dsc" ]; then
            want=$(awk '/^Checksums-Sha256:/{f=1;next} f && /^ /{ if ($3 == n) print $1 } f && !/^ /{f=0}' n="$orig" "$dsc")
            got=$(sha256sum "$orig" | awk '{print $1}')
            [ -n "$want" ] && [ "$want" != "$got" ] && { rm -f "$orig"; die "sha256 of $orig is $got, the .dsc says $want"; }
            [ -n "$want" ] && log "sha256 of $orig matches the .dsc"
        fi
    fi
    rm -rf "criu-$CRIU_VERSION"
    tar xf "$orig"
    cd "criu-$CRIU_VERSION"
    make -j"$(nproc)" criu >"$CACHE/criu-build.log" 2>&1 || { tail -n 20 "$CACHE/criu-build.log" >&2; die "CRIU build failed (log $CACHE/criu-build.log)"; }
    install -m 0755 criu/criu /usr/local/sbin/criu
    cd "$HERE"
    hash -r
    v=$(criu_version /usr/local/sbin/criu)
    version_ge "$v" "$CRIU_MIN" || die "the built CRIU reports version '$v'"
    log "installed CRIU $v to /usr/local/sbin/criu"
fi
command -v criu >/dev/null || export PATH=$PATH:/usr/local/sbin
if ! criu check >/tmp/haul-criu-check.log 2>&1; then
    echo "warning: 'criu check' did not pass on this kernel:" >&2
    tail -n 5 /tmp/haul-criu-check.log >&2
fi
rm -f /tmp/haul-criu-check.log

# ---------------------------------------------------------------- 3. pipe-max-size
if [ "$(cat /proc/sys/fs/pipe-max-size)" -lt 4194304 ]; then
    log "raising fs.pipe-max-size to 4 MiB (CRIU lazy pages)"
    echo 4194304 >/proc/sys/fs/pipe-max-size
fi

# ---------------------------------------------------------------- 4. build
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs) first"
log "cargo build --release"
cd "$HERE"
cargo build --release --workspace --quiet

# cargo-fuzz, pinned: tests/fuzz_smoke.rs runs each fuzz target briefly with it (and skips
# without it). A fresh install takes about 1.5 minutes on 2 cores.
CARGO_FUZZ_VERSION=0.13.2
have_fuzz=$(cargo fuzz --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have_fuzz" = "$CARGO_FUZZ_VERSION" ]; then
    log "cargo-fuzz $have_fuzz: nothing to install"
else
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION${have_fuzz:+ (found $have_fuzz)} with cargo install --locked (about 1.5 min)"
    t0=$SECONDS
    cargo install --locked --quiet --force cargo-fuzz --version "$CARGO_FUZZ_VERSION" ||
        die "could not install cargo-fuzz $CARGO_FUZZ_VERSION (crates.io reachable?)"
    log "installed cargo-fuzz $(cargo fuzz --version | awk '{print $2}') in $((SECONDS - t0)) s"
fi

# ---------------------------------------------------------------- 5. main job
if [ $DEMO = 1 ]; then
    log "main job: scripts/demo.sh"
    exec "$HERE/scripts/demo.sh"
fi
log "set-up done"
