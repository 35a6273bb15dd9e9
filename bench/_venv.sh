# Sourced by bench/run and bench/pipeline: makes sure .bench-venv at the repo root exists and has
# the project installed with its `bench` extra (the competitor libraries, Celery, redis, py-spy),
# so none of them ever enters the project's own .venv. Sets $root and $venv.

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.bench-venv"
stamp="$venv/.installed"
me="$(basename "$0")"

if [[ ! -x "$venv/bin/python" ]]; then
    python="${PYTHON:-}"
    if [[ -z "$python" ]]; then
        for candidate in python3.11 python3; do
            if command -v "$candidate" >/dev/null 2>&1; then
                python="$candidate"
                break
            fi
        done
    fi
    [[ -n "$python" ]] || { echo "bench/$me: no python3 found (set PYTHON)" >&2; exit 1; }
    echo "bench/$me: creating $venv with $python" >&2
    "$python" -m venv "$venv"
    rm -f "$stamp"
fi

# (Re)install the project with its bench extra when the venv is new or pyproject.toml changed.
wanted="$(cat "$root/pyproject.toml" "$root/simulator/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]]; then
    echo "bench/$me: installing sfworker[bench] into $venv" >&2
    log="$(mktemp)"
    if ! "$venv/bin/python" -m pip install --disable-pip-version-check -e "$root[bench]" -e "$root/simulator" \
        >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "bench/$me: pip install failed" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$wanted" >"$stamp"
fi
