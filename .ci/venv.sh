# The project's Python environment: one venv per version of requirements.txt, built once, reused.
#
#   source .ci/venv.sh   ensures the venv, sets UNLEARNING_VENV (its folder) and UNLEARNING_PYTHON
#                        (its python), and prints the folder; the caller's shell options are untouched
#   bash .ci/venv.sh     the same, printing only the folder on stdout (pip's output goes to stderr):
#                        PY="$(bash .ci/venv.sh)/bin/python"
#
# Where: ${UNLEARNING_VENV_CACHE:-$HOME/.cache/unlearning-lab}/venv-<first 16 hex of sha256(requirements.txt)>
# Which Python builds it: ${UNLEARNING_BASE_PYTHON:-python3}.
#
# A venv cannot be moved after it is built (its scripts hard-code their path), so it is built in
# place and a marker file `.complete` is written inside it only after `pip install` succeeded. A
# folder without the marker (an interrupted build) or whose python no longer runs is deleted and
# rebuilt. A lock file beside it makes a second caller wait instead of building the same venv twice.
# Each venv takes ~6 GB (torch), so complete venvs of *other* requirements beyond the two most
# recently used are deleted.

_unlearning_venv_log() { echo "[venv] $*" >&2; }

_unlearning_venv_ensure() {
    local root requirements hash cache venv lock_fd base_python
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
    requirements="$root/requirements.txt"
    [[ -f "$requirements" ]] || { _unlearning_venv_log "no requirements.txt at $requirements"; return 1; }
    hash="$(sha256sum "$requirements" | cut -c1-16)" || return 1
    cache="${UNLEARNING_VENV_CACHE:-$HOME/.cache/unlearning-lab}"
    venv="$cache/venv-$hash"
    base_python="${UNLEARNING_BASE_PYTHON:-python3}"
    mkdir -p "$cache" || return 1

    exec {lock_fd}>"$venv.lock" || return 1
    if ! flock -w 3600 "$lock_fd"; then
        _unlearning_venv_log "another build of $venv held the lock for an hour; giving up"
        exec {lock_fd}>&-
        return 1
    fi

    if [[ -f "$venv/.complete" ]] && "$venv/bin/python" -c "" 2>/dev/null; then
        _unlearning_venv_log "reusing $venv"
    else
        if [[ -e "$venv" ]]; then
            _unlearning_venv_log "deleting the unfinished or broken venv $venv"
            rm -rf "$venv"
        fi
        _unlearning_venv_log "building $venv with $("$base_python" --version 2>&1) (pip install -r requirements.txt; ~10 min the first time)"
        local started=$SECONDS
        if ! { "$base_python" -m venv "$venv" >&2 &&
            PIP_NO_INPUT=1 "$venv/bin/python" -m pip install --progress-bar off -r "$requirements" >&2; }; then
            _unlearning_venv_log "building $venv failed; the unfinished venv is left for inspection and is rebuilt next time"
            exec {lock_fd}>&-
            return 1
        fi
        printf 'requirements sha256 %s\nbuilt %s in %ss\n' "$hash" "$(date -u +%FT%TZ)" "$((SECONDS - started))" >"$venv/.complete"
        _unlearning_venv_log "built $venv in $((SECONDS - started))s"
    fi
    touch "$venv/.complete"  # its mtime says when this venv was last used
    exec {lock_fd}>&-

    # Keep the two most recently used complete venvs of other requirements; delete older ones.
    local old
    while IFS= read -r old; do
        _unlearning_venv_log "deleting the old venv ${old%/.complete}"
        rm -rf "${old%/.complete}" "${old%/.complete}.lock"
    done < <(find "$cache" -mindepth 2 -maxdepth 2 -regextype posix-extended ! -path "$venv/.complete" \
        -regex '.*/venv-[0-9a-f]{16}/\.complete' -printf '%T@ %p\n' 2>/dev/null | sort -rn | tail -n +3 | cut -d' ' -f2-)

    UNLEARNING_VENV="$venv"
    UNLEARNING_PYTHON="$venv/bin/python"
    export UNLEARNING_VENV UNLEARNING_PYTHON
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    _unlearning_venv_ensure
    echo "$UNLEARNING_VENV"
else
    _unlearning_venv_ensure || return 1
    echo "$UNLEARNING_VENV"
fi
