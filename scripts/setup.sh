#!/usr/bin/env bash
# One-step setup on a fresh machine: .venv/ with the project and its extras, plus the system
# packages later stages need (bubblewrap for the code sandbox). Idempotent: a second run is quick.
# POSTTRAIN_SETUP_DRY_RUN=1 prints the install plan (pip and apt commands) and changes nothing.
# POSTTRAIN_CONSTRAINTS=FILE installs under a pip constraints file (`make test-gpu-pins`: VENV=.venv-gpu-pins with
# constraints/vllm-0.31.txt, the versions the `vllm` extra resolves to, for a second test environment on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-}
EXTRAS=${POSTTRAIN_EXTRAS:-dev}
STAMP="$VENV/.posttrain-setup"
DRY_RUN=${POSTTRAIN_SETUP_DRY_RUN:-}
CONSTRAINTS=${POSTTRAIN_CONSTRAINTS:-}

say() { printf '[setup] %s\n' "$*"; }
# pip with our flags (and the constraints file, for installs); a dry run prints the command instead.
pip_run() {
    if [ -n "$CONSTRAINTS" ] && [ "$1" = install ]; then set -- "$@" -c "$CONSTRAINTS"; fi
    if [ -n "$DRY_RUN" ]; then say "would run: pip $*"; else "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; fi
}
if [ -n "$CONSTRAINTS" ] && [ ! -f "$CONSTRAINTS" ]; then
    say "ERROR: POSTTRAIN_CONSTRAINTS=$CONSTRAINTS: no such file" >&2; exit 1
fi
# The CPU torch to install first: the constraints' pin where they have one.
CPU_TORCH=torch==2.13.0
if [ -n "$CONSTRAINTS" ] && grep -q '^torch==' "$CONSTRAINTS"; then CPU_TORCH=$(grep -m1 '^torch==' "$CONSTRAINTS"); fi
wants_vllm() { [[ ",$EXTRAS," == *",vllm,"* ]]; }

# --- system packages -------------------------------------------------------------------------------
install_system_packages() {
    if command -v bwrap >/dev/null 2>&1; then return 0; fi
    local cmd="apt-get install -y --no-install-recommends bubblewrap"
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing bubblewrap (code sandbox)"
        if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null 2>&1 ||
               { apt-get update -qq >/dev/null 2>&1 &&
                 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null 2>&1; }; }; then
            say "WARNING: could not install bubblewrap; the 'code' reward will refuse to run. Try: $cmd"
        fi
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && command -v apt-get >/dev/null 2>&1; then
        say "installing bubblewrap with sudo (code sandbox)"
        sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null 2>&1 ||
            { sudo -n apt-get update -qq >/dev/null 2>&1 &&
              sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null 2>&1; } ||
            say "WARNING: could not install bubblewrap. Run: sudo $cmd"
    else
        say "bubblewrap is missing and cannot be installed from here (not root, no passwordless sudo)."
        say "Run this once, then 'make setup' again:  sudo $cmd"
        say "Everything but the sandboxed 'code' reward works without it."
    fi
}

# --- sandbox toolchains ----------------------------------------------------------------------------
# The code sandbox runs Python, C and C++ (gcc, g++), and JavaScript (node), Java, Go, Rust and Bash
# where their toolchains are on the sandbox's PATH (/usr/local/bin:/usr/bin:/bin: it sees the host's /usr
# only). POSTTRAIN_SANDBOX_LANGUAGES="node java go rust bash" installs the ones named that are missing
# (apt-get, as root or with passwordless sudo). Without it nothing is downloaded; a Rust toolchain that
# rustup keeps under /root, where the sandbox's unprivileged user cannot reach it, is linked (hard links,
# no copy) into /usr/local/lib/posttrain/rust either way.
SANDBOX_PATH=/usr/local/bin:/usr/bin:/bin
RUST_LINKED=/usr/local/lib/posttrain/rust

apt_install() {  # apt_install PACKAGE...: as root or with sudo; 1 if it cannot
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null || return 1
        sudo=(sudo -n)
    fi
    command -v apt-get >/dev/null 2>&1 || return 1
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 ||
        { "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 &&
          "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; }
}

sandbox_has() { PATH=$SANDBOX_PATH:$RUST_LINKED/bin command -v "$1" >/dev/null 2>&1; }

link_rust() {  # rustup's toolchain, hard-linked where the sandbox sees it
    sandbox_has rustc && return 0
    command -v rustc >/dev/null 2>&1 && [ "$(id -u)" = 0 ] || return 1
    local sysroot
    sysroot=$(rustc --print sysroot 2>/dev/null) && [ -x "$sysroot/bin/rustc" ] || return 1
    say "linking the Rust toolchain $sysroot into $RUST_LINKED (the sandbox cannot see under /root)"
    mkdir -p "$(dirname "$RUST_LINKED")" && chmod 755 "$(dirname "$RUST_LINKED")" && rm -rf "$RUST_LINKED.tmp" &&
        { cp -al "$sysroot" "$RUST_LINKED.tmp" 2>/dev/null || cp -a "$sysroot/." "$RUST_LINKED.tmp"; } &&
        rm -rf "$RUST_LINKED" && mv "$RUST_LINKED.tmp" "$RUST_LINKED" && chmod 755 "$RUST_LINKED"
}

install_sandbox_languages() {
    link_rust || true
    local lang tool package
    for lang in ${POSTTRAIN_SANDBOX_LANGUAGES:-}; do
        case "$lang" in
            node|javascript|js) tool=node package=nodejs ;;
            java) tool=javac package=default-jdk-headless ;;
            go|golang) tool=go package=golang-go ;;
            rust|rs) tool=rustc package=rustc ;;
            bash|sh) tool=bash package=bash ;;
            c) tool=gcc package=gcc ;;
            cpp|c++) tool=g++ package=g++ ;;
            python) continue ;;
            *) say "WARNING: POSTTRAIN_SANDBOX_LANGUAGES: unknown language '$lang' (node java go rust bash c cpp)"; continue ;;
        esac
        sandbox_has "$tool" && continue
        say "installing $package for sandboxed $lang programs"
        apt_install "$package" ||
            say "WARNING: could not install $package; $lang rows will have no score. Run as root: apt-get install $package"
    done
    local have=() name
    for name in python3:python gcc:c g++:cpp node:javascript javac:java go:go rustc:rust bash:bash; do
        sandbox_has "${name%%:*}" && have+=("${name#*:}")
    done
    say "sandbox languages: ${have[*]} (others: POSTTRAIN_SANDBOX_LANGUAGES=\"node java go rust\" make setup)"
}

# --- python ----------------------------------------------------------------------------------------
pick_python() {
    if [ -n "$PYTHON" ]; then echo "$PYTHON"; return; fi
    for p in python3.12 python3.11 python3.10 python3; do
        if command -v "$p" >/dev/null 2>&1 &&
           "$p" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
            # Resolve pyenv shims to the real interpreter: the shim costs ~190 ms per start.
            "$p" -c 'import sys; print(sys.executable)'; return
        fi
    done
    say "ERROR: Python >= 3.10 not found; set PYTHON=/path/to/python3" >&2; exit 1
}

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

if [ -z "$DRY_RUN" ]; then install_system_packages; install_sandbox_languages; fi

fingerprint=$(cat pyproject.toml scripts/setup.sh ${CONSTRAINTS:+"$CONSTRAINTS"} | sha256sum | cut -c1-16)-${EXTRAS}-${POSTTRAIN_TORCH_SPEC:-default}
if [ -z "$DRY_RUN" ] && [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$fingerprint" ]; then
    say "environment up to date ($VENV)"; exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    py=$(pick_python)
    say "creating $VENV with $py"
    if [ -n "$DRY_RUN" ]; then say "would run: $py -m venv $VENV"; else "$py" -m venv "$VENV"; fi
fi
has_torch() { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import torch' >/dev/null 2>&1; }

EXTRA_SPECS=()
if wants_vllm; then
    # vLLM pins its torch (a CUDA build) and bounds transformers: torch, transformers, TRL and vLLM are resolved
    # together in the one pip call below, so nothing installed first gets replaced. A CPU torch from an earlier
    # CPU setup matches vLLM's pin by version but has no CUDA: it goes first.
    if has_torch && "$VENV/bin/python" -c 'import sys, torch; sys.exit(0 if torch.version.cuda is None else 1)'; then
        say "removing the CPU build of torch (vLLM needs a CUDA build)"; pip_run uninstall -y torch
    fi
    if [ -n "${POSTTRAIN_TORCH_SPEC:-}" ]; then EXTRA_SPECS=("$POSTTRAIN_TORCH_SPEC"); fi
# torch first: a plain 'pip install torch' pulls a ~5.6 GB CUDA build. Without a GPU we install the
# CPU build; POSTTRAIN_TORCH_SPEC overrides (e.g. POSTTRAIN_TORCH_SPEC='torch==2.13.0' or a CUDA pin).
elif ! has_torch; then
    if [ -n "${POSTTRAIN_TORCH_SPEC:-}" ]; then
        say "installing ${POSTTRAIN_TORCH_SPEC}"; pip_run install "${POSTTRAIN_TORCH_SPEC}"
    elif has_gpu; then
        say "GPU found: installing the default (CUDA) torch build"; pip_run install torch
    else
        say "no GPU: installing the CPU build of torch"
        pip_run install "$CPU_TORCH" ||
            pip_run install torch --index-url https://download.pytorch.org/whl/cpu
    fi
fi

say "installing posttrain[$EXTRAS] (editable)"
pip_run install -e ".[${EXTRAS}]" ${EXTRA_SPECS[@]+"${EXTRA_SPECS[@]}"}
if [ -n "$DRY_RUN" ]; then exit 0; fi
echo "$fingerprint" > "$STAMP"
say "done: $VENV/bin/posttrain"
